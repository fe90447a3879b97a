// One version: its evaluation and the gate, the accuracy matrix along its lineage, forgetting per
// class as a chart, method and settings, files and digests.

import { barChart } from "./charts.js";
import { badge, bytes, h, percent, points, when } from "./dom.js";
import { gateDecision } from "./tree.js";

/** Rows of the accuracy matrix: each lineage version's per-class accuracy from its own
 * evaluation, over the selected version's classes (null: not evaluated on that class). */
export function accuracyMatrix(lineage, classes) {
  return lineage.map((m) => ({
    id: m.id,
    learned: new Set(m.new_classes.length ? m.new_classes : m.classes),
    known: new Set(m.classes),
    cells: classes.map((c) => m.evaluation?.per_class?.[c]?.accuracy ?? null),
  }));
}

/** Forgetting of each class the version did not add: the best accuracy on it before (its
 * ancestors' evaluations, and the serving version's on the same images) minus its own. */
export function forgetting(m, rows, classes) {
  const out = [];
  const own = rows[rows.length - 1];
  classes.forEach((c, j) => {
    if (own.learned.has(c) || own.cells[j] === null) return;
    const before = rows.slice(0, -1).map((r) => r.cells[j]);
    before.push(m.evaluation?.per_class?.[c]?.serving_accuracy ?? null);
    const known = before.filter((v) => v !== null);
    if (!known.length) return;
    out.push({ label: c, value: Math.max(...known) - own.cells[j] });
  });
  return out;
}

function heat(cell, value) {
  // a share of the accent colour by accuracy: the text stays readable in both themes
  cell.style.backgroundColor = `hsl(var(--heat-hue) 70% 50% / ${(0.08 + 0.5 * value / 100).toFixed(2)})`;
}

function matrixTable(rows, classes) {
  const head = h("tr", {}, h("th", { scope: "col" }, "version"), classes.map((c) => h("th", { scope: "col" }, c)));
  const body = rows.map((r) =>
    h("tr", { dataset: { version: r.id } },
      h("th", { scope: "row" }, r.id),
      r.cells.map((v, j) => {
        const c = classes[j];
        if (!r.known.has(c)) return h("td", { class: "none", title: `${r.id} does not know ${c}` }, "·");
        const cell = h("td", {
          class: r.learned.has(c) ? "learned num" : "num",
          title: r.learned.has(c) ? `${r.id} learned ${c}` : null,
        }, v === null ? "–" : v.toFixed(0));
        if (v !== null) heat(cell, v);
        else cell.classList.add("none");
        return cell;
      }),
    ),
  );
  return h("div", { class: "table-wrap" },
    h("table", { class: "matrix", id: "accuracy-matrix" },
      h("caption", { class: "muted small" },
        "Accuracy per class (%) in each version's own evaluation; outlined: the version learned the class; · it does not know it; – not evaluated."),
      h("thead", {}, head), h("tbody", {}, body)));
}

function evaluationFacts(m) {
  const e = m.evaluation;
  if (!e) return h("p", { class: "muted" }, "No evaluation: this version was published without one.");
  const decision = gateDecision(m);
  const g = e.gate;
  return h("div", {},
    h("dl", { class: "facts" },
      h("dt", {}, "against"), h("dd", {}, e.against ?? "nothing served"),
      h("dt", {}, "new classes"), h("dd", {}, percent(e.new_accuracy)),
      m.metrics.holdout_accuracy_new === undefined ? null : [
        h("dt", {}, "new, whole hold-out"), h("dd", {}, `${percent(m.metrics.holdout_accuracy_new)} (what the gate judges)`),
      ],
      h("dt", {}, "old classes"), h("dd", {}, `${percent(e.old_accuracy)} (serving ${percent(e.old_accuracy_serving)})`),
      h("dt", {}, "old, among old only"), h("dd", {}, percent(e.old_accuracy_among_old)),
      h("dt", {}, "old-class drop"), h("dd", {}, e.old_accuracy !== null && e.old_accuracy_serving !== null ? points(e.old_accuracy_serving - e.old_accuracy) : "–"),
      h("dt", {}, "forgetting"), h("dd", {}, e.old_accuracy_among_old !== null && e.old_accuracy_serving !== null ? points(e.old_accuracy_serving - e.old_accuracy_among_old) : "–"),
      h("dt", {}, "gate"), h("dd", { class: `node-gate ${decision.kind}`, id: "gate-decision" }, decision.text),
      g ? [h("dt", {}, "thresholds"), h("dd", {}, `new ≥ ${g.min_new_accuracy} %, old drop ≤ ${g.max_old_drop} pt, forgetting ≤ ${g.max_forgetting ?? "–"} pt`)] : null,
      h("dt", {}, "evaluation sets"), h("dd", { class: "digest" }, e.sets.map((d) => d.slice(0, 12)).join(", ") || "none"),
    ));
}

function keyValues(object) {
  const entries = Object.entries(object || {});
  if (!entries.length) return h("p", { class: "muted" }, "none");
  return h("dl", { class: "facts" }, entries.flatMap(([k, v]) => [
    h("dt", {}, k),
    h("dd", { class: "mono" }, typeof v === "number" ? String(+v.toPrecision(6)) : JSON.stringify(v)),
  ]));
}

function filesTable(m) {
  const rows = Object.entries(m.files).map(([name, f]) =>
    h("tr", {}, h("td", { class: "mono" }, name), h("td", { class: "num" }, bytes(f.size)), h("td", { class: "digest" }, f.sha256)));
  return h("div", { class: "table-wrap" }, h("table", { id: "files" },
    h("thead", {}, h("tr", {}, h("th", {}, "file"), h("th", { class: "num" }, "size"), h("th", {}, "sha256"))),
    h("tbody", {}, rows)));
}

function shadowFacts(shadow) {
  if (!shadow || !Object.keys(shadow).length) return null;
  return [h("h3", {}, "Shadow traffic"), h("dl", { class: "facts" }, Object.entries(shadow).flatMap(([serving, c]) => [
    h("dt", {}, `against ${serving}`),
    h("dd", {}, `${c.images} images, ${c.agreement === null ? "–" : (100 * c.agreement).toFixed(1) + " %"} agreed`),
  ]))];
}

/** The detail panel; `byId`: every version's listing (their evaluations); `onActivate(m)`. */
export function renderVersion(detail, byId, onActivate) {
  const m = detail.manifest;
  const lineage = detail.lineage.slice().reverse().map((id) => byId.get(id) || (id === m.id ? m : null)).filter(Boolean);
  const rows = accuracyMatrix(lineage, m.classes);
  const lost = forgetting(m, rows, m.classes);
  const canServe = !detail.serving;
  return [
    h("div", { class: "detail-head" },
      h("div", {},
        h("h2", { id: "detail-title" }, `Version ${m.id}`),
        h("p", { class: "node-line" },
          detail.serving ? badge("serving", "serving") : null,
          detail.aliases.map((a) => badge(a, "alias")),
          detail.rejected ? badge("rejected", "rejected") : null,
          detail.quarantined ? badge(`quarantined: ${detail.quarantined}`, "quarantined") : null,
        ),
      ),
      h("button", {
        type: "button",
        id: "activate-button",
        disabled: !canServe,
        title: canServe ? null : "it serves already",
        onclick: () => onActivate(detail),
      }, "Activate…"),
    ),
    h("dl", { class: "facts" },
      h("dt", {}, "parent"), h("dd", { class: "mono" }, m.parent ?? "none (a root)"),
      h("dt", {}, "created"), h("dd", {}, when(m.created_at)),
      h("dt", {}, "classes added"), h("dd", {}, (m.new_classes.length ? m.new_classes : m.classes).join(", ")),
      h("dt", {}, "all classes"), h("dd", {}, `${m.classes.length}: ${m.classes.join(", ")}`),
      h("dt", {}, "job"), h("dd", { class: "mono" }, m.job_id ?? "–"),
      h("dt", {}, "data"), h("dd", { class: "digest" }, m.data_digest),
    ),
    h("h3", {}, "Evaluation against the serving version"),
    evaluationFacts(m),
    h("h3", {}, "Accuracy along the lineage"),
    matrixTable(rows, m.classes),
    h("h3", {}, "Forgetting per class"),
    lost.length
      ? h("div", { id: "forgetting-chart" },
          barChart(lost, { title: `Forgetting per class of ${m.id}, in points`, unit: " pt" }),
          h("p", { class: "muted small" },
            "Best accuracy on the class before this version (its ancestors' evaluations, and the serving version's on the same images) minus its own; above zero it forgot, below it gained."))
      : h("p", { class: "muted", id: "forgetting-chart" }, "Nothing to compare: no class this version kept was evaluated before and after it."),
    shadowFacts(detail.shadow),
    h("h3", {}, "Method and settings"),
    h("dl", { class: "facts" },
      h("dt", {}, "method"), h("dd", {}, m.method),
      h("dt", {}, "backbone"), h("dd", {}, m.backbone.name),
      h("dt", {}, "backbone weights"), h("dd", { class: "digest" }, m.backbone.weights_sha256),
      h("dt", {}, "task index"), h("dd", {}, String(m.task_index)),
    ),
    h("details", {}, h("summary", {}, "Hyperparameters"), keyValues(m.hyperparameters)),
    h("details", {}, h("summary", {}, "Training metrics"), keyValues(m.metrics)),
    h("h3", {}, "Files"),
    filesTable(m),
    h("p", { class: "small" }, h("span", { class: "muted" }, "manifest digest "), h("span", { class: "digest" }, m.digest)),
  ];
}
