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

/** The command as a shell would take it back; cut to its first max characters and
 * "…" (the work done grows with max, not with the command, which may be 1 MB). */
export function commandText(argv, max = Infinity) {
  let text = "";
  for (const whole of argv) {
    const a = whole.length > max ? whole.slice(0, max + 1) : whole; // cut below anyway
    const word = /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`;
    text += text ? ` ${word}` : word;
    if (text.length > max) return `${text.slice(0, max)}…`;
  }
  return text;
}

export const ID_PREFIX = 10;

export function shortId(id) {
  return id.slice(0, ID_PREFIX);
}

/**
 * The shortest prefix of each id, at least ID_PREFIX long, that no other of ids
 * starts with (as git abbreviates): a Map from id to prefix. Sorted, an id shares
 * its longest common prefix with a neighbour, so it is one sort and one pass.
 */
export function uniquePrefixes(ids) {
  const sorted = [...new Set(ids)].sort();
  const common = (a, b) => {
    let i = 0;
    while (i < a.length && a[i] === b[i]) i += 1;
    return i;
  };
  const prefixes = new Map();
  sorted.forEach((id, i) => {
    const before = i > 0 ? common(sorted[i - 1], id) : 0;
    const after = i + 1 < sorted.length ? common(id, sorted[i + 1]) : 0;
    prefixes.set(id, id.slice(0, Math.max(ID_PREFIX, before + 1, after + 1)));
  });
  return prefixes;
}

const SHOWN_MAX = 14;
/**
 * uniquePrefixes, as shown: a prefix longer than SHOWN_MAX characters (ids made in
 * the same millisecond, as an array's tasks are, differ only at their end) keeps its
 * head and its end, where it differs from its neighbours: "01m8pnx6…q7xk1". One
 * shown like another (a coincidence of random characters) is shown whole.
 */
export function idLabels(ids) {
  const prefixes = uniquePrefixes(ids);
  const labels = new Map();
  for (const [id, prefix] of prefixes) {
    labels.set(id, prefix.length <= SHOWN_MAX ? prefix : `${prefix.slice(0, 8)}…${prefix.slice(-5)}`);
  }
  const seen = new Map();
  for (const label of labels.values()) seen.set(label, (seen.get(label) || 0) + 1);
  for (const [id, label] of labels) if (seen.get(label) > 1) labels.set(id, prefixes.get(id));
  return labels;
}

/** An array task's index, "[3]", or "". */
export function arrayIndex(w) {
  return w.array_index === null || w.array_index === undefined ? "" : `[${w.array_index}]`;
}

/** What a workload is called: its name, else its id's prefix; an array task's index
 * after it ("train[3]"). */
export function workloadName(w, prefix = shortId(w.id)) {
  return `${w.name || prefix}${arrayIndex(w)}`;
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
 * never twice at once: a call while it runs runs it again when it is done. wait may
 * be a function, asked at each call that sets the timer. */
export function debounce(fn, wait) {
  const delay = typeof wait === "function" ? wait : () => wait;
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
    if (timer === null) timer = setTimeout(run, delay());
  };
  schedule.cancel = () => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    again = false;
  };
  return schedule;
}
