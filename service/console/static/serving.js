// Live serving figures from the service's own /metrics: requests/s, p50/p99 latency by version
// (from the histogram's buckets), swaps, and what each worker process serves.

import { lineChart } from "./charts.js";
import { bucketDelta, bucketsBy, increase, parse, quantile, sumBy } from "./prom.js";
import { h, seconds } from "./dom.js";

const WINDOW_S = 60;
const KEEP_S = 130;

/** One scrape, reduced to what the view shows. */
export function reduce(text, t) {
  const samples = parse(text);
  const workers = samples
    .filter((x) => x.name === "janus_serving_version" && x.value === 1)
    .map((x) => ({ pid: x.labels.pid, version: x.labels.version, engine: x.labels.engine }));
  return {
    t,
    requests: sumBy(samples, "janus_classify_requests_total", "version"),
    errors: sumBy(samples, "janus_classify_requests_total", "version", (l) => l.status !== "200"),
    images: sumBy(samples, "janus_classified_images_total", "version"),
    latency: bucketsBy(samples, "janus_classify_latency_seconds", "version"),
    swaps: sumBy(samples, "janus_swaps_total", "version"),
    swapFailures: sumBy(samples, "janus_swap_failures_total"),
    workers,
  };
}

const total = (map) => [...map.values()].reduce((a, b) => a + b, 0);

export class ServingFigures {
  constructor() {
    this.scrapes = [];
  }

  add(scrape) {
    this.scrapes.push(scrape);
    while (this.scrapes.length > 2 && scrape.t - this.scrapes[0].t > KEEP_S) this.scrapes.shift();
  }

  get latest() {
    return this.scrapes[this.scrapes.length - 1];
  }

  /** The oldest scrape within the window before the latest one. */
  get windowStart() {
    const now = this.latest.t;
    return this.scrapes.find((x) => now - x.t <= WINDOW_S && x !== this.latest);
  }

  /** Per version: rate, p50 and p99 over the window, and totals since the workers started. */
  byVersion() {
    const now = this.latest;
    const before = this.windowStart;
    const dt = before ? now.t - before.t : 0;
    const versions = [...new Set([...now.requests.keys(), ...now.workers.map((w) => w.version)])].sort();
    return versions.map((version) => {
      const buckets = now.latency.get(version);
      const recent = before ? bucketDelta(buckets || [], before.latency.get(version)) : null;
      const count = now.requests.get(version) || 0;
      const inWindow = before ? increase(count, before.requests.get(version) || 0) : 0;
      return {
        version,
        rate: dt > 0 ? inWindow / dt : null,
        p50: recent ? quantile(0.5, recent) : null,
        p99: recent ? quantile(0.99, recent) : null,
        p50All: quantile(0.5, buckets),
        p99All: quantile(0.99, buckets),
        requests: count,
        errors: now.errors.get(version) || 0,
        images: now.images.get(version) || 0,
      };
    });
  }

  /** Requests/s between consecutive scrapes, per version: [{name, points}]. */
  rateSeries() {
    const names = [...new Set(this.scrapes.flatMap((x) => [...x.requests.keys()]))].sort();
    return names.map((name) => ({
      name,
      points: this.scrapes.slice(1).map((x, i) => {
        const prev = this.scrapes[i];
        return [x.t, increase(x.requests.get(name) || 0, prev.requests.get(name) || 0) / (x.t - prev.t)];
      }),
    }));
  }
}

function card(label, value, id) {
  return h("div", { class: "card" }, h("div", { class: "value", id }, value), h("div", { class: "label" }, label));
}

export function renderServing(figures, servingVersion) {
  const now = figures.latest;
  if (!now) return h("p", { class: "muted" }, "Reading /metrics…");
  const rows = figures.byVersion();
  const rate = rows.every((r) => r.rate === null) ? null : rows.reduce((a, r) => a + (r.rate || 0), 0);
  const serving = rows.find((r) => r.version === servingVersion);
  const before = figures.windowStart;
  const swapsRecent = before ? increase(total(now.swaps), total(before.swaps)) : 0;
  const series = figures.rateSeries().slice(0, 4);
  return [
    h("div", { class: "cards" },
      card("classify requests/s (last minute)", rate === null ? "…" : rate.toFixed(2), "figure-rate"),
      card(`p50 latency of ${servingVersion ?? "the serving version"} (last minute)`, seconds(serving?.p50 ?? null), "figure-p50"),
      card(`p99 latency of ${servingVersion ?? "the serving version"} (last minute)`, seconds(serving?.p99 ?? null), "figure-p99"),
      card("hot swaps (every worker counts its own)", `${total(now.swaps)}${swapsRecent ? ` (+${swapsRecent} last minute)` : ""}`, "figure-swaps"),
      card("failed swaps", String(total(now.swapFailures)), "figure-swap-failures"),
      card("worker processes serving", String(now.workers.length), "figure-workers"),
    ),
    h("h3", {}, "Requests/s by version (last 2 minutes)"),
    series.length
      ? [lineChart(series, { title: "classify requests per second by version", unit: "/s", end: now.t, span: 120 }),
         h("div", { class: "legend" }, series.map((x, i) => h("span", {}, h("span", { class: `swatch series-${i}` }), x.name)))]
      : h("p", { class: "muted" }, "No classify requests yet."),
    h("h3", {}, "Latency by version"),
    h("div", { class: "table-wrap" }, h("table", { id: "latency-table" },
      h("thead", {}, h("tr", {}, ["version", "requests/s", "p50", "p99", "p50 since start", "p99 since start", "requests", "errors", "images"]
        .map((t, i) => h("th", { scope: "col", class: i ? "num" : null }, t)))),
      h("tbody", {}, rows.map((r) => h("tr", { dataset: { version: r.version } },
        h("td", { class: "mono" }, r.version, r.version === servingVersion ? " (serving)" : ""),
        h("td", { class: "num", dataset: { field: "rate" } }, r.rate === null ? "…" : r.rate.toFixed(2)),
        ["p50", "p99", "p50All", "p99All"].map((field) =>
          h("td", { class: "num", dataset: { field, value: r[field] ?? "" } }, seconds(r[field]))),
        h("td", { class: "num", dataset: { field: "requests" } }, String(r.requests)),
        h("td", { class: "num" }, String(r.errors)),
        h("td", { class: "num" }, String(r.images)),
      ))))),
    h("p", { class: "muted small" }, "Quantiles interpolate within the histogram's buckets (as PromQL's histogram_quantile); – means no request in the window."),
    h("h3", {}, "Worker processes"),
    h("div", { class: "table-wrap" }, h("table", { id: "workers-table" },
      h("thead", {}, h("tr", {}, ["pid", "version", "engine"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, now.workers.map((w) => h("tr", {},
        h("td", { class: "mono" }, w.pid), h("td", { class: "mono" }, w.version), h("td", {}, w.engine))))),
    ),
  ];
}
