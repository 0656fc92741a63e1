// The chat page: one conversation (the model takes one image per conversation), each answer
// streamed into the page as it is generated, with its speed; Stop aborts the request, which
// closes the connection and makes the server free the sequence.
import {ApiError, apiKey, listModels, setApiKey, streamChat} from "./api.js";
import {readAsDataUrl, watchForImages} from "./attach.js";

const $ = (id) => document.getElementById(id);

const conversation = [];  // {role, text, image (a data URL or null)}, user and assistant alternating
let attached = null;      // {name, url}: the image the next question will carry
let running = null;       // the AbortController of the generation in progress
let chatNumber = 0;       // New chat counts up: a generation of an earlier chat leaves this one alone

function setState(state) {
  document.body.dataset.state = state;  // starting | locked | idle | streaming
  $("send").disabled = state !== "idle";
  $("stop").hidden = state !== "streaming";
}

function showError(message) {
  $("status").textContent = message;
  $("status").hidden = !message;
}

// ---------------------------------------------------------------- the API key

function askForKey(message) {
  setApiKey("");
  setState("locked");
  $("key-message").textContent = message;
  $("key-form").hidden = false;
  $("key-input").value = "";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("key-input").value.trim());
  $("key-form").hidden = true;
  connect();
});

async function connect() {
  try {
    const models = await listModels();
    $("model-name").textContent = models.map((m) => m.id).join(", ");
    showError("");
    setState("idle");
    $("prompt").focus();
  } catch (error) {
    if (error.status === 401) {
      askForKey(apiKey() ? `The server refused the key: ${error.message}` : "");
    } else {
      setState("idle");
      showError(`The server did not answer /v1/models: ${error.message}`);
    }
  }
}

// ---------------------------------------------------------------- the attached image

function conversationHasImage() {
  return conversation.some((turn) => turn.image);
}

function showAttachment() {
  $("attachment").hidden = !attached;
  $("attachment-preview").src = attached ? attached.url : "";
  $("attachment-name").textContent = attached ? attached.name : "";
}

async function attach(file) {
  if (!file.type.startsWith("image/")) {
    showError(`"${file.name}" is not an image (${file.type || "unknown type"}): attach a PNG, JPEG, WebP, GIF or BMP file`);
    return;
  }
  if (conversationHasImage()) {
    showError("This conversation already has an image (the model takes one per conversation): press New chat to ask about another");
    return;
  }
  try {
    attached = {name: file.name, url: await readAsDataUrl(file)};
    showError("");
  } catch (error) {
    showError(error.message);
  }
  showAttachment();
}

watchForImages($("image-input"), attach);
$("attachment-remove").addEventListener("click", () => {
  attached = null;
  showAttachment();
});

// ---------------------------------------------------------------- the conversation

// The end of the conversation stays in view while an answer grows, unless the reader scrolled
// up to read something earlier. Scrolling waits for the next frame: measuring the page after
// every streamed token would lay it out again each time (slower and slower as it grows).
let following = true;
let scrollQueued = false;
let lastScrollY = 0;

// The page scrolls itself only downwards: a scroll up is the reader's, back at the end resumes.
window.addEventListener("scroll", () => {
  const y = window.scrollY;
  if (y < lastScrollY) following = false;
  else if (window.innerHeight + y >= document.documentElement.scrollHeight - 40) following = true;
  lastScrollY = y;
}, {passive: true});

function keepEndInView() {
  if (!following || scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    if (following) window.scrollTo(0, document.documentElement.scrollHeight);
  });
}

function addBubble(role, text, image) {
  const bubble = document.createElement("article");
  bubble.className = `message ${role}`;
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    img.alt = "the image asked about";
    bubble.append(img);
  }
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const stats = document.createElement("div");
  stats.className = "stats";
  bubble.append(body, stats);
  $("messages").append(bubble);
  following = true;
  keepEndInView();
  return {bubble, body, stats};
}

function apiMessage(turn) {
  if (!turn.image) return {role: turn.role, content: turn.text};
  return {role: turn.role, content: [{type: "image_url", image_url: {url: turn.image}}, {type: "text", text: turn.text}]};
}

// The request's sampling settings, from the page's fields (empty: the server's default).
function settings() {
  const request = {};
  const temperature = $("temperature").value.trim();
  const maxTokens = $("max-tokens").value.trim();
  if (temperature !== "") request.temperature = Number(temperature);
  if (maxTokens !== "") request.max_tokens = Number(maxTokens);
  return request;
}

// Tokens and tokens/s of the answer so far. Each streamed chunk carries one generated token's
// text (tokens that decode to no text send none), so chunks count tokens until the final
// usage gives the exact number; the rate is over the tokens after the first.
function speed(tokens, firstAt, lastAt, exact) {
  const count = `${exact ? "" : "~"}${tokens} token${tokens === 1 ? "" : "s"}`;
  if (tokens < 2 || lastAt <= firstAt) return count;
  return `${count} · ${((tokens - 1) / ((lastAt - firstAt) / 1000)).toFixed(1)} tok/s`;
}

async function send(question) {
  const turn = {role: "user", text: question, image: attached ? attached.url : null};
  const restore = attached;
  conversation.push(turn);
  attached = null;
  showAttachment();
  showError("");
  const asked = addBubble("user", turn.text, turn.image);
  const answer = addBubble("assistant", "", null);
  answer.bubble.classList.add("streaming");

  const chat = chatNumber;
  running = new AbortController();
  setState("streaming");
  const started = performance.now();
  let text = "";
  let chunks = 0;
  let usage = null;
  let firstAt = 0;
  let lastAt = 0;
  let outcome = "done";
  try {
    for await (const chunk of streamChat({messages: conversation.map(apiMessage), ...settings()}, running.signal)) {
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = (choice.delta && choice.delta.content) || "";
        if (!piece) continue;
        text += piece;
        chunks += 1;
        lastAt = performance.now();
        if (chunks === 1) firstAt = lastAt;
        answer.body.append(piece);  // a new text node: the page lays out only what was added
        answer.stats.textContent = speed(chunks, firstAt, lastAt, false);
        keepEndInView();
      }
    }
  } catch (error) {
    outcome = error.name === "AbortError" ? "stopped" : error;
  }
  running = null;
  answer.bubble.classList.remove("streaming");
  if (chat !== chatNumber) {  // New chat stopped it and cleared the page
    setState("idle");
    return;
  }

  if (outcome === "done" || (outcome === "stopped" && text)) {
    conversation.push({role: "assistant", text, image: null});
    const tokens = usage ? usage.completion_tokens : chunks;
    const ttft = firstAt ? ` · first token after ${((firstAt - started) / 1000).toFixed(2)} s` : "";
    answer.stats.textContent = speed(tokens, firstAt, lastAt, Boolean(usage)) + ttft +
        (outcome === "stopped" ? " · stopped" : "");
    answer.bubble.classList.add(outcome);
    setState("idle");
    return;
  }
  // Nothing was answered: the question goes back into the composer, so it can be sent again.
  conversation.pop();
  answer.bubble.remove();
  asked.bubble.remove();
  attached = restore;
  showAttachment();
  $("prompt").value = question;
  if (outcome === "stopped") {
    setState("idle");
  } else if (outcome instanceof ApiError && outcome.status === 401) {
    askForKey(`The server refused the key: ${outcome.message}`);
  } else {
    setState("idle");
    showError(outcome.message);
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  if (document.body.dataset.state !== "idle") return;
  const question = $("prompt").value.trim();
  if (!question) {
    showError("Type a question first");
    return;
  }
  $("prompt").value = "";
  send(question);
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => {
  if (running) running.abort();
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && running) running.abort();
});

$("new-chat").addEventListener("click", () => {
  if (running) running.abort();
  chatNumber += 1;
  conversation.length = 0;
  attached = null;
  showAttachment();
  showError("");
  $("messages").replaceChildren();
  $("prompt").focus();
});

setState("starting");
connect();
