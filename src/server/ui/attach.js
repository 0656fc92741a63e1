// Where an image can come from: the file picker, a file dropped anywhere on the page, or a
// paste. Each hands the first file to `onFile`; what is acceptable is the caller's decision.

export function watchForImages(fileInput, onFile) {
  fileInput.addEventListener("change", () => {
    if (fileInput.files.length > 0) onFile(fileInput.files[0]);
    fileInput.value = "";  // picking the same file again must fire `change` again
  });
  document.addEventListener("dragover", (event) => {
    if (event.dataTransfer && event.dataTransfer.types.includes("Files")) {
      event.preventDefault();  // without it the browser would open the dropped file itself
      document.body.classList.add("dropping");
    }
  });
  document.addEventListener("dragleave", () => document.body.classList.remove("dropping"));
  document.addEventListener("drop", (event) => {
    document.body.classList.remove("dropping");
    if (!event.dataTransfer || event.dataTransfer.files.length === 0) return;
    event.preventDefault();
    onFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? event.clipboardData.files : [];
    if (files.length === 0) return;  // pasted text goes where it was pasted
    event.preventDefault();
    onFile(files[0]);
  });
}

export function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read "${file.name}": ${reader.error}`));
    reader.readAsDataURL(file);
  });
}
