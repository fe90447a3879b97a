// The console's entry point: login, the four views, polling, and the actions (activate, roll
// back, cancel), all through the admin API (every request here can be made with curl).

import { admin, ApiError, metricsText, token } from "./api.js";
import { askChange } from "./dialog.js";
import { fill, h } from "./dom.js";
import { renderHistory } from "./history.js";
import { isActive, renderJobs } from "./jobs.js";
import { reduce, renderServing, ServingFigures } from "./serving.js";
import { renderTree } from "./tree.js";
import { renderVersion } from "./version.js";

const TICK_MS = 1500;
const SLOW_EVERY = 4; // versions and history every 4 ticks (6 s), jobs too while none is active
const $ = (id) => document.getElementById(id);

const state = {
  view: "versions",
  versions: [],
  byId: new Map(),
  selected: null,
  jobs: [],
  history: [],
  figures: new ServingFigures(),
  timer: null,
  tick: 0,
  shown: new Map(), // container id → JSON of what it shows (re-render only on change)
};

/** Re-renders a container when its data changed, keeping the keyboard focus where it was. */
function show(id, data, render) {
  if (!token.get()) return; // logged out while a request was on its way
  const key = JSON.stringify(data);
  if (state.shown.get(id) === key) return;
  state.shown.set(id, key);
  const container = $(id);
  const active = document.activeElement;
  let selector = null;
  if (active && container.contains(active) && active !== container) {
    if (active.id) selector = `#${CSS.escape(active.id)}`;
    else if (active.getAttribute("aria-label")) selector = `[aria-label="${CSS.escape(active.getAttribute("aria-label"))}"]`;
    else if (active.dataset.version) selector = `[data-version="${CSS.escape(active.dataset.version)}"]`;
  }
  fill(container, render());
  if (selector) container.querySelector(selector)?.focus();
}

function status(text) {
  $("refresh-status").textContent = text;
}

function showError(err) {
  if (err instanceof ApiError && err.refused) {
    logout(`The token was refused: ${err.message}`);
    return;
  }
  $("app-error").textContent = err.message;
}

// --- data -------------------------------------------------------------------------------------

async function loadVersions() {
  const [versions, history] = await Promise.all([admin("/versions"), admin("/history")]);
  state.versions = versions;
  state.byId = new Map(versions.map((v) => [v.id, v]));
  state.history = history;
  const serving = versions.find((v) => v.serving);
  $("serving-badge").textContent = `serving: ${serving ? serving.id : "nothing"}`;
  $("rollback-button").disabled = !history.some((e) => e.action !== "reject");
  if (!state.selected || !state.byId.has(state.selected)) state.selected = serving?.id ?? versions.at(-1)?.id ?? null;
  show("tree", [versions, state.selected], () => renderTree(versions, state.selected, select));
  show("history", history, () => renderHistory(history));
  if (state.selected) await loadDetail();
}

async function loadDetail() {
  const id = state.selected;
  const detail = await admin(`/versions/${encodeURIComponent(id)}`);
  if (id !== state.selected) return;
  const lineage = detail.lineage.map((v) => state.byId.get(v));
  show("version-detail", [detail, lineage], () => renderVersion(detail, state.byId, activate));
}

async function loadJobs() {
  const before = new Map(state.jobs.map((j) => [j.job_id, j.state]));
  state.jobs = await admin("/jobs?limit=50");
  const active = state.jobs.filter(isActive).length;
  $("jobs-count").textContent = active ? `${active} active` : "";
  show("jobs", state.jobs, () => renderJobs(state.jobs, cancelJob, openVersion));
  // a job that just ended may have published or activated a version
  return state.jobs.some((j) => before.has(j.job_id) && before.get(j.job_id) !== j.state && !isActive(j));
}

async function loadMetrics() {
  state.figures.add(reduce(await metricsText(), performance.now() / 1000));
  const serving = state.versions.find((v) => v.serving)?.id ?? null;
  fill($("serving"), renderServing(state.figures, serving));
}

async function refresh({ all = false } = {}) {
  const slow = all || state.tick % SLOW_EVERY === 0;
  const jobsNow = slow || state.view === "jobs" || state.jobs.some(isActive);
  try {
    const ended = jobsNow ? await loadJobs() : false;
    if (slow || ended) await loadVersions();
    if (state.view === "serving") await loadMetrics();
    $("app-error").textContent = "";
    status(`updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    showError(err);
    if (!(err instanceof ApiError && err.refused)) status("retrying…");
  }
}

function loop() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    state.tick += 1;
    if (document.visibilityState === "visible") await refresh();
    if (token.get()) loop();
  }, TICK_MS);
}

// --- actions ----------------------------------------------------------------------------------

async function select(id) {
  state.selected = id;
  show("tree", [state.versions, id], () => renderTree(state.versions, id, select));
  try {
    await loadDetail();
  } catch (err) {
    showError(err);
  }
}

function openVersion(id) {
  setView("versions");
  select(id);
}

async function afterChange(message) {
  status(message);
  await refresh({ all: true });
}

async function activate(detail) {
  const m = detail.manifest;
  const entry = await askChange({
    title: `Activate ${m.id}`,
    text: `Every worker serves ${m.id} within seconds; it is test-loaded first. Classes: ${m.classes.join(", ")}.`,
    force: Boolean(detail.rejected || detail.quarantined),
    confirm: `Activate ${m.id}`,
    submit: ({ reason, actor, force }) =>
      admin(`/versions/${encodeURIComponent(m.id)}/activate`, { method: "POST", body: { reason, actor, force } }),
  });
  if (entry) await afterChange(`${entry.to} serves (was ${entry.from ?? "nothing"})`);
}

async function rollback() {
  const served = [...new Set(state.history.filter((e) => e.action !== "reject").map((e) => e.to))];
  const current = state.versions.find((v) => v.serving)?.id;
  const choice = h("select", { id: "change-to" },
    h("option", { value: "" }, "the previously serving version"),
    served.filter((v) => v !== current).reverse().map((v) => h("option", { value: v }, v)));
  const target = [h("label", { for: "change-to" }, "Roll back to"), choice];
  const entry = await askChange({
    title: "Roll back",
    text: `Serve an earlier version instead of ${current ?? "the serving one"}.`,
    target,
    confirm: "Roll back",
    submit: ({ reason, actor }) =>
      admin("/rollback", { method: "POST", body: { reason, actor, to: choice.value || null } }),
  });
  if (entry) await afterChange(`rolled back: ${entry.to} serves (was ${entry.from})`);
}

async function cancelJob(job) {
  try {
    await admin(`/jobs/${encodeURIComponent(job.job_id)}/cancel`, { method: "POST" });
    status(`asked job ${job.job_id.slice(0, 8)} to stop`);
    await refresh({ all: true });
  } catch (err) {
    showError(err);
  }
}

// --- views, login -----------------------------------------------------------------------------

function setView(view) {
  state.view = view;
  for (const button of document.querySelectorAll("#tabs button")) {
    if (button.dataset.view === view) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  if (view === "serving" || view === "jobs") refresh();
}

function showApp(on) {
  $("login").hidden = on;
  for (const id of ["tabs", "main", "session-bar"]) $(id).hidden = !on;
}

async function start() {
  showApp(true);
  setView(state.view);
  await refresh({ all: true });
  if (token.get()) loop();
}

function logout(message = "") {
  token.clear();
  clearTimeout(state.timer);
  state.shown.clear();
  state.jobs = [];
  state.versions = [];
  state.history = [];
  state.selected = null;
  state.figures = new ServingFigures();
  for (const id of ["tree", "version-detail", "jobs", "history", "serving"]) fill($(id));
  $("app-error").textContent = "";
  showApp(false);
  $("login-error").textContent = message;
  $("token-input").focus();
}

async function login(event) {
  event.preventDefault();
  const input = $("token-input");
  const candidate = input.value.trim();
  $("login-error").textContent = "";
  try {
    await admin("/aliases", { bearer: candidate });
  } catch (err) {
    $("login-error").textContent = err.refused ? `Refused: ${err.message}` : err.message;
    input.select();
    return;
  }
  input.value = "";
  token.set(candidate);
  await start();
  $("main").focus({ preventScroll: true });
}

function init() {
  $("login-form").addEventListener("submit", login);
  $("logout-button").addEventListener("click", () => logout());
  $("rollback-button").addEventListener("click", rollback);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => setView(button.dataset.view));
  }
  if (token.get()) start();
  else $("token-input").focus();
}

init();
