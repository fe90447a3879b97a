// Two small SVG charts: bars around zero (one per class) and lines over time (one per series).
// Colours come from the stylesheet's classes, so both themes apply.

import { s } from "./dom.js";

const FONT = 11;

function niceMax(value) {
  if (!(value > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= value) return m * p;
  return 10 * p;
}

/** An SVG chart with its title and horizontal grid lines at `ticks`, labelled on the left. */
function frame(title, width, height, left, y, ticks, label) {
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": title,
  }, s("title", {}, title));
  for (const tick of ticks) {
    svg.append(
      s("line", { class: "axis", x1: left, x2: width - 4, y1: y(tick), y2: y(tick) }),
      s("text", { x: left - 6, y: y(tick) + 4, "text-anchor": "end" }, label(tick)),
    );
  }
  return svg;
}

/** Bars for [{label, value, note}] around a zero line; positive values go up. */
export function barChart(items, { title, unit = "", width = 640, height = 220 } = {}) {
  const left = 44;
  const bottom = 34;
  const top = 12;
  const plotH = height - top - bottom;
  const extent = niceMax(Math.max(1, ...items.map((d) => Math.abs(d.value))));
  const hasNeg = items.some((d) => d.value < 0);
  const min = hasNeg ? -extent : 0;
  const y = (v) => top + ((extent - v) / (extent - min)) * plotH;
  const slot = (width - left - 8) / Math.max(items.length, 1);
  const barW = Math.min(48, slot * 0.6);
  const svg = frame(title, width, height, left, y, hasNeg ? [min, 0, extent] : [0, extent / 2, extent], (t) => `${+t.toFixed(1)}${unit}`);
  items.forEach((d, i) => {
    const x = left + slot * i + (slot - barW) / 2;
    const y0 = y(0);
    const y1 = y(d.value);
    svg.append(
      s("rect", {
        class: d.value > 0 ? "bar-pos" : "bar-neg",
        x,
        y: Math.min(y0, y1),
        width: barW,
        height: Math.max(Math.abs(y1 - y0), d.value === 0 ? 0 : 1),
        "data-label": d.label,
        "data-value": d.value.toFixed(2),
      }, s("title", {}, `${d.label}: ${d.value.toFixed(1)}${unit}${d.note ? ` (${d.note})` : ""}`)),
      s("text", { x: x + barW / 2, y: height - bottom + FONT + 6, "text-anchor": "middle" }, d.label),
    );
    if (d.value !== 0) {
      const above = d.value > 0;
      svg.append(s("text", {
        class: "bar-value",
        x: x + barW / 2,
        y: above ? y1 - 4 : y1 + FONT + 2,
        "text-anchor": "middle",
      }, `${d.value > 0 ? "+" : ""}${d.value.toFixed(1)}`));
    }
  });
  return svg;
}

/** Lines for [{name, points: [[t, v], ...]}] over the last `span` seconds ending at `end`. */
export function lineChart(series, { title, unit = "", end, span = 120, width = 1100, height = 240 } = {}) {
  const left = 48;
  const bottom = 24;
  const top = 10;
  const plotW = width - left - 8;
  const plotH = height - top - bottom;
  const max = niceMax(Math.max(0, ...series.flatMap((d) => d.points.map((p) => p[1]))));
  const x = (t) => left + ((t - (end - span)) / span) * plotW;
  const y = (v) => top + (1 - v / max) * plotH;
  const svg = frame(title, width, height, left, y, [0, max / 2, max], (t) => `${+t.toFixed(2)}${unit}`);
  for (const [i, label] of [[0, `-${span} s`], [1, "now"]]) {
    svg.append(s("text", {
      x: i ? width - 8 : left,
      y: height - 6,
      "text-anchor": i ? "end" : "start",
    }, label));
  }
  series.forEach((d, i) => {
    const pts = d.points.filter(([t]) => t >= end - span);
    if (pts.length < 2) return;
    const path = pts.map(([t, v], j) => `${j ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    svg.append(s("path", { class: `line series-${i % 4}`, d: path.join(" ") }, s("title", {}, d.name)));
  });
  return svg;
}
