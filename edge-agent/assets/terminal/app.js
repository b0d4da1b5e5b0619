// The operator terminal. Plain JavaScript against the edge agent's own API, no framework,
// nothing from the internet. Every submit carries an idempotency key made when its dialog
// opened (or its button was drawn), so a double tap or a retry after a lost answer stores
// one event. Strings come from the message catalog (/assets/i18n/<lang>.json).
"use strict";

const REFRESH_MS = 3000;
const SESSION_KEY_LANG = "mes.lang";
const STATION_KEY = "mes.station";

const $ = (id) => document.getElementById(id);
const state = {
  lang: "en",
  messages: {},
  session: null,
  station: null,
  view: null,          // the last /api/v1/terminal answer
  master: {},          // kind -> records
  refreshes: 0,
  dialog: null,        // {submit, key, busy}
  timer: null,
  keys: {},            // per-button idempotency keys, renewed after each success
};

// ---------- messages ----------

function t(key, vars) {
  let s = state.messages[key];
  if (s === undefined) s = key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.split("{" + k + "}").join(String(v));
  return s;
}

async function loadLanguage(lang) {
  const r = await fetch("/assets/i18n/" + lang + ".json");
  if (!r.ok) throw new Error("catalog " + lang + ": " + r.status);
  state.messages = await r.json();
  state.lang = lang;
  document.documentElement.lang = lang;
  localStorage.setItem(SESSION_KEY_LANG, lang);
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const b of document.querySelectorAll("nav [data-lang]")) {
    b.setAttribute("aria-pressed", String(b.dataset.lang === lang));
  }
  if (state.view) render();
}

// ---------- ids and keys ----------

function hex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""); }

/** A UUIDv7: time-ordered, so event ids made here sort like the agent's own. */
function uuid7() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) { b[i] = ms % 256; ms = Math.floor(ms / 256); }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = hex(b);
  return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
}

function keyFor(name) {
  if (!state.keys[name]) state.keys[name] = "term-" + uuid7();
  return state.keys[name];
}
function renewKey(name) { delete state.keys[name]; }

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status; this.code = code; this.field = field;
  }
}

async function api(method, path, body, idempotencyKey) {
  const headers = { "X-MES-Terminal": "1" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  let r;
  try {
    r = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "network", t("err.network"));
  }
  if (r.status === 204) return null;
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const err = (data && data.error) || {};
    const code = err.code || "http_" + r.status;
    const known = state.messages["err." + code];
    throw new ApiError(r.status, code, known ? t("err." + code, { message: err.message || "" }) : (err.message || t("err.http", { status: r.status })), err.field);
  }
  return data;
}

function showError(e) {
  const box = $("error");
  if (!e) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = e.message || String(e);
  box.hidden = false;
}

function handleFailure(e) {
  if (e instanceof ApiError && (e.code === "session_ended" || (e.status === 401 && e.code === "unauthorized"))) {
    state.session = null;
    show("login");
  }
  showError(e);
}

// ---------- screens ----------

function show(screen) {
  $("login-screen").hidden = screen !== "login";
  $("station-screen").hidden = screen !== "station";
  $("work-screen").hidden = screen !== "work";
  const inSession = screen !== "login";
  $("btn-logout").hidden = !inSession;
  $("btn-supervisor").hidden = !inSession;
  $("btn-station").hidden = screen !== "work";
  if (screen === "login") {
    $("who").textContent = "";
    $("supervisor-panel").hidden = true;
    $("badge").value = "";
    $("badge").focus();
  }
  if (screen === "work") $("scan").focus();
}

async function login(badge) {
  badge = badge.trim();
  if (!badge) return;
  try {
    state.session = await api("POST", "/api/v1/session", { badge });
    showError(null);
    await afterLogin();
  } catch (e) {
    showError(e);
    $("badge").select();
  }
}

async function afterLogin() {
  $("who").textContent = t("who", { name: state.session.name, badge: state.session.badge });
  await loadMaster();
  if (state.station && state.master.equipment.some((e) => e.id === state.station)) {
    show("work");
    await refresh();
  } else {
    chooseStation();
  }
}

async function loadMaster() {
  for (const kind of ["equipment", "reason-codes", "materials", "inspection-plans"]) {
    const d = await api("GET", "/api/v1/master-data/" + kind);
    state.master[kind] = d.records;
  }
}

function chooseStation() {
  const list = $("stations");
  list.textContent = "";
  const units = state.master.equipment.filter((e) => e.level === "work_unit");
  if (!units.length) list.textContent = t("station.none");
  for (const u of units) {
    const b = button(u.name + " (" + u.id + ")", () => {
      state.station = u.id;
      localStorage.setItem(STATION_KEY, u.id);
      show("work");
      refresh();
    });
    b.dataset.testid = "station-" + u.id;
    list.append(b);
  }
  show("station");
  const first = list.querySelector("button");
  if (first) first.focus();
}

function button(text, onClick, cls) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

// ---------- refresh and render ----------

async function refresh() {
  if (!state.session || !state.station) return;
  try {
    state.view = await api("GET", "/api/v1/terminal?work_unit=" + encodeURIComponent(state.station));
    if (state.session.supervisor) {
      state.session = await api("GET", "/api/v1/session");
    }
    render();
    if (!$("error").dataset.sticky) showError(null);
  } catch (e) {
    if (e.code === "network") renderUnreachable();
    handleFailure(e);
  } finally {
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
  }
}

function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleTimeString(state.lang === "de" ? "de-DE" : "en-GB");
}

function fmtDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h + ":" + String(m).padStart(2, "0") + ":" + String(sec).padStart(2, "0");
}

function renderSync(sync) {
  const el = $("sync");
  const pending = sync.pending_events + sync.pending_changes;
  let text, cls;
  if (!sync.hub_configured) {
    text = t("sync.standalone", { n: pending }); cls = "standalone";
  } else if (sync.connected) {
    text = pending ? t("sync.online_pending", { n: pending }) : t("sync.online");
    cls = "online";
  } else {
    text = t("sync.offline", { n: pending }); cls = "offline";
  }
  text += " · " + t("sync.last", { time: sync.last_sync_at ? fmtTime(sync.last_sync_at) : t("sync.never") });
  el.textContent = text;
  el.className = cls;
  el.dataset.pending = String(pending);
  el.dataset.state = cls;
}

function renderUnreachable() {
  const el = $("sync");
  el.textContent = t("sync.unreachable");
  el.className = "unreachable";
  el.dataset.state = "unreachable";
}

function stateClass(s) {
  if (!s) return "";
  if (s.state === "down") return "abnormal";
  if (s.state === "idle" || s.state === "setup" || s.state === "unknown") return "attention";
  return "";
}

function render() {
  const v = state.view;
  if (!v) return;
  renderSync(v.sync);
  $("station").textContent = v.work_unit.name + " · " + v.work_unit.id;
  // Machine state: grey when running or in a planned stop, coloured only when abnormal.
  const ms = $("machine-state");
  const s = v.equipment_state;
  ms.textContent = s ? t("state." + s.state) + (s.reason_name ? " – " + s.reason_name : "") : t("state.none");
  ms.className = "state " + stateClass(s);
  // A connector that reads this machine is not up: counts and states are not arriving.
  const down = (v.machine_links || []).filter((l) => l.link !== "up" && l.link !== "disabled");
  // The active order could not be written to the machine (its id, material and quantity).
  const failed = (v.machine_links || []).filter((l) => l.last_write && !l.last_write.ok && v.active && l.last_write.work_order === v.active.id);
  const ml = $("machine-link");
  const msgs = [];
  if (down.length) msgs.push(t("machine.link_down", { connector: down.map((l) => l.connector).join(", ") }));
  if (failed.length) msgs.push(t("machine.write_failed", { error: failed.map((l) => l.last_write.error).join("; ") }));
  ml.hidden = msgs.length === 0;
  ml.textContent = msgs.join(" · ");
  ml.dataset.down = String(down.length);
  ml.dataset.writeFailed = String(failed.length);
  ms.dataset.state = s ? s.state : "";
  ms.dataset.reason = s && s.reason ? s.reason : "";
  $("machine-since").textContent = s ? t("state.since", { time: fmtTime(s.since) }) : "";
  $("btn-running").hidden = !!s && s.state === "running";
  // Open conflicts with HQ wait for a supervisor: the button says so to everyone.
  const sup = $("btn-supervisor");
  sup.textContent = v.open_conflicts > 0 ? t("supervisor.button_conflicts", { n: v.open_conflicts }) : t("supervisor.button");
  sup.classList.toggle("attention", v.open_conflicts > 0);
  sup.dataset.conflicts = String(v.open_conflicts);
  $("shift").textContent = v.shift ? t("shift", { name: v.shift.name, end: fmtTime(v.shift.end) }) : "";
  // The active order.
  const o = v.active;
  $("order").hidden = !o;
  $("no-order").hidden = !!o;
  if (o) {
    $("order-id").textContent = o.id;
    $("order-state").textContent = t("wo." + o.state);
    $("order-state").className = "tag" + (o.state === "interrupted" ? " attention" : "");
    $("order-state").dataset.state = o.state;
    $("order-material").textContent = (o.material_name || "") + " (" + o.material + ")";
    $("order-target").textContent = String(o.planned_quantity);
    $("order-good").textContent = String(o.good);
    $("order-scrap").textContent = String(o.scrap);
    $("order-progress").style.width = Math.min(100, (100 * o.good) / Math.max(1, o.planned_quantity)) + "%";
    $("order-progress").dataset.percent = String(Math.round((100 * o.good) / Math.max(1, o.planned_quantity)));
    $("btn-pause").hidden = o.state !== "running";
    $("btn-resume").hidden = o.state !== "interrupted";
    $("btn-record").disabled = o.state !== "running";
  }
  tick();
  // The queue.
  // Lists are redrawn only when they changed, so a finger (or the focus) on a button is not
  // pulled from under it by the refresh.
  const q = $("queue");
  const queueSig = JSON.stringify([state.lang, !!o, v.queue.map((w) => [w.id, w.planned_quantity, w.due])]);
  if (q.dataset.sig !== queueSig) renderQueue(q, v, o, queueSig);
  renderSupervisor();
}

function renderQueue(q, v, o, sig) {
  q.dataset.sig = sig;
  q.textContent = "";
  $("queue-empty").hidden = v.queue.length > 0;
  for (const w of v.queue) {
    const li = document.createElement("li");
    li.dataset.testid = "queue-" + w.id;
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = w.id;
    const small = document.createElement("small");
    small.textContent = (w.material_name || w.material) + " · " + w.planned_quantity + (w.due ? " · " + t("queue.due", { time: new Date(w.due).toLocaleString(state.lang === "de" ? "de-DE" : "en-GB") }) : "");
    what.append(small);
    const start = button(t("queue.start"), () => startOrder(w.id));
    start.dataset.testid = "start-" + w.id;
    start.disabled = !!o;
    li.append(what, start);
    q.append(li);
  }
}

function tick() {
  const o = state.view && state.view.active;
  const el = $("order-timer");
  const now = new Date();
  $("clock").textContent = now.toLocaleTimeString(state.lang === "de" ? "de-DE" : "en-GB");
  if (!o || !o.actual_start) { el.textContent = "–"; return; }
  el.textContent = fmtDuration(now - new Date(o.actual_start));
}

// ---------- actions ----------

async function act(name, fn) {
  // One request per button at a time: a double tap while the first is on its way is ignored,
  // and the idempotency key makes a resend after a lost answer harmless.
  if (state.keys["busy:" + name]) return;
  state.keys["busy:" + name] = true;
  try {
    await fn(keyFor(name));
    renewKey(name);
    showError(null);
  } catch (e) {
    handleFailure(e);
  } finally {
    delete state.keys["busy:" + name];
    await refresh();
  }
}

function startOrder(id) {
  return act("start:" + id, (key) => api("POST", "/api/v1/work-orders/" + encodeURIComponent(id) + "/start", { work_unit: state.station }, key));
}

function orderAction(action) {
  const o = state.view && state.view.active;
  if (!o) return;
  if (action === "complete") {
    // Completing ends the order for good: asked once more, in a dialog a glove can answer.
    openDialog(t("order.complete"), (body) => {
      body.textContent = t("order.confirm_complete", { id: o.id, good: o.good, target: o.planned_quantity });
      return {
        okLabel: t("order.complete"),
        submit: (key) => api("POST", "/api/v1/work-orders/" + encodeURIComponent(o.id) + "/complete", undefined, key),
      };
    });
    return;
  }
  return act(action + ":" + o.id, (key) => api("POST", "/api/v1/work-orders/" + encodeURIComponent(o.id) + "/" + action, undefined, key));
}

function postEvent(event, key) {
  event.event_id = event.event_id || uuid7();
  return api("POST", "/api/v1/events", event, key);
}

function setMachine(stateName, reason) {
  const body = { type: "equipment_state", equipment: state.station, state: stateName };
  if (reason) body.reason = reason;
  return body;
}

// ---------- dialogs ----------

/**
 * Opens a dialog. `build(body)` fills it and returns {submit, okLabel}; `submit(key, eventId)`
 * sends the request with the key and event id fixed at opening, so pressing OK twice (or a
 * retry after an error) cannot store two events.
 */
function openDialog(title, build) {
  const body = $("dialog-body");
  body.textContent = "";
  $("dialog-title").textContent = title;
  $("dialog-error").hidden = true;
  const spec = build(body);
  state.dialog = { submit: spec.submit, key: "term-" + uuid7(), eventId: uuid7(), busy: false };
  $("dialog-ok").textContent = spec.okLabel || t("ok");
  $("dialog-ok").hidden = !spec.submit;
  $("dialog-ok").disabled = false;
  $("overlay").hidden = false;
  const first = body.querySelector("input, select, button");
  (first || $("dialog-ok")).focus();
}

function closeDialog() {
  state.dialog = null;
  $("overlay").hidden = true;
  if (!$("work-screen").hidden) $("scan").focus();
}

async function submitDialog() {
  const d = state.dialog;
  if (!d || !d.submit || d.busy) return;
  d.busy = true;
  $("dialog-ok").disabled = true;
  try {
    await d.submit(d.key, d.eventId);
    closeDialog();
    showError(null);
    await refresh();
  } catch (e) {
    if (e.code === "session_ended") { closeDialog(); handleFailure(e); return; }
    const box = $("dialog-error");
    box.textContent = e.message;
    box.hidden = false;
  } finally {
    d.busy = false;
    $("dialog-ok").disabled = false;
  }
}

/** A number field with an on-screen pad; typing works too. */
function numberField(parent, label, testid, initial, opts) {
  const wrap = document.createElement("label");
  wrap.className = "field";
  const span = document.createElement("span");
  span.textContent = label;
  const input = document.createElement("input");
  input.inputMode = opts && opts.decimal ? "decimal" : "numeric";
  input.autocomplete = "off";
  input.value = initial === undefined ? "" : String(initial);
  input.dataset.testid = testid;
  input.maxLength = 12;
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") { ev.preventDefault(); submitDialog(); }
  });
  wrap.append(span, input);
  parent.append(wrap);
  return input;
}

function pad(parent, targetFn, decimal) {
  const p = document.createElement("div");
  p.className = "pad";
  const keys = ["7", "8", "9", "4", "5", "6", "1", "2", "3", decimal ? "." : "C", "0", "⌫"];
  for (const k of keys) {
    const b = button(k, () => {
      const input = targetFn();
      if (k === "⌫") input.value = input.value.slice(0, -1);
      else if (k === "C") input.value = "";
      else if (input.value.length < 12) input.value += k;
      input.dispatchEvent(new Event("input"));
    });
    b.tabIndex = -1; // keyboard users type; the pad is for fingers
    b.dataset.testid = "pad-" + (k === "⌫" ? "back" : k === "." ? "dot" : k);
    p.append(b);
  }
  parent.append(p);
}

function intValue(input, name) {
  const s = input.value.trim();
  if (s === "") return 0;
  if (!/^\d+$/.test(s)) throw new ApiError(0, "input", t("err.not_a_number", { field: name }));
  return Number(s);
}

function picks(parent, items, selected, onPick, testprefix) {
  const box = document.createElement("div");
  box.className = "picks";
  for (const it of items) {
    const b = button(it.label, () => {
      for (const o of box.querySelectorAll("button")) o.setAttribute("aria-pressed", "false");
      b.setAttribute("aria-pressed", "true");
      onPick(it.value);
    });
    b.setAttribute("aria-pressed", String(it.value === selected));
    b.dataset.testid = testprefix + it.value;
    box.append(b);
  }
  parent.append(box);
  return box;
}

function recordDialog() {
  const o = state.view.active;
  if (!o) return;
  openDialog(t("record.title", { id: o.id }), (body) => {
    const fields = document.createElement("div");
    fields.className = "fields";
    body.append(fields);
    const good = numberField(fields, t("record.good"), "good", "");
    const scrap = numberField(fields, t("record.scrap"), "scrap", "");
    let active = good;
    for (const f of [good, scrap]) f.addEventListener("focus", () => {
      active = f;
      good.classList.toggle("active", f === good);
      scrap.classList.toggle("active", f === scrap);
    });
    good.classList.add("active");
    pad(body, () => active);
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = t("record.reason");
    body.append(label);
    let reason = null;
    const reasons = state.master["reason-codes"].filter((r) => r.loss_category === "quality");
    picks(body, reasons.map((r) => ({ label: r.name, value: r.code })), null, (v) => { reason = v; }, "scrap-reason-");
    return {
      okLabel: t("record.submit"),
      submit: (key, eventId) => {
        const g = intValue(good, t("record.good"));
        const s = intValue(scrap, t("record.scrap"));
        if (g + s === 0) throw new ApiError(0, "input", t("err.nothing_to_record"));
        if (s > 0 && !reason) throw new ApiError(0, "input", t("err.scrap_reason"));
        const ev = { type: "production_count", equipment: state.station, work_order: o.id, good: g, scrap: s, event_id: eventId };
        if (s > 0) ev.scrap_reason = reason;
        return postEvent(ev, key);
      },
    };
  });
}

function downtimeDialog() {
  openDialog(t("downtime.title"), (body) => {
    const reasons = state.master["reason-codes"].filter((r) => r.loss_category !== "quality");
    const top = reasons.filter((r) => !r.parent);
    const hint = document.createElement("div");
    hint.className = "label";
    hint.textContent = t("downtime.pick_group");
    body.append(hint);
    const leaves = document.createElement("div");
    const pickLeaf = (r) => {
      const stateName = r.loss_category === "planned" ? "planned_stop" : r.loss_category === "changeover" ? "setup" : "down";
      state.dialog.submit = (key, eventId) => postEvent(Object.assign(setMachine(stateName, r.code), { event_id: eventId }), key);
      submitDialog();
    };
    picks(body, top.map((r) => ({ label: r.name, value: r.code })), null, (code) => {
      leaves.textContent = "";
      const children = reasons.filter((r) => r.parent === code);
      const group = reasons.find((r) => r.code === code);
      if (!children.length) { pickLeaf(group); return; }
      const h = document.createElement("div");
      h.className = "label";
      h.textContent = t("downtime.pick_reason", { group: group.name });
      leaves.append(h);
      picks(leaves, children.map((r) => ({ label: r.name, value: r.code })), null, (c) => pickLeaf(reasons.find((r) => r.code === c)), "reason-");
      const firstLeaf = leaves.querySelector("button");
      if (firstLeaf) firstLeaf.focus();
    }, "reason-group-");
    body.append(leaves);
    return { submit: null };
  });
}

function qualityDialog() {
  const o = state.view.active;
  if (!o) return;
  const plans = state.master["inspection-plans"].filter((p) => p.material === o.material);
  openDialog(t("quality.title", { material: o.material }), (body) => {
    if (!plans.length) {
      body.textContent = t("quality.no_plan");
      return { submit: null };
    }
    let plan = plans[0];
    const limits = document.createElement("div");
    limits.className = "limits";
    limits.dataset.testid = "quality-limits";
    const verdict = document.createElement("div");
    verdict.dataset.testid = "quality-verdict";
    const showLimits = () => {
      limits.textContent = t("quality.limits", {
        lower: plan.lower_limit ?? "–", upper: plan.upper_limit ?? "–", unit: plan.unit,
      });
    };
    picks(body, plans.map((p) => ({ label: p.characteristic + " (" + p.unit + ")", value: p.characteristic })), plan.characteristic, (c) => {
      plan = plans.find((p) => p.characteristic === c); showLimits(); judge();
    }, "characteristic-");
    body.append(limits);
    const value = numberField(body, t("quality.value"), "quality-value", "", { decimal: true });
    const judge = () => {
      const v = Number(value.value.replace(",", "."));
      if (value.value.trim() === "" || !Number.isFinite(v)) { verdict.textContent = ""; verdict.className = ""; return; }
      const pass = (plan.lower_limit == null || v >= plan.lower_limit) && (plan.upper_limit == null || v <= plan.upper_limit);
      verdict.textContent = pass ? t("quality.pass") : t("quality.fail");
      verdict.className = "verdict " + (pass ? "pass" : "fail");
      verdict.dataset.pass = String(pass);
    };
    value.addEventListener("input", judge);
    pad(body, () => value, true);
    body.append(verdict);
    showLimits();
    return {
      okLabel: t("quality.submit"),
      submit: (key, eventId) => {
        const v = Number(value.value.replace(",", "."));
        if (value.value.trim() === "" || !Number.isFinite(v)) throw new ApiError(0, "input", t("err.not_a_number", { field: t("quality.value") }));
        const ev = { type: "quality_sample", characteristic: plan.characteristic, value: v, equipment: state.station, work_order: o.id, event_id: eventId };
        if (plan.lower_limit != null) ev.lower_limit = plan.lower_limit;
        if (plan.upper_limit != null) ev.upper_limit = plan.upper_limit;
        return postEvent(ev, key);
      },
    };
  });
}

function lotDialog(scanned) {
  const o = state.view.active;
  if (!o) return;
  openDialog(t("lot.title"), (body) => {
    let direction = "material_consumed";
    picks(body, [
      { label: t("lot.consumed"), value: "material_consumed" },
      { label: t("lot.produced"), value: "material_produced" },
    ], direction, (d) => {
      direction = d;
      if (d === "material_produced") material.value = o.material;
    }, "lot-");
    const lotWrap = document.createElement("label");
    lotWrap.className = "field";
    const lotLabel = document.createElement("span");
    lotLabel.textContent = t("lot.lot");
    const lot = document.createElement("input");
    lot.dataset.testid = "lot-id";
    lot.autocomplete = "off";
    lot.maxLength = 64;
    lot.value = scanned || "";
    lotWrap.append(lotLabel, lot);
    body.append(lotWrap);
    const matWrap = document.createElement("label");
    matWrap.className = "field";
    const matLabel = document.createElement("span");
    matLabel.textContent = t("lot.material");
    const material = document.createElement("select");
    material.dataset.testid = "lot-material";
    for (const m of state.master.materials) {
      const opt = document.createElement("option");
      opt.value = m.id; opt.textContent = m.name + " (" + m.id + ")";
      material.append(opt);
    }
    const other = state.master.materials.find((m) => m.id !== o.material);
    material.value = other ? other.id : o.material;
    matWrap.append(matLabel, material);
    body.append(matWrap);
    const qty = numberField(body, t("lot.quantity"), "lot-quantity", "", { decimal: true });
    pad(body, () => qty, true);
    // A scanner ends the lot code with Enter: go on to the quantity.
    lot.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") { ev.preventDefault(); qty.focus(); }
    });
    if (scanned) setTimeout(() => qty.focus(), 0);
    return {
      okLabel: t("lot.submit"),
      submit: (key, eventId) => {
        const q = Number(qty.value.replace(",", "."));
        if (!lot.value.trim()) throw new ApiError(0, "input", t("err.lot_missing"));
        if (!(q > 0)) throw new ApiError(0, "input", t("err.not_a_number", { field: t("lot.quantity") }));
        return postEvent({
          type: direction, lot: lot.value.trim(), material: material.value, quantity: q,
          work_order: o.id, equipment: state.station, event_id: eventId,
        }, key);
      },
    };
  });
}

function supervisorDialog() {
  openDialog(t("supervisor.title"), (body) => {
    const badgeWrap = document.createElement("label");
    badgeWrap.className = "field";
    const bl = document.createElement("span");
    bl.textContent = t("supervisor.badge");
    const badge = document.createElement("input");
    badge.dataset.testid = "supervisor-badge";
    badge.autocomplete = "off";
    badge.maxLength = 64;
    badgeWrap.append(bl, badge);
    body.append(badgeWrap);
    const pinWrap = document.createElement("label");
    pinWrap.className = "field";
    const pl = document.createElement("span");
    pl.textContent = t("supervisor.pin");
    const pin = document.createElement("input");
    pin.type = "password";
    pin.inputMode = "numeric";
    pin.autocomplete = "off";
    pin.dataset.testid = "supervisor-pin";
    pin.maxLength = 12;
    pin.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); submitDialog(); } });
    pinWrap.append(pl, pin);
    body.append(pinWrap);
    badge.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); pin.focus(); } });
    pad(body, () => pin);
    return {
      okLabel: t("supervisor.submit"),
      submit: async () => {
        state.session = await api("POST", "/api/v1/session/supervisor", { badge: badge.value.trim(), pin: pin.value });
      },
    };
  });
}

async function renderSupervisor() {
  const sup = state.session && state.session.supervisor;
  const panel = $("supervisor-panel");
  panel.hidden = !sup;
  if (!sup) return;
  $("supervisor-name").textContent = t("supervisor.by", { name: sup.name, minutes: Math.ceil(sup.seconds_left / 60) });
  const o = state.view && state.view.active;
  const list = $("corrections");
  const conflictsList = $("conflicts");
  try {
    const [recent, conflicts] = await Promise.all([
      o ? api("GET", "/api/v1/events?type=production_count&limit=10&work_order=" + encodeURIComponent(o.id)) : { events: [] },
      api("GET", "/api/v1/conflicts"),
    ]);
    const sig = JSON.stringify([state.lang, recent.events.map((e) => [e.event_id, e.in_force]), conflicts.conflicts]);
    if (panel.dataset.sig === sig) return;
    panel.dataset.sig = sig;
    list.textContent = "";
    if (!recent.events.length) list.textContent = t("corrections.none");
    for (const ev of recent.events) {
      const f = ev.in_force;
      const li = document.createElement("li");
      li.dataset.testid = "count-" + ev.event_id;
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = t("corrections.line", { good: f.good, scrap: f.scrap });
      const small = document.createElement("small");
      small.textContent = fmtTime(ev.occurred_at) + (f.corrected_by ? " · " + t("corrections.corrected") : "");
      what.append(small);
      const b = button(t("corrections.correct"), () => correctionDialog(ev));
      b.dataset.testid = "correct-" + ev.event_id;
      li.append(what, b);
      list.append(li);
    }
    conflictsList.textContent = "";
    if (!conflicts.conflicts.length) conflictsList.textContent = t("conflicts.none");
    for (const c of conflicts.conflicts) {
      const li = document.createElement("li");
      li.dataset.testid = "conflict-" + c.id;
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = c.record_id + ": " + c.description;
      li.append(what);
      const m = /both (\w+) and (\w+)/.exec(c.description);
      for (const s of m ? [m[1], m[2]] : []) {
        const b = button(t("conflicts.keep", { state: t("wo." + s) }), () =>
          act("resolve:" + c.id + ":" + s, (key) => api("POST", "/api/v1/conflicts/" + c.id + "/resolve", { state: s }, key)));
        b.dataset.testid = "resolve-" + c.id + "-" + s;
        li.append(b);
      }
      conflictsList.append(li);
    }
  } catch (e) {
    handleFailure(e);
  }
}

function correctionDialog(ev) {
  const f = ev.in_force;
  const p = ev.body.production_count;
  openDialog(t("correction.title"), (body) => {
    const fields = document.createElement("div");
    fields.className = "fields";
    body.append(fields);
    const good = numberField(fields, t("record.good"), "correct-good", f.good);
    const scrap = numberField(fields, t("record.scrap"), "correct-scrap", f.scrap);
    let active = good;
    for (const x of [good, scrap]) x.addEventListener("focus", () => { active = x; });
    pad(body, () => active);
    let reason = p.scrap_reason || null;
    const reasons = state.master["reason-codes"].filter((r) => r.loss_category === "quality");
    picks(body, reasons.map((r) => ({ label: r.name, value: r.code })), reason, (v) => { reason = v; }, "correct-reason-");
    return {
      okLabel: t("correction.submit"),
      submit: (key, eventId) => {
        const g = intValue(good, t("record.good"));
        const s = intValue(scrap, t("record.scrap"));
        const replacement = { type: "production_count", equipment: p.equipment, good: g, scrap: s };
        if (p.work_order) replacement.work_order = p.work_order;
        if (s > 0) {
          if (!reason) throw new ApiError(0, "input", t("err.scrap_reason"));
          replacement.scrap_reason = reason;
        }
        // A count of zero is no count: the correction then voids it.
        const ev2 = { type: "correction", corrects: ev.event_id, note: t("correction.note"), event_id: eventId };
        if (g + s > 0) ev2.replacement = replacement;
        return postEvent(ev2, key);
      },
    };
  });
}

// ---------- the universal scan field ----------

function scanned(code) {
  code = code.trim();
  if (!code) return;
  const v = state.view;
  if (!v) return;
  const queued = v.queue.find((w) => w.id === code);
  if (queued && !v.active) { startOrder(code); return; }
  if (v.active && code === v.active.id) { showError(new Error(t("scan.already_active", { id: code }))); return; }
  if (v.active) { lotDialog(code); return; }
  showError(new Error(t("scan.unknown", { code })));
}

// ---------- wiring ----------

function wire() {
  $("login-form").addEventListener("submit", (ev) => { ev.preventDefault(); login($("badge").value); });
  $("scan-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const code = $("scan").value;
    $("scan").value = "";
    scanned(code);
  });
  $("btn-logout").addEventListener("click", async () => {
    try { await api("DELETE", "/api/v1/session"); } catch (e) { /* ended anyway */ }
    state.session = null; state.view = null;
    showError(null);
    show("login");
    $("sync").textContent = t("sync.before_login");
    $("sync").className = "";
  });
  $("btn-station").addEventListener("click", chooseStation);
  $("btn-supervisor").addEventListener("click", supervisorDialog);
  $("btn-supervisor-done").addEventListener("click", async () => {
    try { state.session = await api("DELETE", "/api/v1/session/supervisor"); } catch (e) { handleFailure(e); }
    render();
  });
  $("btn-record").addEventListener("click", recordDialog);
  $("btn-quality").addEventListener("click", qualityDialog);
  $("btn-lot").addEventListener("click", () => lotDialog(""));
  $("btn-downtime").addEventListener("click", downtimeDialog);
  $("btn-running").addEventListener("click", () => act("running", (key) => postEvent(setMachine("running"), key)));
  $("btn-pause").addEventListener("click", () => orderAction("pause"));
  $("btn-resume").addEventListener("click", () => orderAction("resume"));
  $("btn-complete").addEventListener("click", () => orderAction("complete"));
  $("dialog-ok").addEventListener("click", submitDialog);
  $("dialog-cancel").addEventListener("click", closeDialog);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && state.dialog) closeDialog();
  });
  for (const b of document.querySelectorAll("nav [data-lang]")) {
    b.addEventListener("click", () => loadLanguage(b.dataset.lang).catch(showError));
  }
}

async function main() {
  wire();
  // A terminal can be bound to its station by its URL: http://edge:8080/#station=PRESS-01
  const m = /station=([^&]+)/.exec(location.hash);
  if (m) localStorage.setItem(STATION_KEY, decodeURIComponent(m[1]));
  state.station = localStorage.getItem(STATION_KEY);
  const saved = localStorage.getItem(SESSION_KEY_LANG);
  const lang = saved || ((navigator.language || "en").toLowerCase().startsWith("de") ? "de" : "en");
  try { await loadLanguage(lang); } catch (e) { await loadLanguage("en"); }
  try {
    state.session = await api("GET", "/api/v1/session");
    await afterLogin();
  } catch (e) {
    show("login");
    if (e.code === "network") { renderUnreachable(); showError(e); }
    else $("sync").textContent = t("sync.before_login");
  }
  document.body.dataset.ready = "1";
  setInterval(refresh, REFRESH_MS);
  setInterval(tick, 1000);
}

document.addEventListener("DOMContentLoaded", main);
