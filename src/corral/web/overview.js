// The side panel: capacity and the queue (GET /v1/status, again after events and
// every 10 s) and the plot of the last hour's submits and starts, counted from the
// event stream (which starts an hour back: since_seconds=3600) into one count per
// minute, so an event costs the same however many came before it.

import { getJSON } from "./api.js";
import { debounce, fill, h, idLabels, parseTime, plural, s, serverNow, STATUSES, statusBadge, workloadName } from "./dom.js";
import { plot } from "./plot.js";

const MINUTES = 60;
const REFRESH_MS = 10000;

function meter(label, used, capacity, unit) {
  const share = capacity > 0 ? Math.min(used / capacity, 1) : 0;
  const level = share >= 0.9 ? "high" : share >= 0.6 ? "mid" : "low";
  return h(
    "div",
    { class: "meter" },
    h("div", { class: "meter-head" }, h("span", {}, label), h("span", { class: "num" }, `${unit(used)} / ${unit(capacity)}`)),
    s(
      "svg",
      { class: "meter-bar", viewBox: "0 0 100 6", preserveAspectRatio: "none", "aria-hidden": "true" },
      s("rect", { class: "meter-track", x: 0, y: 0, width: 100, height: 6, rx: 3 }),
      share > 0 ? s("rect", { class: `meter-fill ${level}`, x: 0, y: 0, width: Math.max(share * 100, 2), height: 6, rx: 3 }) : null,
    ),
  );
}

const cpus = (n) => (Number.isInteger(n) ? String(n) : n.toFixed(2));
const memory = (mb) => (mb >= 1024 ? `${(mb / 1024).toFixed(mb % 1024 ? 1 : 0)} GiB` : `${mb} MiB`);

export function overview(root, ctx) {
  const capacityBox = h("div", { class: "panel-body" }, h("p", { class: "muted" }, "Loading…"));
  const countsBox = h("div", { class: "panel-body" });
  const queueBox = h("div", { class: "panel-body" });
  const plotBox = h("div", { class: "panel-body" });
  fill(
    root,
    h("section", { class: "panel", id: "capacity", "aria-labelledby": "capacity-h" }, h("h2", { id: "capacity-h" }, "Capacity"), capacityBox),
    h("section", { class: "panel", id: "counts", "aria-labelledby": "counts-h" }, h("h2", { id: "counts-h" }, ctx.admin ? "Workloads (everyone's)" : "Your workloads"), countsBox),
    h("section", { class: "panel", id: "queue", "aria-labelledby": "queue-h" }, h("h2", { id: "queue-h" }, "Queue"), queueBox),
    h("section", { class: "panel", id: "activity", "aria-labelledby": "activity-h" }, h("h2", { id: "activity-h" }, "Last hour"), plotBox),
  );

  async function loadStatus() {
    let st;
    try {
      st = await getJSON("v1/status");
    } catch (err) {
      fill(capacityBox, h("p", { class: "error", role: "alert" }, `Status unavailable: ${err.message}`));
      return;
    }
    const nothing = st.capacity.cpus === 0 && st.capacity.memory_mb === 0 && st.capacity.gpus === 0;
    fill(
      capacityBox,
      nothing
        ? h("p", { class: "muted" }, `This server runs nothing (executor ${st.executor}).`)
        : [
            meter("CPUs", st.used.cpus, st.capacity.cpus, cpus),
            st.capacity.memory_mb ? meter("Memory", st.used.memory_mb, st.capacity.memory_mb, memory) : null,
            st.capacity.gpus ? meter("GPUs", st.used.gpus, st.capacity.gpus, String) : null,
          ],
      h(
        "p",
        { class: "fine" },
        `Executor ${st.executor}`,
        st.server ? ` · server ${st.server}` : "",
        st.leader && st.leader !== st.server ? ` · scheduled by ${st.leader}` : "",
      ),
    );
    fill(
      countsBox,
      h(
        "ul",
        { class: "counts" },
        STATUSES.map((status) =>
          h(
            "li",
            {},
            h(
              "a",
              { href: `#/?status=${status}`, title: `List the ${status} ones` },
              statusBadge(status),
              h("span", { class: "num" }, (st.counts[status] || 0).toLocaleString()),
            ),
          ),
        ),
      ),
    );
    const labels = idLabels(st.queue.map((q) => q.id));
    fill(
      queueBox,
      st.queue_length === 0
        ? h("p", { class: "empty-small" }, "Nothing waiting: every pending workload has started.")
        : [
            h("p", {}, h("strong", {}, plural(st.queue_length, "workload")), " waiting", st.queue.length < st.queue_length ? `; the next ${st.queue.length}:` : ":"),
            h(
              "ol",
              { class: "queue" },
              st.queue.map((q) =>
                h(
                  "li",
                  {},
                  h("a", { href: `#/w/${q.id}`, class: q.name ? null : "mono" }, workloadName(q, labels.get(q.id))),
                  ctx.admin ? h("span", { class: "muted" }, ` ${q.owner}`) : null,
                  q.reason ? h("div", { class: "fine" }, q.reason) : null,
                ),
              ),
            ),
          ],
    );
  }

  // The last hour's submits and starts: a count per minute (since the epoch, by the
  // server's clock), the minutes older than the plot's forgotten at each drawing.
  const submits = new Map();
  const starts = new Map();
  function drawPlot() {
    const now = Math.floor(serverNow() / 60000);
    const counts = [new Array(MINUTES).fill(0), new Array(MINUTES).fill(0)];
    [submits, starts].forEach((perMinute, k) => {
      for (const [minute, n] of perMinute) {
        const slot = MINUTES - 1 - (now - minute);
        if (slot < 0) perMinute.delete(minute);
        else if (slot < MINUTES) counts[k][slot] = n; // a later minute (skew): later
      }
    });
    fill(plotBox, plot(counts[0], counts[1]));
  }

  const statusSoon = debounce(loadStatus, 500);
  const plotSoon = debounce(drawPlot, 500);
  const timer = setInterval(() => {
    statusSoon();
    plotSoon();
  }, REFRESH_MS);
  loadStatus();
  drawPlot();

  return {
    event(ev) {
      const t = parseTime(ev.at);
      const perMinute = ev.from_status === null ? submits : ev.to_status === "running" ? starts : null;
      if (perMinute && Number.isFinite(t)) {
        const minute = Math.floor(t / 60000);
        perMinute.set(minute, (perMinute.get(minute) || 0) + 1);
        plotSoon();
      }
      statusSoon();
    },
    stop() {
      clearInterval(timer);
      statusSoon.cancel();
      plotSoon.cancel();
    },
  };
}
