// Hand-drawn inline SVG charts (no library, no canvas): bars (stacked or grouped) and lines
// over a range of days. Every mark carries data-day / data-series / data-value, and a <title>
// tooltip, so the figures can be read by people, screen readers and tests alike. Colours come
// from CSS classes (.series-<key>), so the stylesheet themes them.

import { h, s } from "./dom.js";

const W = 640;
const H = 220;
const M = { top: 14, right: 14, bottom: 30, left: 52 };
const PLOT_W = W - M.left - M.right;
const PLOT_H = H - M.top - M.bottom;

// A round top of the y axis and its tick step: about 4 steps of 1, 2, 2.5 or 5 × 10^n
// (whole numbers only for counts).
function scale(max, integer) {
  if (!(max > 0)) return { top: 1, step: integer ? 1 : 0.25 };
  const rough = max / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  let step = [1, 2, 2.5, 5, 10].map((f) => f * power).find((v) => v >= rough);
  if (integer) step = Math.max(1, Math.round(step));
  return { top: step * Math.ceil(max / step), step };
}

function ticks({ top, step }) {
  const out = [];
  for (let value = 0; value <= top + step / 1000; value += step) out.push(value);
  return out;
}

function shortDay(day) {
  return day.slice(5); // MM-DD
}

function frame(id, title, days, range, yFormat) {
  const { top } = range;
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart-svg",
    role: "img",
    "aria-label": title,
    preserveAspectRatio: "xMidYMid meet",
  });
  const y = (value) => M.top + PLOT_H - (value / top) * PLOT_H;
  for (const tick of ticks(range)) {
    svg.append(
      s("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(tick), y2: y(tick) }),
      s("text", { class: "axis", x: M.left - 6, y: y(tick) + 4, "text-anchor": "end" },
        yFormat(tick)),
    );
  }
  const slot = PLOT_W / Math.max(days.length, 1);
  const every = Math.max(1, Math.ceil(days.length / 8));
  days.forEach((day, i) => {
    if (i % every !== 0) return;
    svg.append(s("text", {
      class: "axis",
      x: M.left + slot * (i + 0.5),
      y: H - 10,
      "text-anchor": "middle",
    }, shortDay(day)));
  });
  svg.append(s("line", {
    class: "baseline", x1: M.left, x2: W - M.right, y1: y(0), y2: y(0),
  }));
  return { svg, y, slot };
}

function legend(series) {
  return h("ul", { class: "legend" }, series.map((one) =>
    h("li", {}, h("span", { class: `swatch series-${one.key}` }), one.label)));
}

function figure(id, title, svg, series, extra) {
  return h("figure", { class: "chart", dataset: { chart: id, ...(extra || {}) } },
    h("figcaption", {}, title), svg, legend(series));
}

/**
 * Bars per day. series: [{key, label, values: number[]}]; stacked (default) or side by side.
 */
export function barChart({
  id, title, days, series, stacked = true, yFormat = String, integer = true,
}) {
  const totals = days.map((_, i) => series.reduce((sum, one) => sum + (one.values[i] || 0), 0));
  const max = stacked
    ? Math.max(0, ...totals)
    : Math.max(0, ...series.flatMap((one) => one.values.map((v) => v || 0)));
  const { svg, y, slot } = frame(id, title, days, scale(max, integer), yFormat);
  const gap = Math.min(6, slot * 0.2);
  const width = stacked ? slot - gap : (slot - gap) / series.length;
  days.forEach((day, i) => {
    let base = 0;
    series.forEach((one, k) => {
      const value = one.values[i] || 0;
      const x = M.left + slot * i + gap / 2 + (stacked ? 0 : width * k);
      const lower = stacked ? base : 0;
      const rect = s("rect", {
        class: `bar series-${one.key}`,
        x: x.toFixed(2),
        width: Math.max(width, 0.5).toFixed(2),
        y: y(lower + value).toFixed(2),
        height: Math.max(y(lower) - y(lower + value), 0).toFixed(2),
        dataset: { day, series: one.key, value },
      }, s("title", {}, `${day}: ${one.label} ${yFormat(value)}`));
      svg.append(rect);
      if (stacked) base += value;
    });
  });
  const sum = totals.reduce((a, b) => a + b, 0);
  return figure(id, title, svg, series, { total: sum, max });
}

/** Lines per day; a null value leaves a gap (no data that day). */
export function lineChart({ id, title, days, series, yFormat = String, integer = false }) {
  const max = Math.max(0, ...series.flatMap((one) => one.values.filter((v) => v !== null)));
  const { svg, y, slot } = frame(id, title, days, scale(max, integer), yFormat);
  for (const one of series) {
    let path = "";
    let pen = false;
    days.forEach((day, i) => {
      const value = one.values[i];
      if (value === null || value === undefined) {
        pen = false;
        return;
      }
      const x = M.left + slot * (i + 0.5);
      path += `${pen ? "L" : "M"}${x.toFixed(2)},${y(value).toFixed(2)} `;
      pen = true;
      svg.append(s("circle", {
        class: `point series-${one.key}`,
        cx: x.toFixed(2),
        cy: y(value).toFixed(2),
        r: 3.2,
        dataset: { day, series: one.key, value },
      }, s("title", {}, `${day}: ${one.label} ${yFormat(value)}`)));
    });
    if (path) svg.prepend(s("path", { class: `line series-${one.key}`, d: path.trim() }));
  }
  // the lines were prepended: move the grid and axes back under them
  for (const grid of [...svg.querySelectorAll(".grid, .axis, .baseline")].reverse()) {
    svg.prepend(grid);
  }
  return figure(id, title, svg, series, { max });
}

/** A chart's replacement when there is nothing to draw. */
export function emptyChart(id, title, message) {
  return h("figure", { class: "chart empty", dataset: { chart: id } },
    h("figcaption", {}, title), h("p", { class: "muted" }, message));
}
