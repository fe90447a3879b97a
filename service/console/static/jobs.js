// Learn jobs: queued, running with live progress (steps, loss, images/s), finished, failed with
// the reason; a cancel button for those not finished.

import { badge, h, seconds, when } from "./dom.js";

const ACTIVE = new Set(["queued", "running", "lost"]);

export function isActive(job) {
  return ACTIVE.has(job.state);
}

function progressCell(job) {
  const p = job.progress;
  if (job.state === "queued") return h("span", { class: "progress-text" }, "waiting for a worker");
  if (job.state === "lost") return h("span", { class: "progress-text" }, "its worker stopped beating; another one will run it again");
  if (!p) return null;
  if (!p.phase) return h("span", { class: "progress-text", dataset: { field: "phase" } }, "starting");
  const parts = [];
  if (p.epochs) parts.push(`epoch ${p.epoch}/${p.epochs}`);
  if (p.steps) parts.push(h("span", { dataset: { field: "steps" } }, `step ${p.step}/${p.steps}`));
  if (p.loss !== null && p.loss !== undefined) parts.push(h("span", { dataset: { field: "loss" } }, `loss ${p.loss.toFixed(4)}`));
  if (p.samples_per_s) parts.push(h("span", { dataset: { field: "rate" } }, `${p.samples_per_s.toFixed(0)} images/s`));
  if (p.eta_s !== null && p.eta_s !== undefined && p.phase === "train") parts.push(`ETA ${seconds(p.eta_s)}`);
  return h("div", {},
    h("span", { class: "progress-text", dataset: { field: "phase" } }, p.phase),
    p.steps ? [" ", h("progress", { max: p.steps, value: p.step, "aria-label": `job ${job.job_id.slice(0, 8)}: step ${p.step} of ${p.steps}` })] : null,
    h("div", { class: "progress-text" }, parts.flatMap((x, i) => (i ? [" · ", x] : [x]))),
  );
}

function outcome(job, onVersion) {
  if (job.state === "failed" || job.state === "cancelled") {
    return h("div", { class: "job-error", dataset: { field: "error" } }, job.error || job.state);
  }
  if (job.state !== "succeeded") return null;
  const r = job.result || {};
  return h("div", {},
    h("button", { type: "button", class: "link", onclick: () => onVersion(job.version) }, job.version),
    r.rejected ? [" ", badge("rejected", "rejected"), h("div", { class: "job-error" }, r.rejected)] : null,
    !r.rejected && r.activated ? [" ", badge("activated", "passed")] : null,
    r.reused ? h("span", { class: "muted small" }, " (reused: its key had published it)") : null,
  );
}

/** The jobs table; `onCancel(job)`, `onVersion(id)`. */
export function renderJobs(jobs, onCancel, onVersion) {
  if (!jobs.length) return h("p", { class: "muted" }, "No learn jobs yet (POST /admin/learn, or `janus learn`).");
  return h("div", { class: "table-wrap" }, h("table", { id: "jobs-table" },
    h("thead", {}, h("tr", {},
      ["job", "submitted", "state", "progress", "outcome", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, jobs.map((job) => h("tr", { dataset: { job: job.job_id, state: job.state } },
      h("td", { class: "mono", title: `${job.job_id}\n${job.dataset || ""}` }, job.job_id.slice(0, 8)),
      h("td", { class: "nowrap" }, when(job.submitted_at)),
      h("td", {}, badge(job.state, job.state)),
      h("td", {}, progressCell(job)),
      h("td", {}, outcome(job, onVersion)),
      h("td", {}, isActive(job)
        ? h("button", { type: "button", class: "danger", onclick: () => onCancel(job), "aria-label": `Cancel job ${job.job_id.slice(0, 8)}` }, "Cancel")
        : null),
    ))),
  ));
}
