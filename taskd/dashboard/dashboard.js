// taskd dashboard: plain JS, no build step. Every value shown is set with textContent, never as HTML.
"use strict";

const KEY_STORE = "taskd.api_key";
const PROJECT_STORE = "taskd.project";
const OVERVIEW_EVERY_MS = 3000;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const PAGE_SIZE = 50;
const RECONNECT_MS = 3000; // until the stream says otherwise (`retry:`), as EventSource

const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  project: "",
  status: "",
  type: "",
  page: 1,
  totalPages: 1,
  tasks: new Map(), // task_id -> list item (plus live fields)
  selected: null,
  source: null, // the AbortController of the live event stream
  overviewTimer: null,
  reloadTimer: null,
  listRefused: false, // a list reload was refused with 429: the one its Retry-After set is due
};

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fmtTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleTimeString();
}

// A time that may be days away: the date too, unless it is today.
function fmtWhen(iso) {
  const date = new Date(iso);
  if (isNaN(date)) return iso;
  return date.toDateString() === new Date().toDateString() ? date.toLocaleTimeString() : date.toLocaleString();
}

function fmtEpoch(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace(/\.\d+Z$/, "Z") : null;
}

function mb(bytes) {
  return `${(bytes / 1048576).toFixed(0)} MB`;
}

class AuthError extends Error {}
// The answer to a request made with a key since forgotten or replaced: what it holds is not for
// whoever uses the page now, and is dropped.
class KeyChanged extends Error {}
// A 429: the key's quota is spent; `retryAfterMs` is its Retry-After (10 s without one, as the
// event stream's reconnection takes it).
class RateLimited extends Error {
  constructor(message, retryAfterMs) {
    super(message);
    this.retryAfterMs = retryAfterMs;
  }
}

async function api(path, options = {}) {
  const key = state.key;
  const response = await fetch(path, {
    ...options,
    headers: { "X-API-Key": key, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (key !== state.key) throw new KeyChanged("the key changed while this request was out");
  if (response.status === 401) throw new AuthError((body && body.message) || "Invalid API key");
  if (!response.ok) {
    const message = body
      ? withDetails(body.message || body.detail || JSON.stringify(body), body.details)
      : response.statusText;
    if (response.status === 429) {
      throw new RateLimited(message, 1000 * (Number(response.headers.get("Retry-After")) || 10));
    }
    throw new Error(message);
  }
  return body;
}

// A 400 names its fields in `details` alone (a refused retry's message is "The task as stored no
// longer passes a submit's checks; submit it corrected"): they are shown after it.
function withDetails(message, details) {
  if (!details || typeof details !== "object") return message;
  const named = Object.entries(details).map(([field, problem]) => `${field}: ${problem}`);
  return named.length ? `${message} (${named.join("; ")})` : message;
}

function showKeyForm(message) {
  $("key-panel").hidden = false;
  $("main").hidden = true;
  $("forget-key").hidden = true;
  $("key-error").hidden = !message;
  $("key-error").textContent = message || "";
  // Nothing asks again with no key: the overview's round, a list reload a live event made due.
  clearInterval(state.overviewTimer);
  clearTimeout(state.reloadTimer);
  stopLive();
  clearView();
  $("api-key").focus();
}

// Nothing the last key was shown stays in the page, not even hidden: the next key may be another
// person's, of fewer projects (Forget key on a shared screen, or a key that stopped working).
function clearView() {
  state.tasks = new Map();
  state.selected = null;
  state.totalPages = 1;
  for (const table of ["queues", "workers", "tasks"]) $(table).tBodies[0].replaceChildren();
  for (const id of ["alerts", "gpus", "metrics", "known-types", "detail-fields", "detail-webhook"]) $(id).replaceChildren();
  for (const id of ["task-count", "page-info", "detail-id", "action-message", "detail-data", "detail-result",
    "detail-error", "detail-traceback"]) $(id).textContent = "";
  $("detail").hidden = true;
}

// Deals with a failed request; the message to show beside what failed ("" for none).
function handleError(error) {
  if (error instanceof KeyChanged) return "";
  if (error instanceof AuthError) {
    sessionStorage.removeItem(KEY_STORE);
    state.key = "";
    showKeyForm(error.message);
  } else {
    console.warn(error);
  }
  return error.message;
}

// ---- overview: queues, workers, GPUs, alerts, metrics ----

function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const cell of cells) tr.append(cell instanceof Node ? wrapCell(cell) : el("td", cell));
    return tr;
  }));
}

function wrapCell(node) {
  const td = el("td");
  td.append(node);
  return td;
}

function renderOverview(overview) {
  fillRows($("queues").tBodies[0], overview.queues.map((q) => [
    q.name, q.waiting, q.running, q.concurrency === null ? "" : q.concurrency, q.workers,
  ]));
  fillRows($("workers").tBodies[0], overview.workers.map((w) => {
    const id = el("span", `${w.host}:${w.pid}`);
    id.title = w.worker_id;
    return [id, w.queues.join(", "), w.running, mb(w.rss_bytes + w.job_rss_bytes), `${w.heartbeat_age.toFixed(1)} s ago`];
  }));
  const gpus = $("gpus");
  if (!overview.gpus.devices.length) {
    gpus.replaceChildren(el("p", overview.gpus.note || "no GPUs", "hint"));
  } else {
    gpus.replaceChildren(...overview.gpus.devices.map((d) => {
      const box = el("div", null, "gpu");
      const bar = el("progress");
      bar.max = 100;
      bar.value = d.utilization;
      const temperature = d.temperature === null ? "" : ` · ${d.temperature.toFixed(0)} °C`;
      box.append(el("strong", `${d.host} · GPU ${d.index} `), el("span", d.name + " "), bar,
        el("span", ` ${d.utilization.toFixed(0)} % · ${mb(d.memory_used)} / ${mb(d.memory_total)}${temperature}`));
      if (Array.isArray(d.holders) && d.holders.length) box.append(el("div", `holding: ${d.holders.join(", ")}`, "hint"));
      return box;
    }));
  }
}

function renderHealth(health) {
  const alerts = $("alerts");
  if (!health.alerts.length) {
    alerts.replaceChildren(el("div", `Queue health: ${health.status}`, "alert healthy"));
  } else {
    alerts.replaceChildren(...health.alerts.map((a) => el("div", `${a.severity}: ${a.message}`, `alert ${a.severity}`)));
  }
  const m = health.metrics;
  const dl = $("metrics");
  dl.replaceChildren();
  for (const [name, value] of [["total", m.total_tasks], ["completed", m.completed_tasks], ["failed", m.failed_tasks],
    ["success rate", `${m.success_rate} %`], ["failure rate", `${m.failure_rate} %`], ["running", m.currently_running]]) {
    dl.append(el("dt", name), el("dd", value));
  }
}

async function refreshOverview() {
  try {
    const [overview, health] = await Promise.all([api("/api/v1/dashboard/overview"), api("/api/v1/tasks/health")]);
    renderOverview(overview);
    renderHealth(health);
  } catch (error) {
    handleError(error);
  }
}

// ---- tasks ----

function matchesFilters(task) {
  return (!state.status || task.status === state.status) && (!state.type || task.task_type === state.type);
}

function rowFor(task) {
  const tr = el("tr");
  tr.dataset.taskId = task.task_id;
  const id = el("code", task.task_id.slice(0, 8));
  id.title = task.task_id;
  const bar = el("progress");
  bar.max = 1;
  bar.value = task.progress || 0;
  const pct = el("span", ` ${Math.round((task.progress || 0) * 100)} %`, "pct");
  const progress = el("td");
  progress.append(bar, pct);
  const step = el("td", task.current_step || "", "step");
  if (task.status === "queued") step.append(...waitingNodes(task));
  tr.append(wrapCell(id), el("td", task.task_type), el("td", task.status, `status status-${task.status}`),
    progress, step, el("td", fmtTime(task.created_at)),
    el("td", fmtTime(task.updated_at), "updated"));
  if (state.selected === task.task_id) tr.classList.add("selected");
  tr.addEventListener("click", () => openDetail(task.task_id));
  return tr;
}

// What a queued task waits for: its dependencies (each opens that task) and its scheduled time.
function waitingNodes(task) {
  const nodes = [];
  if (Array.isArray(task.waiting_for) && task.waiting_for.length) {
    const box = el("span", "waits for ", "waiting-for");
    task.waiting_for.forEach((depId, i) => {
      if (i) box.append(", ");
      const link = el("a", String(depId).slice(0, 8), "dep");
      link.href = "#";
      link.title = depId;
      link.dataset.taskId = depId;
      link.addEventListener("click", (event) => {
        event.preventDefault();
        event.stopPropagation(); // not the row's own click
        openDetail(depId);
      });
      box.append(link);
    });
    nodes.push(box);
  }
  if (task.scheduled_for) {
    const box = el("span", "runs at ", "scheduled-for");
    const time = el("time", fmtWhen(task.scheduled_for));
    time.dateTime = task.scheduled_for;
    time.title = task.scheduled_for;
    box.append(time);
    nodes.push(box);
  }
  return nodes;
}

// A status event changes what listed tasks wait for: a completed task no longer holds anyone, and
// a task that left `queued` waits for nothing.
function settleWaits(data) {
  const known = state.tasks.get(data.task_id);
  if (known && data.status !== "queued") {
    delete known.waiting_for;
    delete known.scheduled_for;
  }
  if (data.status !== "completed") return;
  for (const task of state.tasks.values()) {
    if (!Array.isArray(task.waiting_for) || !task.waiting_for.includes(data.task_id)) continue;
    task.waiting_for = task.waiting_for.filter((id) => id !== data.task_id);
    const row = document.querySelector(`#tasks tr[data-task-id="${CSS.escape(task.task_id)}"]`);
    if (row) row.replaceWith(rowFor(task));
  }
}

function renderTasks() {
  const visible = [...state.tasks.values()].filter(matchesFilters);
  visible.sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
  $("tasks").tBodies[0].replaceChildren(...visible.map(rowFor));
  $("tasks-empty").hidden = visible.length > 0;
  $("page-info").textContent = `page ${state.page} of ${Math.max(1, state.totalPages)}`;
  $("prev-page").disabled = state.page <= 1;
  $("next-page").disabled = state.page >= state.totalPages;
  const types = new Set([...state.tasks.values()].map((t) => t.task_type));
  $("known-types").replaceChildren(...[...types].sort().map((t) => { const o = el("option"); o.value = t; return o; }));
}

async function loadTasks() {
  if (!state.project) return;
  // This read stands for any reload due (a 429's, a live event's): it is made now.
  clearTimeout(state.reloadTimer);
  state.listRefused = false;
  const query = new URLSearchParams({ page: state.page, limit: PAGE_SIZE });
  if (state.status) query.set("status", state.status);
  if (state.type) query.set("task_type", state.type);
  try {
    const body = await api(`/api/v1/projects/${encodeURIComponent(state.project)}/tasks?${query}`);
    state.tasks = new Map(body.tasks.map((t) => [t.task_id, t]));
    state.totalPages = body.pagination.total_pages;
    $("task-count").textContent = `${body.pagination.total} in ${state.project}`;
    renderTasks();
  } catch (error) {
    if (error instanceof RateLimited) {
      // A listing spends the key's `status` quota (one unit per 1,000 tasks of the project): the
      // list is read again when the 429's Retry-After says, not left as it was until a new task
      // happens to reload it, and not sooner (a live event's reload would be refused too).
      state.listRefused = true;
      state.reloadTimer = setTimeout(loadTasks, error.retryAfterMs);
      console.warn(error);
      return;
    }
    handleError(error);
  }
}

function reloadSoon() {
  if (state.listRefused) return;
  clearTimeout(state.reloadTimer);
  state.reloadTimer = setTimeout(loadTasks, 300);
}

function applyEvent(event) {
  const data = JSON.parse(event.data);
  if (event.type === "status") settleWaits(data);
  const known = state.tasks.get(data.task_id);
  if (!known) {
    // A task this page has not listed (new, or on another page): the list endpoint has its data.
    if (state.page === 1 && matchesFilters(data)) reloadSoon();
    return;
  }
  Object.assign(known, {
    status: data.status, progress: data.progress, current_step: data.current_step, error: data.error,
    updated_at: fmtEpoch(data.at) || known.updated_at,
  });
  if ("result" in data) known.result = data.result;
  const row = document.querySelector(`#tasks tr[data-task-id="${CSS.escape(data.task_id)}"]`);
  if (row) row.replaceWith(rowFor(known));
  if (state.selected === data.task_id) {
    if (event.type === "status") openDetail(data.task_id);
    else renderProgressInDetail(known);
  }
}

function stopLive() {
  if (state.source) state.source.abort();
  state.source = null;
  setLive(false);
}

function setLive(on) {
  const badge = $("live");
  badge.textContent = on ? "live" : "offline";
  badge.className = `badge ${on ? "on" : "off"}`;
}

// The project's events are read with fetch, the key in the X-API-Key header, not with EventSource:
// EventSource cannot send a header, and the key in its URL (`?api_key=`) lands in the access log
// of every proxy or load balancer in front of taskd. Reconnects as EventSource would: after
// RECONNECT_MS (the server's `retry:`), with `Last-Event-ID`; after Retry-After on a 429; never
// after a 204 (nothing more will come) or another refusal.
function startLive() {
  stopLive();
  if (!state.project) return;
  const controller = new AbortController();
  state.source = controller;
  followEvents(`/api/v1/projects/${encodeURIComponent(state.project)}/events`, controller.signal)
    .catch((error) => { if (!controller.signal.aborted) handleError(error); })
    .finally(() => { if (state.source === controller) setLive(false); });
}

async function followEvents(path, signal) {
  const stream = { lastId: "", retryMs: RECONNECT_MS };
  for (;;) {
    const headers = { "X-API-Key": state.key, Accept: "text/event-stream" };
    if (stream.lastId) headers["Last-Event-ID"] = stream.lastId;
    // Set by a 429; else the stream's reconnection time, read after the stream (its `retry:`).
    let wait = null;
    try {
      const response = await fetch(path, { headers, signal, cache: "no-store" });
      if (response.status === 204) return;
      if (response.status === 401) throw new AuthError("Invalid API key");
      if (response.status === 429) {
        wait = 1000 * (Number(response.headers.get("Retry-After")) || 10);
      } else if (!response.ok) {
        throw new Error(`event stream: ${response.status} ${response.statusText}`);
      } else {
        setLive(true);
        await readEvents(response.body, stream);
      }
    } catch (error) {
      if (signal.aborted || error instanceof AuthError || !(error instanceof TypeError)) throw error;
      // A TypeError is the network's (taskd restarting, the connection dropped): try again.
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, wait ?? stream.retryMs));
    if (signal.aborted) return;
  }
}

// Server-sent events as the HTML standard parses them (the fields taskd sends: id, event, data,
// retry; comments ignored), each `status` or `progress` event handed to applyEvent.
async function readEvents(body, stream) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "";
  let data = [];
  // The `id` of the event being read: it becomes the stream's (sent back as Last-Event-ID) only
  // when its event is complete, as the standard says, so that a connection cut inside an event
  // asks for that event again instead of skipping it.
  let id = stream.lastId;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // A CR at the very end may be the first half of a CRLF: it waits for the next chunk.
    const lines = buffer.split(/\r\n|\n|\r(?!$)/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        stream.lastId = id;
        if (data.length && (type === "status" || type === "progress")) {
          // A page error, as from an EventSource listener: reported, and the stream goes on.
          try { applyEvent({ type, data: data.join("\n") }); } catch (error) { reportError(error); }
        } else if (data.length && type === "gap") {
          // Events this page was not sent are gone (the stream's cap trimmed them while it was
          // away or behind), the ends of listed tasks among them: the list is read again.
          reloadSoon();
        }
        type = "";
        data = [];
        continue;
      }
      const colon = line.indexOf(":");
      if (colon === 0) continue;
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") type = text;
      else if (field === "data") data.push(text);
      else if (field === "id" && !text.includes("\0")) id = text;
      else if (field === "retry" && /^\d+$/.test(text)) stream.retryMs = Number(text);
    }
  }
}

// ---- detail, cancel, retry ----

function setPre(id, value) {
  $(id).textContent = value === null || value === undefined ? "—" : JSON.stringify(value, null, 2);
}

function listOf(ids) {
  return Array.isArray(ids) && ids.length ? ids.join(", ") : null;
}

function renderProgressInDetail(task) {
  const progress = document.querySelector("#detail-fields dd[data-field=progress]");
  if (progress) progress.textContent = `${Math.round((task.progress || 0) * 100)} % ${task.current_step || ""}`;
}

async function openDetail(taskId) {
  state.selected = taskId;
  document.querySelectorAll("#tasks tr.selected").forEach((tr) => tr.classList.remove("selected"));
  const row = document.querySelector(`#tasks tr[data-task-id="${CSS.escape(taskId)}"]`);
  if (row) row.classList.add("selected");
  let status;
  try {
    status = await api(`/api/v1/tasks/${encodeURIComponent(taskId)}/status`);
  } catch (error) {
    $("action-message").textContent = handleError(error);
    return;
  }
  if (state.selected !== taskId) return;
  $("detail").hidden = false;
  $("detail-id").textContent = taskId;
  $("detail").dataset.status = status.status;
  const fields = $("detail-fields");
  fields.replaceChildren();
  const rows = [["status", status.status], ["progress", `${Math.round(status.progress * 100)} % ${status.current_step || ""}`],
    ["type", status.task_type], ["project", status.project_id], ["priority", status.priority], ["attempt", status.attempt],
    ["created", status.created_at], ["started", status.started_at], ["completed", status.completed_at],
    ["processing time", status.processing_time === null ? null : `${status.processing_time} s`],
    ["queue position", status.queue_position], ["depends on", listOf(status.depends_on)],
    ["waiting for", listOf(status.waiting_for)], ["scheduled for", status.scheduled_for],
    ["previous state", status.previous_state],
    ["retry of", status.retry_of], ["last error", status.last_error]];
  for (const [name, value] of rows) {
    if (value === null || value === undefined) continue;
    const dd = el("dd", value);
    dd.dataset.field = name;
    fields.append(el("dt", name), dd);
  }
  const listed = state.tasks.get(taskId);
  setPre("detail-data", listed ? listed.task_data : null);
  setPre("detail-result", status.result);
  $("detail-error-block").hidden = !status.error;
  $("detail-error").textContent = status.error || "";
  $("detail-traceback-block").hidden = !status.traceback;
  $("detail-traceback").textContent = status.traceback || "";
  const webhook = status.webhook;
  $("detail-webhook-block").hidden = !webhook;
  const wh = $("detail-webhook");
  wh.replaceChildren();
  if (webhook) {
    for (const [name, value] of Object.entries(webhook)) {
      if (value !== null && value !== undefined) wh.append(el("dt", name.replaceAll("_", " ")), el("dd", value));
    }
  }
  $("cancel-button").disabled = TERMINAL.has(status.status);
  $("retry-button").disabled = !(status.status === "failed" || status.status === "cancelled");
}

async function cancelSelected() {
  const taskId = state.selected;
  if (!taskId) return;
  $("action-message").textContent = "cancelling…";
  try {
    const body = await api(`/api/v1/tasks/${encodeURIComponent(taskId)}`, { method: "DELETE" });
    $("action-message").textContent = body.message || body.detail || "";
  } catch (error) {
    $("action-message").textContent = handleError(error);
  }
  await openDetail(taskId);
}

async function retrySelected() {
  const taskId = state.selected;
  const button = $("retry-button");
  if (!taskId || button.disabled) return;
  // Each POST runs the task again as a new task: a second click while the first is answered
  // (a double click) would run it twice. openDetail sets it again from the task it shows next.
  button.disabled = true;
  try {
    const body = await api(`/api/v1/tasks/${encodeURIComponent(taskId)}/retry`, { method: "POST" });
    $("action-message").textContent = `retried as ${body.new_task_id}`;
    await loadTasks();
    await openDetail(body.new_task_id);
  } catch (error) {
    $("action-message").textContent = handleError(error);
    if (state.selected === taskId) button.disabled = false;
  }
}

// ---- wiring ----

function showProject() {
  state.project = $("project").value.trim();
  state.status = $("filter-status").value;
  state.type = $("filter-type").value.trim();
  state.page = 1;
  sessionStorage.setItem(PROJECT_STORE, state.project);
  const url = new URL(location.href);
  url.searchParams.set("project", state.project);
  history.replaceState(null, "", url);
  loadTasks();
  startLive();
}

function start() {
  $("key-panel").hidden = true;
  $("main").hidden = false;
  $("forget-key").hidden = false;
  refreshOverview();
  clearInterval(state.overviewTimer);
  state.overviewTimer = setInterval(refreshOverview, OVERVIEW_EVERY_MS);
  if ($("project").value.trim()) showProject();
}

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.search);
  $("project").value = params.get("project") || sessionStorage.getItem(PROJECT_STORE) || "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    $("api-key").value = "";
    start();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    state.key = "";
    showKeyForm("");
  });
  $("project-form").addEventListener("submit", (event) => { event.preventDefault(); showProject(); });
  $("filter-status").addEventListener("change", () => { if (state.project) showProject(); });
  $("prev-page").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); loadTasks(); });
  $("next-page").addEventListener("click", () => { state.page += 1; loadTasks(); });
  $("close-detail").addEventListener("click", () => { state.selected = null; $("detail").hidden = true; renderTasks(); });
  $("cancel-button").addEventListener("click", cancelSelected);
  $("retry-button").addEventListener("click", retrySelected);
  if (state.key) start(); else showKeyForm("");
});
