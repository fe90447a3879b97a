// The version tree: parent → child, each node a button with what the version added, how its
// evaluation went and the gate's decision; the serving version and aliases marked.

import { badge, h, percent } from "./dom.js";

/** The gate's decision on a manifest: {kind: passed|rejected|none|unevaluated, text}. */
export function gateDecision(m) {
  const e = m.evaluation;
  if (!e) return { kind: "unevaluated", text: "no evaluation" };
  if (!e.gate) return { kind: "none", text: "no gate (activation: auto)" };
  if (e.gate.passed) return { kind: "passed", text: "gate: passed" };
  return { kind: "rejected", text: `gate: rejected — ${e.gate.reasons.join("; ") || "no reason"}` };
}

/** "new 95.0 % (hold-out 92.1 %) · old 88.0 % (serving 90.0 %)" from the evaluation (its sets)
 * and the learn job's whole hold-out, which the gate judges; else the held-out figure alone. */
export function figures(m) {
  const e = m.evaluation;
  const holdout = m.metrics.holdout_accuracy_new;
  if (!e) {
    const acc = m.metrics.accuracy ?? holdout;
    return acc === undefined ? "" : `held-out ${percent(acc)}`;
  }
  const gated = holdout === undefined ? "" : ` (hold-out ${percent(holdout)})`;
  const parts = [`new ${percent(e.new_accuracy)}${gated}`];
  if (e.old_accuracy !== null) {
    parts.push(`old ${percent(e.old_accuracy)} (serving ${percent(e.old_accuracy_serving)})`);
  } else {
    parts.push("old –");
  }
  return parts.join(" · ");
}

function node(v, selected, onSelect) {
  const decision = gateDecision(v);
  const added = v.new_classes.length ? v.new_classes : v.classes;
  const classes = ["node"];
  if (v.serving) classes.push("is-serving");
  if (v.rejected) classes.push("is-rejected");
  return h(
    "button",
    {
      type: "button",
      class: classes.join(" "),
      "aria-pressed": String(v.id === selected),
      dataset: { version: v.id },
      onclick: () => onSelect(v.id),
    },
    h(
      "span",
      { class: "node-line" },
      h("span", { class: "node-id" }, v.id),
      v.serving ? badge("serving", "serving") : null,
      v.aliases.map((a) => badge(a, "alias")),
      v.rejected ? badge("rejected", "rejected") : null,
      v.quarantined ? badge("quarantined", "quarantined") : null,
      v.parent ? h("span", { class: "node-parent muted small" }, `from ${v.parent}`) : null,
    ),
    h("span", { class: "node-classes" }, `+ ${added.join(", ")}`),
    h("span", { class: "node-figures" },
      figures(v) ? [figures(v), " · "] : null,
      h("span", { class: `node-gate ${decision.kind}` }, decision.text)),
  );
}

/** The tree as lists: a version with one child is followed by it in the same list (a chain
 * reads top to bottom); the children of a version with several start indented lists of their
 * own. A version whose parent is missing is a root. */
export function renderTree(versions, selected, onSelect) {
  if (!versions.length) return h("p", { class: "muted" }, "No versions yet: submit a learn job.");
  const ids = new Set(versions.map((v) => v.id));
  const children = new Map();
  for (const v of versions) {
    const parent = v.parent && ids.has(v.parent) ? v.parent : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(v);
  }
  const chain = (first) => {
    const items = [];
    for (let v = first; v; ) {
      const kids = children.get(v.id) || [];
      const branches = kids.length > 1
        ? h("ul", { class: "branches" }, kids.map((k) => h("li", {}, h("ul", { class: "chain" }, chain(k)))))
        : null;
      items.push(h("li", {}, node(v, selected, onSelect), branches));
      v = kids.length === 1 ? kids[0] : null;
    }
    return items;
  };
  const roots = children.get(null) || [];
  return h("div", { class: "tree", "aria-label": "Versions, each under its parent" },
    roots.map((r) => h("ul", { class: "chain" }, chain(r))));
}
