// The workload list, with the CLI's filters (status, label k=v, name; everyone's for
// admins), kept in the address (#/?status=running&label=team=ml&name=x) and updated
// live: each event of the stream reloads it (at most twice a second, and less often
// when a load takes long: a list of huge commands is megabytes, since the API sends
// whole workloads). A command shows its first COMMAND_CHARS only; an id shows as its
// shortest prefix unique among the rows (10 characters or more, its middle elided
// when long: idLabels), and an array task's index follows ("train[3]"); neither a
// name nor an id wraps.

import { getJSON } from "./api.js";
import {
  arrayIndex,
  commandText,
  debounce,
  fill,
  h,
  idLabels,
  labelChips,
  plural,
  ranFor,
  refreshTimes,
  STATUSES,
  statusBadge,
  timeAgo,
} from "./dom.js";

const PAGE = 50;
const COMMAND_CHARS = 200;
const RELOAD_MS = 500;
const RELOAD_MAX_MS = 30000;

/** The filters of a hash query ("status=running&label=a=b"). */
export function filtersOf(query) {
  const params = new URLSearchParams(query);
  return {
    status: params.getAll("status").filter((st) => STATUSES.includes(st)),
    label: params.getAll("label"),
    name: params.get("name") || "",
    all: params.get("all") === "1",
  };
}

function queryOf(filters) {
  const params = new URLSearchParams();
  for (const st of filters.status) params.append("status", st);
  for (const l of filters.label) params.append("label", l);
  if (filters.name) params.set("name", filters.name);
  if (filters.all) params.set("all", "1");
  return params.toString();
}

const labelsOf = (text) =>
  text
    .split(/[,\s]+/)
    .map((l) => l.trim())
    .filter(Boolean);

export function listView(root, ctx, query) {
  const filters = filtersOf(query);
  let shown = PAGE;
  let seen = null; // ids of the last render: new rows are marked
  let stopped = false;

  const statusButtons = STATUSES.map((st) =>
    h(
      "button",
      {
        type: "button",
        class: `toggle st-${st}`,
        "aria-pressed": filters.status.includes(st) ? "true" : "false",
        onclick: () => {
          filters.status = filters.status.includes(st)
            ? filters.status.filter((x) => x !== st)
            : [...filters.status, st];
          changed();
        },
      },
      h("span", { class: "dot", "aria-hidden": "true" }),
      st,
    ),
  );
  const labelInput = h("input", {
    id: "filter-label",
    type: "search",
    placeholder: "team=ml, env=prod",
    value: filters.label.join(", "),
    autocomplete: "off",
    spellcheck: "false",
  });
  const nameInput = h("input", {
    id: "filter-name",
    type: "search",
    placeholder: "exact name",
    value: filters.name,
    autocomplete: "off",
    spellcheck: "false",
  });
  const typed = debounce(async () => {
    filters.label = labelsOf(labelInput.value);
    filters.name = nameInput.value.trim();
    changed();
  }, 400);
  labelInput.addEventListener("input", typed);
  nameInput.addEventListener("input", typed);
  const allBox = ctx.admin
    ? h("input", {
        id: "filter-all",
        type: "checkbox",
        checked: filters.all,
        onchange: (e) => {
          filters.all = e.target.checked;
          changed();
        },
      })
    : null;
  const clearButton = h("button", { type: "button", class: "link", onclick: () => clearFilters() }, "Clear filters");
  const filterError = h("p", { class: "error", role: "alert", hidden: true });
  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const body = h("div", { class: "list-body" }, h("p", { class: "muted loading" }, "Loading…"));

  fill(
    root,
    h("div", { class: "view-head" }, h("h1", {}, "Workloads"), summary),
    h(
      "form",
      { class: "filters", role: "search", "aria-label": "Filter workloads", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "toggles", role: "group", "aria-labelledby": "toggles-label" }, h("span", { class: "toggles-label", id: "toggles-label" }, "Status"), statusButtons),
      h("label", { class: "field" }, h("span", {}, "Labels"), labelInput),
      h("label", { class: "field" }, h("span", {}, "Name"), nameInput),
      allBox ? h("label", { class: "check" }, allBox, h("span", {}, "Everyone's")) : null,
      clearButton,
    ),
    filterError,
    body,
  );

  function anyFilter() {
    return filters.status.length || filters.label.length || filters.name || filters.all;
  }

  function clearFilters() {
    filters.status = [];
    filters.label = [];
    filters.name = "";
    filters.all = false;
    labelInput.value = "";
    nameInput.value = "";
    if (allBox) allBox.checked = false;
    for (const b of statusButtons) b.setAttribute("aria-pressed", "false");
    changed();
  }

  function changed() {
    statusButtons.forEach((b, i) => b.setAttribute("aria-pressed", filters.status.includes(STATUSES[i]) ? "true" : "false"));
    clearButton.hidden = !anyFilter();
    shown = PAGE;
    seen = null;
    const hash = `#/${anyFilter() ? "?" + queryOf(filters) : ""}`;
    if (location.hash !== hash) history.replaceState(null, "", hash);
    load();
  }

  let lastLoadMs = 0; // how long the last load took, fetch to render

  async function load() {
    const began = performance.now();
    let page;
    try {
      page = await getJSON("v1/workloads", {
        status: filters.status,
        label: filters.label,
        name: filters.name,
        all_users: filters.all ? "true" : "",
        limit: shown,
        count: "true",
      });
    } catch (err) {
      if (stopped) return;
      if (err.status === 422 || err.status === 403) {
        filterError.textContent = `Filter not valid: ${err.message}`;
        filterError.hidden = false;
        fill(body);
        summary.textContent = "";
      } else {
        ctx.notice(`Could not load workloads: ${err.message}`);
      }
      return;
    }
    if (stopped) return;
    filterError.hidden = true;
    render(page);
    lastLoadMs = performance.now() - began;
  }

  function render(page) {
    const items = page.items;
    summary.textContent =
      page.total === undefined || page.total === null
        ? ""
        : items.length < page.total
          ? `${items.length} of ${page.total.toLocaleString()} shown`
          : plural(page.total, "workload");
    if (!items.length) {
      fill(
        body,
        anyFilter()
          ? h("div", { class: "empty" }, h("p", { class: "empty-title" }, "No workload matches these filters."), h("button", { type: "button", class: "button", onclick: clearFilters }, "Clear filters"))
          : h(
              "div",
              { class: "empty" },
              h("p", { class: "empty-title" }, "No workloads yet."),
              h("p", {}, "Submit one and it appears here at once:"),
              h("pre", { class: "hint" }, "corral submit -- echo hello"),
            ),
      );
      seen = new Set();
      return;
    }
    const owner = filters.all;
    const labels = idLabels(items.map((w) => w.id));
    const rows = items.map((w) => {
      const idLabel = labels.get(w.id);
      const command = commandText(w.command, COMMAND_CHARS);
      const isNew = seen !== null && !seen.has(w.id);
      const open = () => ctx.navigate(`#/w/${w.id}`);
      return h(
        "tr",
        { class: isNew ? "row fresh" : "row", "data-id": w.id, onclick: (e) => { if (!e.target.closest("a")) open(); } },
        h("td", { class: "c-status" }, statusBadge(w.status, w.stopping)),
        h(
          "td",
          { class: "c-name" },
          h(
            "a",
            { href: `#/w/${w.id}`, class: w.name ? "name" : "name unnamed", title: w.name ? null : w.id },
            h("span", { class: "base" }, w.name || idLabel),
            arrayIndex(w) ? h("span", { class: "index" }, arrayIndex(w)) : null,
          ),
          w.name ? h("div", { class: "id", title: w.id }, idLabel) : null,
        ),
        h("td", { class: "c-command" }, h("code", { title: command }, command)),
        h("td", { class: "c-labels" }, labelChips(w.labels)),
        owner ? h("td", { class: "c-owner" }, w.owner) : null,
        h("td", { class: "c-time" }, timeAgo(w.created_at)),
        h("td", { class: "c-ran num" }, ranFor(w)),
      );
    });
    const table = h(
      "table",
      { class: "workloads" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { class: "c-status" }, "Status"),
          h("th", { class: "c-name" }, "Name"),
          h("th", { class: "c-command" }, "Command"),
          h("th", { class: "c-labels" }, "Labels"),
          owner ? h("th", { class: "c-owner" }, "Owner") : null,
          h("th", { class: "c-time" }, "Submitted"),
          h("th", { class: "c-ran" }, "Ran"),
        ),
      ),
      h("tbody", {}, rows),
    );
    const more =
      page.next_cursor !== null && page.next_cursor !== undefined
        ? h("button", { type: "button", class: "button more", onclick: () => { shown = Math.min(shown + PAGE * 2, 1000); load(); } }, "Show more")
        : null;
    fill(body, h("div", { class: "table-wrap" }, table), more);
    seen = new Set(items.map((w) => w.id));
  }

  // At most twice a second, and never more than a third of the time loading.
  const reload = debounce(load, () => Math.min(Math.max(RELOAD_MS, 2 * lastLoadMs), RELOAD_MAX_MS));
  const ticker = setInterval(() => {
    refreshTimes(body);
    reload();
  }, 15000);
  clearButton.hidden = !anyFilter();
  load();

  return {
    event() {
      reload();
    },
    stop() {
      stopped = true;
      clearInterval(ticker);
      reload.cancel();
      typed.cancel();
    },
  };
}
