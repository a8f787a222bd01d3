// A workload's page: its fields (the environment folded, after them), its events as a
// timeline (reloaded on each of its events from the stream), its log followed live
// (GET …/logs?follow=true&tail=N read as a stream, until the workload ends) and a kill
// button behind a confirmation. The fields and the timeline sit side by side and keep
// to a bounded height, so the log's head shows in a 1280×800 window.
//
// A follow lost (the server restarted, the network went) is asked for again by
// itself, after 1 s, doubling to 15 s, until the workload has ended. The log API has
// no byte offset to resume from, so the tail asked for again replaces what is shown
// (with its first piece: nothing flickers empty meanwhile): nothing is shown twice.

import { ApiError, call, FINAL, getJSON, readText, RETRY_FIRST_MS, RETRY_MAX_MS, sleep } from "./api.js";
import {
  ACTIVE,
  clock,
  commandText,
  debounce,
  fill,
  h,
  labelChips,
  plural,
  ranFor,
  refreshTimes,
  shortId,
  statusBadge,
  timeAgo,
  workloadName,
} from "./dom.js";

const TAIL_LINES = 2000;
const DIALOG_COMMAND_CHARS = 1000;
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
  return h(
    "dl",
    { class: "fields" },
    field("ID", h("code", { class: "select" }, w.id), true),
    field("Command", h("code", { class: "command", tabindex: "0" }, commandText(w.command)), true),
    field("Reason", w.reason, true),
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
    field("Array task", w.array_index === null || w.array_index === undefined ? null : String(w.array_index)),
    field("Working dir", w.cwd ? h("code", {}, w.cwd) : null),
    field("Depends on", w.depends_on.length ? h("span", {}, w.depends_on.map((d) => h("a", { href: `#/w/${d}`, class: "dep" }, shortId(d))), ` (${w.dependency_type})`) : null),
    field("Batch", w.batch_id ? h("code", {}, w.batch_id) : null),
  );
}

/** The submitted environment, folded: often 40 variables and more. */
function environment(w) {
  const env = Object.entries(w.env || {});
  if (!env.length) return null;
  return h(
    "details",
    { class: "env" },
    h("summary", {}, `environment: ${plural(env.length, "variable")}`),
    h("ul", {}, env.map(([k, v]) => h("li", {}, h("code", {}, `${k}=${v}`)))),
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
        h("h2", { id: "kill-title" }, `Kill ${workloadName(w)}?`),
        h(
          "p",
          {},
          w.status === "running"
            ? "Its process is stopped now (SIGTERM, then SIGKILL after the server's grace period). This cannot be undone."
            : "It will never start. This cannot be undone.",
        ),
        h("p", {}, h("code", {}, commandText(w.command, DIALOG_COMMAND_CHARS))),
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
  const signal = controller.signal;
  let current = null;
  let envFold; // made once: the environment does not change, and it stays open if opened
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
      h("section", { class: "card events-card", "aria-labelledby": "events-h" }, h("h2", { id: "events-h" }, "Timeline"), events),
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
    title.textContent = workloadName(w);
    document.title = `${workloadName(w)} · corral`;
    fill(badge, statusBadge(w.status, w.stopping));
    killButton.hidden = !ACTIVE.has(w.status);
    killButton.disabled = false;
    if (envFold === undefined) envFold = environment(w);
    fill(details, fields(w), envFold);
    fill(events, timeline(evs));
  }

  async function load() {
    let w, evs;
    try {
      [w, evs] = await Promise.all([
        getJSON(`v1/workloads/${encodeURIComponent(id)}`, {}, { signal }),
        getJSON(`v1/workloads/${encodeURIComponent(id)}/events`, {}, { signal }),
      ]);
    } catch (err) {
      if (signal.aborted) return;
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
  let replacing = false; // the next piece replaces what is shown (a follow again)
  function append(text) {
    const atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 40;
    if (replacing) {
      replacing = false;
      log.replaceChildren();
      logChars = 0;
    }
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

  function setLogState(text, state, why) {
    logState.textContent = text;
    logState.className = state ? `log-state ${state}` : "log-state";
    logState.title = why || "";
  }

  /** Whether the workload has ended, asked now (a follow also ends when its server
   * stops); false when that cannot be told. */
  async function hasEnded() {
    try {
      const w = await getJSON(`v1/workloads/${encodeURIComponent(id)}`, {}, { signal });
      return !ACTIVE.has(w.status);
    } catch {
      return false;
    }
  }

  /** again: what is shown is replaced by what comes (a "follow again"). */
  async function followLog(again = false) {
    let delay = RETRY_FIRST_MS;
    let shown = again; // a follow got an answer: the next one replaces what it showed
    while (!signal.aborted) {
      setLogState("following…", "live");
      let why = "";
      let opened = null; // when the follow was answered
      try {
        const response = await call(`v1/workloads/${encodeURIComponent(id)}/logs`, {
          params: { follow: "true", tail: TAIL_LINES },
          signal,
        });
        opened = performance.now();
        replacing = shown;
        shown = true;
        await readText(response, append);
        replacing = false;
        if (await hasEnded()) {
          if (!log.textContent) log.append(h("span", { class: "muted" }, "(no output)"));
          setLogState("ended");
          return;
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiError && FINAL.includes(err.status)) {
          setLogState("");
          const again = h("button", { type: "button", class: "link", onclick: () => followLog(true) }, "follow again");
          logState.append(h("span", { class: "error" }, `log: ${err.message} · `), again);
          return;
        }
        why = err instanceof ApiError ? err.message : "the connection was lost";
      }
      setLogState("reconnecting…", "reconnecting", why);
      // A follow that lasted starts the waits again; one cut at once waits longer each time.
      if (opened !== null && performance.now() - opened > RETRY_MAX_MS) delay = RETRY_FIRST_MS;
      await sleep(delay, signal);
      delay = Math.min(delay * 2, RETRY_MAX_MS);
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
