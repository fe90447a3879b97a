// Prometheus text format, read: samples, rates between scrapes, quantiles from histogram buckets
// (linear within a bucket, as PromQL's histogram_quantile does).

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** [{name, labels, value}] of every sample line. */
export function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, key, raw] of (m[2] || "").matchAll(LABEL)) {
      labels[key] = raw.replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
    }
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

/** Sum of a metric's samples grouped by one label ("" groups all). */
export function sumBy(samples, name, label = "", where = () => true) {
  const out = new Map();
  for (const x of samples) {
    if (x.name !== name || !where(x.labels)) continue;
    const key = label ? x.labels[label] ?? "" : "";
    out.set(key, (out.get(key) || 0) + x.value);
  }
  return out;
}

/** Cumulative buckets by a label: Map(key → [[le, count], ...] sorted by le). */
export function bucketsBy(samples, name, label) {
  const out = new Map();
  for (const x of samples) {
    if (x.name !== `${name}_bucket`) continue;
    const key = x.labels[label] ?? "";
    const le = x.labels.le === "+Inf" ? Infinity : Number(x.labels.le);
    const list = out.get(key) || new Map();
    list.set(le, (list.get(le) || 0) + x.value);
    out.set(key, list);
  }
  return new Map([...out].map(([k, m]) => [k, [...m].sort((a, b) => a[0] - b[0])]));
}

/** Buckets of `now` minus those of `before` (counts in between; a restarted worker: `now`). */
export function bucketDelta(now, before) {
  if (!before) return now;
  const old = new Map(before);
  const delta = now.map(([le, c]) => [le, c - (old.get(le) || 0)]);
  return delta.some(([, c]) => c < 0) ? now : delta;
}

/** The q-quantile of cumulative buckets, or null without observations. */
export function quantile(q, buckets) {
  if (!buckets || !buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return prevLe; // beyond the last bound: its bound, as PromQL says
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/** Increase of a counter between two values (a restarted worker resets it: the new value). */
export function increase(now, before) {
  if (before === undefined) return 0;
  return now >= before ? now - before : now;
}
