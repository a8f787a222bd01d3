// The API as the page calls it. The key lives in sessionStorage (this tab only, gone
// when it closes) and goes with every call as "Authorization: Bearer": never a cookie
// (credentials: "omit"), and no answer is kept by the browser's cache (no-store), so
// nothing of one key's is seen after another signs in. Server-sent events are read
// with fetch and a stream reader, since EventSource cannot send the header.

import { setServerOffset } from "./dom.js";

const KEY = "corral.key";

export function storedKey() {
  return sessionStorage.getItem(KEY);
}
export function storeKey(key) {
  sessionStorage.setItem(KEY, key);
}
export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

/** An error answer (a problem's detail), or a server out of reach (status 0). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let unauthorized = () => {};
/** fn(error) runs when a call with the stored key is refused with 401 (revoked). */
export function whenUnauthorized(fn) {
  unauthorized = fn;
}

/** A URL of this server: path is relative ("v1/status"), params an object whose
 * values may be arrays (repeated) and whose empty values are left out. */
export function apiUrl(path, params) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params || {})) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "" && item !== false) {
        url.searchParams.append(name, String(item));
      }
    }
  }
  return url;
}

/** fetch with the key (none when there is none: a server run with --no-auth); the
 * Response when 2xx, else throws ApiError. */
export async function call(path, options = {}) {
  const { method = "GET", params, key = storedKey(), signal, headers = {}, body } = options;
  let response;
  try {
    response = await fetch(apiUrl(path, params), {
      method,
      headers: key ? { Authorization: `Bearer ${key}`, ...headers } : headers,
      body,
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    if (signal && signal.aborted) throw err;
    throw new ApiError(0, "cannot reach the corral server; is it running?");
  }
  const date = Date.parse(response.headers.get("Date") || "");
  if (Number.isFinite(date)) setServerOffset(date - Date.now());
  if (response.ok) return response;
  const error = await problemOf(response);
  if (response.status === 401 && options.key === undefined) unauthorized(error);
  throw error;
}

async function problemOf(response) {
  let detail = "";
  try {
    const text = await response.text();
    try {
      const problem = JSON.parse(text);
      detail = problem.detail || problem.title || "";
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    } catch {
      detail = text.slice(0, 300);
    }
  } catch {
    // the body could not be read: the status says enough
  }
  return new ApiError(response.status, detail || `${response.status} ${response.statusText}`);
}

export async function getJSON(path, params, options = {}) {
  return (await call(path, { ...options, params })).json();
}

/** Read a text response as it comes, calling onText(chunk) for each piece. */
export async function readText(response, onText) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const text = decoder.decode(value, { stream: true });
    if (text) onText(text);
  }
  const rest = decoder.decode();
  if (rest) onText(rest);
}

/** Wait ms, or less if signal aborts. */
export const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

/** A stream lost is asked for again after RETRY_FIRST_MS, doubling to RETRY_MAX_MS. */
export const RETRY_FIRST_MS = 1000;
export const RETRY_MAX_MS = 15000;
/** The answers that asking again cannot change. */
export const FINAL = [401, 403, 404, 422];

/**
 * Follow a text/event-stream for ever (until signal aborts): onMessage({id, event,
 * data}) for each message, data parsed as JSON; onState("live" | "reconnecting" |
 * "failed", error?) as the connection comes and goes. A lost connection (or a server
 * restart) is reconnected with Last-Event-ID, the id of the last message, so nothing
 * is lost or given twice. An answer that retrying cannot change (401, 403, 422)
 * stops it ("failed").
 */
export async function followEvents(path, params, { onMessage, onState, signal }) {
  let last = null;
  let delay = RETRY_FIRST_MS;
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (last !== null) headers["Last-Event-ID"] = last;
      const response = await call(path, { params, headers, signal });
      onState("live");
      delay = RETRY_FIRST_MS;
      let buffer = "";
      let message = { data: [] };
      await readText(response, (text) => {
        buffer += text;
        const lines = buffer.split("\n");
        buffer = lines.pop();
        for (const raw of lines) {
          const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
          if (line === "") {
            if (message.data.length) {
              if (message.id !== undefined) last = message.id;
              onMessage({
                id: message.id,
                event: message.event || "message",
                data: JSON.parse(message.data.join("\n")),
              });
            }
            message = { data: [] };
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let value = colon < 0 ? "" : line.slice(colon + 1);
            if (value.startsWith(" ")) value = value.slice(1);
            if (field === "data") message.data.push(value);
            else if (field === "id") message.id = value;
            else if (field === "event") message.event = value;
          }
        }
      });
    } catch (err) {
      if (signal.aborted) return;
      if (FINAL.includes(err.status)) {
        onState("failed", err);
        return;
      }
      onState("reconnecting", err);
    }
    if (!signal.aborted) onState("reconnecting");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, RETRY_MAX_MS);
  }
}
