// The server's OpenAI-compatible API as the page uses it: the API key (kept for the browser
// tab's session only), errors in the server's shape, and a streamed chat completion read
// from its server-sent events as they arrive.

const KEY_STORAGE = "moxin.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;  // 0: no HTTP status (the stream broke, or the server sent an error event)
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

function headers() {
  const result = {"Content-Type": "application/json"};
  const key = apiKey();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

// The server's own words ({"error": {"message"}}) when it sent them, else the status line.
async function errorOf(response) {
  let message = `HTTP ${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    // not JSON (a proxy's page, say): the status line is all there is
  }
  return new ApiError(response.status, message);
}

// fetch, with a failure to connect (the server stopped, say) told as such.
async function call(path, init) {
  try {
    return await fetch(path, {...init, headers: headers()});
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `cannot reach the server (${error.message}): is moxin serve still running?`);
  }
}

export async function listModels() {
  const response = await call("/v1/models", {});
  if (!response.ok) throw await errorOf(response);
  return (await response.json()).data;
}

// Yields each chunk of a streamed completion (the JSON of one `data:` event) until [DONE].
// Aborting `signal` closes the connection, which makes the server cancel the generation.
export async function* streamChat(request, signal) {
  const body = JSON.stringify({...request, stream: true, stream_options: {include_usage: true}});
  const response = await call("/v1/chat/completions", {method: "POST", body, signal});
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) throw new ApiError(0, "the server closed the stream before it ended");
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(0, chunk.error.message);  // failed mid-stream
      yield chunk;
    }
  }
}
