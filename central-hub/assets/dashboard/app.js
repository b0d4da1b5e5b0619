// HQ dashboard: plain JavaScript and SVG, served from the hub binary (no CDN, no build step).
// The token comes from the URL fragment (#token=...) or the form, and stays in this browser.
"use strict";

const REFRESH_MS = 30000;
const RANGES = { "24h": 24 * 3600e3, "7d": 7 * 24 * 3600e3, "30d": 30 * 24 * 3600e3 };
const SVG = "http://www.w3.org/2000/svg";

const frag = new URLSearchParams(location.hash.replace(/^#/, ""));
if (frag.get("token")) localStorage.setItem("mes.token", frag.get("token"));
let token = localStorage.getItem("mes.token") || "";
let range = frag.get("range") || localStorage.getItem("mes.range") || "7d";
const fixedFrom = frag.get("from");
const fixedTo = frag.get("to");

const $ = (id) => document.getElementById(id);
const pct = (x) => (x === null || x === undefined ? "–" : (x * 100).toFixed(1) + " %");
const num = (x) => (x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US"));
const minutes = (s) => (s / 60).toFixed(s < 600 ? 1 : 0) + " min";

function el(tag, attrs, ...children) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function showError(message) {
  const b = $("banner");
  if (message) { b.textContent = message; b.hidden = false; } else { b.textContent = ""; b.hidden = true; }
}

class ApiError extends Error {}

async function api(path) {
  let r;
  try {
    r = await fetch(path, { headers: { Authorization: "Bearer " + token, Accept: "application/json" } });
  } catch (e) {
    throw new ApiError("The hub does not answer (" + e.message + "). Figures below are from the last successful refresh.");
  }
  if (r.ok) return r.json();
  let detail = "";
  try { detail = (await r.json()).error.message; } catch (_) { /* not JSON */ }
  if (r.status === 401) {
    localStorage.removeItem("mes.token");
    $("login").hidden = false;
    throw new ApiError("The hub refused the token (401): " + detail + ". Enter a valid token.");
  }
  if (r.status === 429) {
    throw new ApiError("Too many requests with this token (429); retrying in " + (r.headers.get("Retry-After") || "a few") + " s.");
  }
  if (r.status === 503) throw new ApiError("The hub cannot reach its reporting database (503): " + detail);
  throw new ApiError("The hub answered " + r.status + " for " + path.split("?")[0] + ": " + detail);
}

function rangeQuery() {
  if (fixedFrom && fixedTo) return "from=" + encodeURIComponent(fixedFrom) + "&to=" + encodeURIComponent(fixedTo);
  const to = new Date();
  const from = new Date(to.getTime() - RANGES[range]);
  return "from=" + from.toISOString().replace(/\.\d+Z$/, "Z") + "&to=" + to.toISOString().replace(/\.\d+Z$/, "Z");
}

function empty(container, text) {
  container.replaceChildren(el("p", { class: "empty" }, text));
}

function renderOee(report) {
  const box = $("oee");
  const rows = report.rows.filter((r) => r.planned_production_seconds > 0);
  if (!rows.length) return empty(box, "No planned production time in this range.");
  const rowH = 46, labelW = 190, width = 1100, barW = width - labelW - 330;
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${rows.length * rowH + 30}`, role: "img", "aria-label": "OEE by site" });
  rows.forEach((r, i) => {
    const y = i * rowH + 8;
    const w = Math.max(1, Math.min(1, r.oee || 0) * barW);
    const low = (r.oee || 0) < 0.5;
    svg.append(
      el("svg:text", { x: 0, y: y + 22 }, r.site),
      el("svg:rect", { x: labelW, y, width: barW, height: 30, class: "bar2", opacity: 0.35 }),
      el("svg:rect", { x: labelW, y, width: w, height: 30, class: low ? "bar low" : "bar", "data-testid": "oee-bar-" + r.site }),
      el("svg:text", { x: labelW + barW + 12, y: y + 14, "data-testid": "oee-" + r.site }, "OEE " + pct(r.oee)),
      el("svg:text", { x: labelW + barW + 12, y: y + 30, class: "muted" },
        "A " + pct(r.availability) + " · P " + pct(r.performance) + " · Q " + pct(r.quality)),
    );
  });
  const t = report.total;
  svg.append(el("svg:text", { x: 0, y: rows.length * rowH + 24, class: "muted", "data-testid": "oee-total" },
    "All selected sites: OEE " + pct(t.oee) + " (from summed components, not an average)"));
  box.replaceChildren(svg);
}

function renderPareto(report) {
  const box = $("pareto");
  const rows = report.rows.slice(0, 10);
  if (!rows.length) return empty(box, "No unplanned stops in this range.");
  const width = 560, height = 300, left = 50, bottom = 80, top = 20;
  const plotW = width - left - 50, plotH = height - top - bottom;
  const max = Math.max(...rows.map((r) => r.seconds));
  const step = plotW / rows.length;
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Downtime Pareto" });
  svg.append(el("svg:line", { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: "axis" }));
  let points = "";
  rows.forEach((r, i) => {
    const h = max > 0 ? (r.seconds / max) * plotH : 0;
    const x = left + i * step + step * 0.15;
    const reason = r.reason || "unassigned";
    svg.append(
      el("svg:rect", { x, y: top + plotH - h, width: step * 0.7, height: h, class: "bar", "data-testid": "pareto-bar" }),
      h > 24
        ? el("svg:text", { x: x + step * 0.35, y: top + plotH - h + 18, "text-anchor": "middle", class: "inbar" }, minutes(r.seconds))
        : el("svg:text", { x: x + step * 0.35, y: top + plotH - h - 4, "text-anchor": "middle" }, minutes(r.seconds)),
      el("svg:text", { x: x + step * 0.35, y: top + plotH + 18, "text-anchor": "middle", "data-testid": "pareto-reason" }, reason),
      el("svg:text", { x: x + step * 0.35, y: top + plotH + 34, "text-anchor": "middle", class: "muted" },
        r.stops + " stop" + (r.stops === 1 ? "" : "s")),
    );
    const cy = top + plotH - (r.cumulative_share || 0) * plotH;
    points += `${x + step * 0.35},${cy} `;
    svg.append(el("svg:circle", { cx: x + step * 0.35, cy, r: 3.5, class: "dot" }),
      el("svg:text", { x: x + step * 0.35 + 8, y: Math.max(top + 10, cy - 8), class: "muted" }, pct(r.cumulative_share)));
  });
  svg.append(el("svg:polyline", { points: points.trim(), class: "cum" }));
  box.replaceChildren(svg);
}

function renderTrend(report) {
  const box = $("trend");
  const days = [...new Set(report.rows.map((r) => r.day))].sort();
  const sites = [...new Set(report.rows.map((r) => r.site))].sort();
  if (!days.length) return empty(box, "No production in this range.");
  const width = 560, height = 300, left = 70, bottom = 50, top = 20;
  const plotW = width - left - 20, plotH = height - top - bottom;
  const value = (s, d) => { const r = report.rows.find((x) => x.site === s && x.day === d); return r ? r.good : 0; };
  const max = Math.max(1, ...report.rows.map((r) => r.good));
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Production trend" });
  svg.append(el("svg:line", { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: "axis" }),
    el("svg:text", { x: left - 8, y: top + 10, "text-anchor": "end", class: "muted" }, num(max)));
  const groupW = plotW / days.length;
  const barW = (groupW * 0.8) / sites.length;
  const shades = ["#5f6b75", "#8a949c", "#b3b9be", "#3f4a54", "#9aa3aa", "#70808c"];
  days.forEach((d, i) => {
    sites.forEach((s, j) => {
      const v = value(s, d);
      const h = (v / max) * plotH;
      const x = left + i * groupW + groupW * 0.1 + j * barW;
      svg.append(el("svg:rect", { x, y: top + plotH - h, width: Math.max(1, barW - 2), height: h,
        fill: shades[j % shades.length], "data-testid": `trend-${s}-${d}` }, el("svg:title", {}, `${s} ${d}: ${num(v)} good`)));
    });
    if (days.length <= 14 || i % Math.ceil(days.length / 10) === 0)
      svg.append(el("svg:text", { x: left + i * groupW + groupW / 2, y: top + plotH + 18, "text-anchor": "middle", class: "muted" }, d.slice(5)));
  });
  sites.forEach((s, j) => svg.append(
    el("svg:rect", { x: left + j * 130, y: height - 16, width: 12, height: 12, fill: shades[j % shades.length] }),
    el("svg:text", { x: left + j * 130 + 16, y: height - 6 }, s)));
  box.replaceChildren(svg);
}

function renderRisk(list) {
  const box = $("risk");
  const risky = list.work_orders.filter((o) => o.at_risk);
  if (!risky.length) return empty(box, "No open work order is overdue or due within 24 h with quantity left.");
  const now = Date.now();
  const table = el("table", {}, el("thead", {}, el("tr", {}, ...["Order", "Site", "Material", "Due", "Left"].map((h, i) => el("th", { class: i === 4 ? "num" : "" }, h)))));
  const body = el("tbody");
  for (const o of risky.slice(0, 12)) {
    const due = o.due ? new Date(o.due) : null;
    const late = due && due.getTime() < now;
    body.append(el("tr", { "data-testid": "risk-" + o.id },
      el("td", {}, o.id), el("td", {}, o.site), el("td", {}, o.material),
      el("td", {}, el("span", { class: late ? "late" : "soon" }, due ? (late ? "overdue " : "") + due.toISOString().slice(0, 16).replace("T", " ") : "–")),
      el("td", { class: "num" }, num(o.remaining))));
  }
  table.append(body);
  box.replaceChildren(table);
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function renderSync(list) {
  const box = $("sync");
  if (!list.sites.length) return empty(box, "No sites registered (central-hub site add).");
  const table = el("table", {}, el("thead", {}, el("tr", {},
    ...["Site", "Status", "Last seen", "Backlog", "Lag"].map((h, i) => el("th", { class: i >= 3 ? "num" : "" }, h)))));
  const body = el("tbody");
  for (const s of list.sites) {
    let status = "ok", text = "online";
    if (s.revoked) { status = "offline"; text = "revoked"; }
    else if (!s.connected) { status = "offline"; text = "offline"; }
    else if ((s.lag_seconds || 0) > 300) { status = "lagging"; text = "lagging"; }
    body.append(el("tr", { "data-testid": "sync-" + s.site_id },
      el("td", {}, s.site_id + " · " + s.name),
      el("td", {}, el("span", { class: "status " + status, "data-testid": "status-" + s.site_id }, text)),
      el("td", {}, ago(s.last_seen_at)),
      el("td", { class: "num" }, s.backlog_events === null || s.backlog_events === undefined ? "–" : num(s.backlog_events) + " events"),
      el("td", { class: "num" }, (s.lag_seconds || 0) < 1 ? "0 s" : Math.round(s.lag_seconds) + " s")));
  }
  table.append(body);
  box.replaceChildren(table);
}

let timer = null;
async function refresh() {
  if (!token) { $("login").hidden = false; return; }
  $("login").hidden = true;
  const q = rangeQuery();
  $("range-label").textContent = fixedFrom && fixedTo ? `${fixedFrom} → ${fixedTo}` : "";
  const jobs = [
    api("/api/v1/reports/oee?group_by=site&" + q).then(renderOee),
    api("/api/v1/reports/downtime-pareto?" + q).then(renderPareto),
    api("/api/v1/reports/production?group_by=site,day&" + q).then(renderTrend),
    api("/api/v1/work-orders?state=open&limit=200").then(renderRisk),
    api("/api/v1/sites").then(renderSync),
  ];
  const results = await Promise.allSettled(jobs);
  const failed = results.find((r) => r.status === "rejected");
  showError(failed ? (failed.reason instanceof ApiError ? failed.reason.message : "The page failed: " + failed.reason) : "");
  $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.dataset.loaded = failed ? "error" : "ok";
}

function schedule() {
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

document.querySelectorAll("#ranges button").forEach((b) => {
  b.setAttribute("aria-pressed", String(!(fixedFrom && fixedTo) && b.dataset.range === range));
  b.addEventListener("click", () => {
    range = b.dataset.range;
    localStorage.setItem("mes.range", range);
    document.querySelectorAll("#ranges button").forEach((o) => o.setAttribute("aria-pressed", String(o === b)));
    refresh();
  });
});
$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  localStorage.setItem("mes.token", token);
  refresh();
});
refresh();
schedule();
