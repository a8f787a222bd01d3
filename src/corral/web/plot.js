// The plot of submits and starts per minute over the last hour: inline SVG, drawn
// here from two arrays of per-minute counts (oldest first), no library.

import { h, s } from "./dom.js";

const W = 320;
const H = 132;
const PAD = { right: 8, top: 10, bottom: 20 };
const CHAR_WIDTH = 6; // of a digit or K, M at the labels' 9 px, a little over (DejaVu Sans: 5.7)
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });
/** An axis label: 950, 5000, 20K, 2.5M. */
const label = (v) => (v < 10000 ? String(v) : compact.format(v));

/** A "nice" axis maximum at or above n: 1, 2, 5, 10, 20, 50, … */
function niceMax(n) {
  if (n <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(n));
  for (const step of [1, 2, 5, 10]) if (step * power >= n) return step * power;
  return 10 * power;
}

/**
 * An <svg> of submits (bars) and starts (a line), one slot a minute; minutes: the
 * count of slots, the last one the current minute.
 */
export function plot(submits, starts) {
  const minutes = submits.length;
  const top = niceMax(Math.max(...submits, ...starts));
  const levels = top % 2 ? [0, top] : [0, top / 2, top];
  // Room on the left for the widest label, right-aligned 4 px before the axis.
  const left = 8 + CHAR_WIDTH * Math.max(...levels.map((v) => label(v).length));
  const plotW = W - left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const slot = plotW / minutes;
  const x = (i) => left + i * slot;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;
  const totalSubmits = submits.reduce((a, b) => a + b, 0);
  const totalStarts = starts.reduce((a, b) => a + b, 0);

  const grid = levels.map((v) =>
    s(
      "g",
      { class: "grid" },
      s("line", { x1: left, x2: W - PAD.right, y1: y(v), y2: y(v) }),
      s("text", { x: left - 4, y: y(v) + 3, "text-anchor": "end" }, label(v)),
    ),
  );
  const ticks = [
    [0, `−${minutes} min`, "start"],
    [minutes / 2, `−${minutes / 2}`, "middle"],
    [minutes, "now", "end"],
  ].map(([i, label, anchor]) =>
    s("text", { class: "tick", x: x(i), y: H - 5, "text-anchor": anchor }, label),
  );
  const bars = submits.map((v, i) =>
    v
      ? s(
          "rect",
          { class: "bar", x: x(i) + 0.5, y: y(v), width: Math.max(slot - 1, 1), height: y(0) - y(v) },
          s("title", {}, `${minutes - 1 - i} min ago: ${v} submitted, ${starts[i]} started`),
        )
      : null,
  );
  const points = starts.map((v, i) => `${(x(i) + slot / 2).toFixed(1)},${y(v).toFixed(1)}`);
  const line = s("polyline", { class: "line", points: points.join(" ") });
  const dots = starts.map((v, i) =>
    v ? s("circle", { class: "point", cx: x(i) + slot / 2, cy: y(v), r: 1.8 }) : null,
  );
  const summary = `${totalSubmits} submitted and ${totalStarts} started in the last ${minutes} minutes`;
  const svg = s(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img", "aria-label": summary },
    s("title", {}, summary),
    grid,
    bars,
    line,
    dots,
    ticks,
  );
  const legend = h(
    "div",
    { class: "legend" },
    h("span", { class: "key key-submits" }, h("span", { class: "swatch", "aria-hidden": "true" }), `Submitted ${totalSubmits}`),
    h("span", { class: "key key-starts" }, h("span", { class: "swatch", "aria-hidden": "true" }), `Started ${totalStarts}`),
    h("span", { class: "muted" }, "per minute"),
  );
  return [svg, legend];
}
