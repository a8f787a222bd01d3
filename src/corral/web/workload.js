// A workload's page: its fields, its events as a timeline (reloaded on each of its
// events from the stream), its log followed live (GET …/logs?follow=true&tail=N read
// as a stream, until the workload ends) and a kill button behind a confirmation.

import { ApiError, call, getJSON, readText } from "./api.js";
import {
  ACTIVE,
  clock,
  commandText,
  debounce,
  fill,
  h,
  labelChips,
  ranFor,
  refreshTimes,
  shortId,
  statusBadge,
  timeAgo,
} from "./dom.js";

const TAIL_LINES = 2000;
const LOG_MAX_CHARS = 1 << 20;
/** The log shown is cut to its last LOG_MAX_CHARS (a browser would slow down). */

function resources(r) {
  const parts = [`${r.cpus} CPU${r.cpus === 1 ? "" : "s"}`];
  if (r.memory_mb) parts.push(`${r.memory_mb} MiB`);
  if (r.gpus) parts.push(`${r.gpus} GPU${r.gpus === 1 ? "" : "s"}`);
  return parts.join(" · ");
}

function field(name, value, wide) {
  if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return null;
  return h("div", { class: wide ? "field wide" : "field" }, h("dt", {}, name), h("dd", {}, value));
}

function fields(w) {
  const env = Object.entries(w.env || {});
  return h(
    "dl",
    { class: "fields" },
    field("ID", h("code", { class: "select" }, w.id), true),
    field("Command", h("code", { class: "command" }, commandText(w.command)), true),
    field("Owner", w.owner),
    field("Resources", resources(w.resources)),
    field("Priority", w.priority !== 0 ? String(w.priority) : null),
    field("Timeout", w.timeout_seconds ? `${w.timeout_seconds} s` : null),
    field("Labels", labelChips(w.labels)),
    field("Submitted", timeAgo(w.created_at)),
    field("Started", w.started_at ? timeAgo(w.started_at) : null),
    field("Finished", w.finished_at ? timeAgo(w.finished_at) : null),
    field(w.finished_at ? "Ran for" : "Running for", ranFor(w)),
    field("Exit code", w.exit_code === null ? null : String(w.exit_code)),
    field("Signal", w.signal),
    field("Node", w.node),
    field("Working dir", w.cwd ? h("code", {}, w.cwd) : null),
    field("Depends on", w.depends_on.length ? h("span", {}, w.depends_on.map((d) => h("a", { href: `#/w/${d}`, class: "dep" }, shortId(d))), ` (${w.dependency_type})`) : null),
    field("Batch", w.batch_id ? h("code", {}, w.batch_id) : null),
    field("Environment", env.length ? h("ul", { class: "env" }, env.map(([k, v]) => h("li", {}, h("code", {}, `${k}=${v}`)))) : null, true),
    field("Reason", w.reason, true),
  );
}

function timeline(events) {
  if (!events.length) return h("p", { class: "muted" }, "No events.");
  return h(
    "ol",
    { class: "timeline" },
    events.map((e) =>
      h(
        "li",
        { class: `tl st-${e.to_status}` },
        h("span", { class: "tl-dot", "aria-hidden": "true" }),
        h(
          "div",
          { class: "tl-body" },
          h(
            "div",
            { class: "tl-head" },
            h("strong", {}, e.from_status ? `${e.from_status} → ${e.to_status}` : `submitted (${e.to_status})`),
            h("time", { datetime: e.at, title: new Date(Date.parse(e.at.replace(/(\.\d{3})\d+/, "$1"))).toLocaleString() }, clock(e.at)),
          ),
          e.reason ? h("div", { class: "tl-reason" }, e.reason) : null,
          e.actor ? h("div", { class: "fine" }, `by ${e.actor}`) : null,
        ),
      ),
    ),
  );
}

/** The confirmation dialog; resolves true when the kill is confirmed. */
function confirmKill(w) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "kill-title" },
      h(
        "form",
        { method: "dialog" },
        h("h2", { id: "kill-title" }, `Kill ${w.name || shortId(w.id)}?`),
        h(
          "p",
          {},
          w.status === "running"
            ? "Its process is stopped now (SIGTERM, then SIGKILL after the server's grace period). This cannot be undone."
            : "It will never start. This cannot be undone.",
        ),
        h("p", {}, h("code", {}, commandText(w.command))),
        h(
          "div",
          { class: "actions" },
          h("button", { type: "submit", value: "cancel", class: "button", autofocus: true }, "Cancel"),
          h("button", { type: "submit", value: "kill", class: "button danger" }, "Kill workload"),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "kill");
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

export function workloadView(root, ctx, id) {
  const controller = new AbortController();
  let current = null;
  let logStarted = false;

  const title = h("h1", {}, shortId(id));
  const badge = h("span", { class: "head-badge" });
  const killButton = h("button", { type: "button", class: "button danger", hidden: true, onclick: () => kill() }, "Kill");
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const details = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const events = h("div", {});
  const logState = h("span", { class: "log-state" }, "");
  const log = h("pre", { class: "log", tabindex: "0", "aria-label": "Log" });
  const logBox = h("div", { class: "log-box" }, log);

  fill(
    root,
    h("p", { class: "crumb" }, h("a", { href: "#/" }, "← Workloads")),
    h("div", { class: "view-head" }, h("div", { class: "title" }, title, badge), killButton),
    error,
    h(
      "div",
      { class: "workload-grid" },
      h("section", { class: "card", "aria-labelledby": "details-h" }, h("h2", { id: "details-h" }, "Details"), details),
      h("section", { class: "card", "aria-labelledby": "events-h" }, h("h2", { id: "events-h" }, "Timeline"), events),
      h(
        "section",
        { class: "card log-card", "aria-labelledby": "log-h" },
        h("div", { class: "card-head" }, h("h2", { id: "log-h" }, "Log"), logState),
        logBox,
      ),
    ),
  );

  function showError(message) {
    error.textContent = message;
    error.hidden = !message;
  }

  function render(w, evs) {
    current = w;
    title.textContent = w.name || shortId(w.id);
    document.title = `${w.name || shortId(w.id)} · corral`;
    fill(badge, statusBadge(w.status, w.stopping));
    killButton.hidden = !ACTIVE.has(w.status);
    killButton.disabled = false;
    fill(details, fields(w));
    fill(events, timeline(evs));
  }

  async function load() {
    let w, evs;
    try {
      [w, evs] = await Promise.all([
        getJSON(`v1/workloads/${encodeURIComponent(id)}`, {}, { signal: controller.signal }),
        getJSON(`v1/workloads/${encodeURIComponent(id)}/events`, {}, { signal: controller.signal }),
      ]);
    } catch (err) {
      if (controller.signal.aborted) return;
      if (err.status === 404) {
        fill(details, h("div", { class: "empty" }, h("p", { class: "empty-title" }, "No such workload."), h("p", {}, "It does not exist, or it is not yours.")));
        fill(events);
        logState.textContent = "";
        killButton.hidden = true;
      } else {
        showError(`Could not load the workload: ${err.message}`);
      }
      return;
    }
    showError("");
    render(w, evs.items);
    if (!logStarted) {
      logStarted = true;
      followLog();
    }
  }

  let logChars = 0;
  function append(text) {
    const atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 40;
    log.append(text);
    logChars += text.length;
    if (logChars > LOG_MAX_CHARS) {
      const kept = log.textContent.slice(-LOG_MAX_CHARS / 2);
      const note = `… earlier output not shown (all of it: corral logs ${id})\n`;
      log.replaceChildren(h("span", { class: "cut" }, note), kept);
      logChars = kept.length;
    }
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
  }

  async function followLog() {
    logState.textContent = "following…";
    logState.className = "log-state live";
    try {
      const response = await call(`v1/workloads/${encodeURIComponent(id)}/logs`, {
        params: { follow: "true", tail: TAIL_LINES },
        signal: controller.signal,
      });
      await readText(response, append);
      if (!log.textContent) log.append(h("span", { class: "muted" }, "(no output)"));
      logState.textContent = "ended";
      logState.className = "log-state";
    } catch (err) {
      if (controller.signal.aborted) return;
      logState.className = "log-state";
      logState.textContent = "";
      const again = h("button", { type: "button", class: "link", onclick: () => { log.replaceChildren(); logChars = 0; followLog(); } }, "follow again");
      const message = err instanceof ApiError ? err.message : "the connection was lost";
      logState.append(h("span", { class: "error" }, `log: ${message} · `), again);
    }
  }

  async function kill() {
    if (!current || !(await confirmKill(current))) return;
    killButton.disabled = true;
    killButton.textContent = "Killing…";
    try {
      const response = await call(`v1/workloads/${encodeURIComponent(id)}`, { method: "DELETE" });
      const w = await response.json();
      const evs = await getJSON(`v1/workloads/${encodeURIComponent(id)}/events`);
      render(w, evs.items);
    } catch (err) {
      showError(err.status === 409 ? `Not killed: ${err.message}` : `Could not kill it: ${err.message}`);
      reload();
    } finally {
      killButton.textContent = "Kill";
      killButton.disabled = false;
    }
  }

  const reload = debounce(load, 250);
  const ticker = setInterval(() => {
    refreshTimes(root);
    if (current && ACTIVE.has(current.status)) reload(); // "running for"
  }, 15000);
  load();

  return {
    event(ev) {
      if (ev.workload_id === id) reload();
    },
    stop() {
      controller.abort();
      clearInterval(ticker);
      reload.cancel();
    },
  };
}
