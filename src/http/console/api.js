// Every call the console makes: an ordinary API call with the signed-in bearer token (or none, for
// AUTH_MODE=disabled). Errors carry the API's own message ({"detail": …}) so pages can show it as is.

const KEY = "console.token";

export function token() {
  return sessionStorage.getItem(KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && typeof body === "object" && body.detail ? body.detail : String(body || "");
    super(`${status}: ${detail}`);
    this.status = status;
    this.body = body;
    this.detail = detail;
  }
}

function headers(extra) {
  const h = { accept: "application/json", ...extra };
  if (token()) h.authorization = `Bearer ${token()}`;
  return h;
}

export async function call(method, path, body, extra = {}) {
  const init = { method, headers: headers(extra), credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);

// A query string from an object, leaving out empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// Follows GET /api/v1/events/stream (server-sent events). EventSource cannot send a bearer token, so the
// stream is read with fetch. Reconnects after the server ended it (shutdown, lag) until close() is called;
// onState reports "live", "reconnecting" or the error that stopped it.
export function follow(params, onEvent, onState = () => {}) {
  let stopped = false;
  let controller = null;
  async function run() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const res = await fetch(`/api/v1/events/stream${query({ snapshot: "false", ...params })}`, {
          headers: headers({ accept: "text/event-stream" }),
          credentials: "omit",
          cache: "no-store",
          signal: controller.signal,
        });
        if (!res.ok) {
          const body = await res.json().catch(() => null);
          const err = new ApiError(res.status, body);
          onState(err);
          if (res.status === 401 || res.status === 403 || res.status === 422) return;
        } else {
          onState("live");
          await read(res.body, onEvent, onState);
        }
      } catch (e) {
        if (stopped) return;
        onState("reconnecting");
      }
      if (!stopped) await new Promise((r) => setTimeout(r, 2000));
    }
  }
  run();
  return {
    close() {
      stopped = true;
      if (controller) controller.abort();
    },
  };
}

async function read(body, onEvent, onState) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      let data = "";
      for (const line of frame.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (!data) continue;
      const parsed = JSON.parse(data);
      if (kind === "error") onState(new ApiError(parsed.code, parsed));
      else onEvent(parsed);
    }
  }
}
