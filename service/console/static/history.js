// The serving history: who moved the serving version, when, why, from which to which; and the
// candidates the promotion gate turned away.

import { badge, h, when } from "./dom.js";

export function renderHistory(entries) {
  if (!entries.length) return h("p", { class: "muted" }, "Nothing has served yet.");
  return h("div", { class: "table-wrap" }, h("table", { id: "history-table" },
    h("thead", {}, h("tr", {}, ["when", "action", "from → to", "who", "why"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, entries.slice().reverse().map((e) => h("tr", { dataset: { action: e.action } },
      h("td", { class: "nowrap" }, when(e.time)),
      h("td", {}, badge(e.action, e.action), e.forced ? [" ", badge("forced", "reject")] : null),
      h("td", { class: "mono nowrap" }, e.action === "reject"
        ? `${e.to} turned away; ${e.from ?? "nothing"} kept serving`
        : `${e.from ?? "–"} → ${e.to}`),
      h("td", {}, e.actor),
      h("td", { dataset: { field: "reason" } }, e.reason || h("span", { class: "muted" }, "no reason given")),
    ))),
  ));
}
