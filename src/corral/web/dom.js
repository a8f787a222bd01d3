// Building elements and formatting values. Every element is made here with
// createElement and text nodes: the page never parses HTML from a string, so no
// name, label or log line can become markup (the CSP's Trusted Types enforce it).

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, props, children) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") element.setAttribute("class", value);
    else if (name === "text") element.textContent = value;
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: h("a", {href: "#/", class: "x", onclick: f}, "text", child). */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

/** An SVG element, as h. */
export function s(tag, props, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

/** Replace the children of element. */
export function fill(element, ...children) {
  element.replaceChildren();
  return build(element, {}, children);
}

/** Milliseconds since the epoch of an RFC 3339 time ("…T15:18:27.123456Z"). */
export function parseTime(iso) {
  return iso ? Date.parse(iso.replace(/(\.\d{3})\d+/, "$1")) : NaN;
}

let serverOffset = 0;
/** The server's clock minus this browser's (from a Date header), in ms. */
export function setServerOffset(ms) {
  serverOffset = Math.abs(ms) > 2000 ? ms : 0;
}
/** Now, by the server's clock. */
export function serverNow() {
  return Date.now() + serverOffset;
}

export function ago(iso) {
  const seconds = Math.max(0, Math.round((serverNow() - parseTime(iso)) / 1000));
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(parseTime(iso)).toLocaleDateString();
}

/** A <time> that says "3 min ago" (kept current by refreshTimes), the full time on hover. */
export function timeAgo(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const full = new Date(parseTime(iso)).toLocaleString();
  return h("time", { datetime: iso, title: full, "data-ago": iso }, ago(iso));
}

export function refreshTimes(root) {
  for (const el of root.querySelectorAll("time[data-ago]")) {
    el.textContent = ago(el.getAttribute("data-ago"));
  }
}

export function clock(iso) {
  return iso ? new Date(parseTime(iso)).toLocaleTimeString() : "";
}

export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  const hours = Math.floor(m / 60);
  return `${hours} h ${m % 60} min`;
}

/** How long a workload ran (or has run so far). */
export function ranFor(w) {
  if (!w.started_at) return "";
  const end = w.finished_at ? parseTime(w.finished_at) : serverNow();
  return duration((end - parseTime(w.started_at)) / 1000);
}

/** The command as a shell would take it back. */
export function commandText(argv) {
  return argv
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`))
    .join(" ");
}

export function shortId(id) {
  return id.slice(0, 10);
}

export function plural(n, one, many) {
  return `${n.toLocaleString()} ${n === 1 ? one : many || one + "s"}`;
}

export const STATUSES = ["pending", "running", "completed", "failed", "killed"];
export const ACTIVE = new Set(["pending", "running"]);

export function statusBadge(status, stopping) {
  return h(
    "span",
    { class: `badge st-${status}`, title: stopping ? "stopping: its process is being stopped" : null },
    h("span", { class: "dot", "aria-hidden": "true" }),
    status,
    stopping ? h("span", { class: "stopping" }, " · stopping") : null,
  );
}

export function labelChips(labels) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return null;
  return h(
    "span",
    { class: "labels" },
    entries.map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)),
  );
}

/** A function that runs fn at most once per wait ms, after the last call (trailing),
 * never twice at once: a call while it runs runs it again when it is done. */
export function debounce(fn, wait) {
  let timer = null;
  let running = false;
  let again = false;
  const run = async () => {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await fn();
    } finally {
      running = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  };
  const schedule = () => {
    if (timer === null) timer = setTimeout(run, wait);
  };
  schedule.cancel = () => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    again = false;
  };
  return schedule;
}
