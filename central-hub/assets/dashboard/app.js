// HQ dashboard: plain JavaScript and SVG, served from the hub binary (no CDN, no build step).
//
// The token comes from the URL fragment (#token=...) or the form and stays in this browser's
// localStorage; it is then taken out of the address bar so a wall screen does not show it.
// The fragment may also hold range=24h|7d|30d, site=SITE and a fixed from=...&to=... (as the
// reporting API takes them), so a screen's view is a bookmark.
"use strict";

const REFRESH_MS = 30000;
// OEE below this is drawn in the alarm colour; everything else stays grey.
const OEE_LOW = 0.6;
// A connected site whose oldest unsynced event is older than this is "lagging".
const LAG_WARN_SECONDS = 300;
const RANGES = { "24h": 24 * 3600e3, "7d": 7 * 24 * 3600e3, "30d": 30 * 24 * 3600e3 };
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const frag = new URLSearchParams(location.hash.replace(/^#/, ""));
if (frag.get("token")) localStorage.setItem("mes.token", frag.get("token"));
let token = localStorage.getItem("mes.token") || "";
let range = RANGES[frag.get("range")] ? frag.get("range") : localStorage.getItem("mes.range") || "7d";
if (!RANGES[range]) range = "7d";
let site = frag.has("site") ? frag.get("site") : localStorage.getItem("mes.site") || "";
let fixedFrom = frag.get("from");
let fixedTo = frag.get("to");
if (!(fixedFrom && fixedTo)) fixedFrom = fixedTo = null;

// Only the view stays in the address bar, never the token.
function writeFragment() {
  const f = new URLSearchParams();
  if (fixedFrom) { f.set("from", fixedFrom); f.set("to", fixedTo); } else f.set("range", range);
  if (site) f.set("site", site);
  history.replaceState(null, "", location.pathname + location.search + "#" + f.toString());
}

const pct = (x) => (x === null || x === undefined ? "–" : (x * 100).toFixed(1) + " %");
const num = (x) => (x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US"));
function duration(s) {
  if (s < 600) return (s / 60).toFixed(1) + " min";
  if (s < 3 * 3600) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
const pad = (n) => String(n).padStart(2, "0");
// Browser-local date and time; the year only when it is not this year's.
function localTime(iso) {
  const d = new Date(iso);
  const year = d.getFullYear() === new Date().getFullYear() ? "" : d.getFullYear() + "-";
  return `${year}${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}
function seconds(s) {
  if (!s || s < 1) return "0 s";
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function el(tag, attrs, ...children) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function empty(box, text) { box.replaceChildren(el("p", { class: "empty" }, text)); }

function showErrors(messages) {
  const b = $("banner");
  const unique = [...new Set(messages)];
  b.hidden = !unique.length;
  b.replaceChildren(...unique.map((m) => el("div", {}, m)));
}

class ApiError extends Error {
  constructor(message, retryAfter) { super(message); this.retryAfter = retryAfter; }
}

async function api(path) {
  let r;
  try {
    r = await fetch(path, { headers: { Authorization: "Bearer " + token, Accept: "application/json" }, cache: "no-store" });
  } catch (e) {
    throw new ApiError("The hub does not answer (" + e.message + ").");
  }
  if (r.ok) {
    try { return await r.json(); } catch (e) { throw new ApiError("The hub sent an unreadable answer for " + path.split("?")[0] + "."); }
  }
  let detail = "";
  try { detail = (await r.json()).error.message; } catch (_) { /* not JSON */ }
  const what = path.split("?")[0];
  if (r.status === 401) {
    localStorage.removeItem("mes.token");
    $("login").hidden = false;
    throw new ApiError("The hub refused the token (401): " + (detail || "unauthorized") + ". Enter a valid token.");
  }
  if (r.status === 403) throw new ApiError("This token may not see that (403): " + detail + ".");
  if (r.status === 429) {
    const after = Number(r.headers.get("Retry-After")) || 1;
    throw new ApiError("Too many requests with this token (429): the hub asks to wait " + after + " s; retrying then.", after);
  }
  if (r.status === 503) throw new ApiError("The hub cannot reach its reporting database (503): " + (detail || "unavailable") + ".");
  if (r.status === 400) throw new ApiError("The hub rejected the query for " + what + " (400): " + detail + ".");
  throw new ApiError("The hub answered " + r.status + " for " + what + (detail ? ": " + detail : "") + ".");
}

// Query parameters of the reports. "7 days" is the API's default range: every screen then
// shares one cache entry on the hub, served stale-while-revalidate. The other ranges start at
// a whole hour (reports resolve site-local hours anyway), so their cache key changes hourly
// rather than on every request.
function rangeParams() {
  if (fixedFrom) return [["from", fixedFrom], ["to", fixedTo]];
  if (range === "7d") return [];
  const from = new Date(Math.ceil((Date.now() - RANGES[range]) / 3600e3) * 3600e3);
  return [["from", from.toISOString().replace(/\.\d+Z$/, "Z")]];
}
function query(extra) {
  const p = new URLSearchParams(extra);
  for (const [k, v] of rangeParams()) p.append(k, v);
  if (site) p.append("site", site);
  return p.toString();
}
function rangeText() {
  if (fixedFrom) return `${fixedFrom} → ${fixedTo}`;
  return { "24h": "last 24 h", "7d": "last 7 days", "30d": "last 30 days" }[range];
}

// OEE by site: one bar per site on a 0–100 % track with the threshold marked, its A, P and Q
// as small bars beneath, the figures written next to them. Beyond four sites each site gets
// one compact line (A, P and Q as text) so a wall screen still shows them all.
function renderOee(report) {
  const box = $("oee");
  const rows = report.rows.filter((r) => r.planned_production_seconds > 0);
  const idle = report.rows.filter((r) => !(r.planned_production_seconds > 0)).map((r) => r.site);
  if (!rows.length) return empty(box, "No planned production time in this range.");
  const compact = rows.length > 4;
  const width = 1000, labelW = 130, trackW = compact ? 480 : 560, rowH = compact ? 34 : 78, barH = compact ? 24 : 28, top = 6;
  const height = top + rows.length * rowH + (compact ? 34 : 30);
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "OEE by site" });
  const x0 = labelW, tx = x0 + trackW + 16;
  const components = [["A", "availability"], ["P", "performance"], ["Q", "quality"]];
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const low = r.oee !== null && r.oee < OEE_LOW;
    const w = Math.max(0, Math.min(1, r.oee || 0)) * trackW;
    svg.append(
      el("svg:text", { x: 0, y: y + barH - 6, class: compact ? "" : "big" }, r.site),
      el("svg:rect", { x: x0, y, width: trackW, height: barH, class: "track" }),
      el("svg:rect", { x: x0, y, width: w, height: barH, class: low ? "bar low" : "bar",
        "data-testid": "oee-bar-" + r.site, "data-low": String(low), "data-track": trackW },
        el("svg:title", {}, `${r.site}: ${num(r.good)} good of ${num(r.total_count)}, ${duration(r.stop_seconds)} stopped`)),
      el("svg:text", { x: tx, y: y + barH - 6, class: low ? "big low" : "big", "data-testid": "oee-" + r.site }, "OEE " + pct(r.oee)),
    );
    if (compact) {
      svg.append(el("svg:text", { x: tx + 150, y: y + barH - 7, class: "small muted" },
        ...components.flatMap(([k, f], j) => [j ? " · " : "",
          el("svg:tspan", { "data-testid": `oee-${k.toLowerCase()}-${r.site}` }, `${k} ${pct(r[f])}`)])));
      return;
    }
    const seg = trackW / 3;
    components.forEach(([k, f], j) => {
      const sx = x0 + j * seg, sy = y + 38, mini = seg - 96;
      svg.append(
        el("svg:rect", { x: sx, y: sy, width: mini, height: 12, class: "track" }),
        el("svg:rect", { x: sx, y: sy, width: Math.max(0, Math.min(1, r[f] || 0)) * mini, height: 12, class: "bar2" }),
        el("svg:text", { x: sx + mini + 8, y: sy + 11, class: "small", "data-testid": `oee-${k.toLowerCase()}-${r.site}` }, `${k} ${pct(r[f])}`),
      );
    });
    svg.append(el("svg:text", { x: tx, y: y + 49, class: "small muted" },
      `${num(r.good)} good of ${num(r.total_count)} · ${duration(r.stop_seconds)} stopped`));
  });
  // The threshold as a dashed line across every track.
  const lx = x0 + OEE_LOW * trackW;
  svg.append(el("svg:line", { x1: lx, y1: top - 4, x2: lx, y2: top + rows.length * rowH - (compact ? 8 : 40), class: "grid" }));
  const t = report.total;
  svg.append(el("svg:text", { x: 0, y: height - 8, "data-testid": "oee-total" },
    `${rows.length > 1 ? "All sites shown" : rows[0].site}: OEE ${pct(t.oee)} (A ${pct(t.availability)} · P ${pct(t.performance)} · Q ${pct(t.quality)}), from summed time and counts`));
  box.replaceChildren(svg);
  if (idle.length) box.append(el("p", { class: "more" }, "No planned production time: " + idle.join(", ")));
}

// Downtime Pareto: bars by stop time, largest first, with the cumulative share as a line.
function renderPareto(report) {
  const box = $("pareto");
  const all = report.rows;
  const rows = all.slice(0, 8);
  if (!rows.length) return empty(box, "No unplanned stops in this range.");
  const width = 470, height = 330, left = 6, right = 52, bottom = 70, top = 24;
  const plotW = width - left - right, plotH = height - top - bottom;
  const max = Math.max(...rows.map((r) => r.seconds));
  const step = plotW / rows.length;
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Downtime Pareto" });
  svg.append(
    el("svg:line", { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: "axis" }),
    el("svg:line", { x1: left + plotW, y1: top, x2: left + plotW, y2: top + plotH, class: "axis" }),
    el("svg:text", { x: left + plotW + 4, y: top + 4, class: "small muted" }, "100 %"),
    el("svg:text", { x: left + plotW + 4, y: top + plotH / 2 + 4, class: "small muted" }, "50 %"),
  );
  const points = [];
  rows.forEach((r, i) => {
    const h = max > 0 ? (r.seconds / max) * (plotH - 16) : 0;
    const bw = step * 0.64, x = left + i * step + step * 0.18, cx = x + bw / 2;
    const name = r.reason_name || r.reason || "no reason";
    const label = name.length > 16 ? name.slice(0, 15) + "…" : name;
    svg.append(
      el("svg:rect", { x, y: top + plotH - h, width: bw, height: h, class: "bar", "data-testid": "pareto-bar-" + i },
        el("svg:title", {}, `${name} (${r.reason || "no reason"}): ${duration(r.seconds)}, ${r.stops} stops, ${pct(r.share)}`)),
      // The value sits at the foot of its bar, away from the cumulative line near the top.
      el("svg:text", h > 26
        ? { x: cx, y: top + plotH - 9, "text-anchor": "middle", class: "inbar", "data-testid": "pareto-value-" + i }
        : { x: cx, y: top + plotH - h - 5, "text-anchor": "middle", "data-testid": "pareto-value-" + i }, duration(r.seconds)),
      el("svg:text", { x: cx, y: top + plotH + 18, "text-anchor": "middle", "data-testid": "pareto-reason-" + i,
        "data-reason": r.reason || "" }, label),
      el("svg:text", { x: cx, y: top + plotH + 36, "text-anchor": "middle", class: "small muted", "data-testid": "pareto-stops-" + i },
        r.stops + " stop" + (r.stops === 1 ? "" : "s")),
      el("svg:text", { x: cx, y: top + plotH + 54, "text-anchor": "middle", class: "small muted" },
        "cum. ", el("svg:tspan", { "data-testid": "pareto-cum-" + i }, pct(r.cumulative_share))),
    );
    const cy = top + plotH - (r.cumulative_share || 0) * plotH;
    points.push(`${cx},${cy}`);
    svg.append(el("svg:circle", { cx, cy, r: 4, class: "dot" }));
  });
  svg.append(el("svg:polyline", { points: points.join(" "), class: "cum" }));
  box.replaceChildren(svg);
  if (all.length > rows.length) box.append(el("p", { class: "more" }, `and ${all.length - rows.length} more reasons`));
}

// Production per day: one stacked bar per site and day, good below and scrap on top.
function renderTrend(report) {
  const box = $("trend");
  let rows = report.rows;
  // Beyond six sites the bars would be too thin to read: one series of all sites together.
  if (new Set(rows.map((r) => r.site)).size > 6) {
    const byDay = new Map();
    for (const r of rows) {
      const d = byDay.get(r.day) || { site: "all sites", day: r.day, good: 0, scrap: 0 };
      d.good += r.good; d.scrap += r.scrap;
      byDay.set(r.day, d);
    }
    rows = [...byDay.values()];
  }
  const days = [...new Set(rows.map((r) => r.day))].sort();
  const sites = [...new Set(rows.map((r) => r.site))].sort();
  if (!days.length) return empty(box, "No production in this range.");
  const width = 470, height = 330, left = 52, bottom = 58, top = 24;
  const plotW = width - left - 10, plotH = height - top - bottom;
  const at = new Map(rows.map((r) => [r.site + "|" + r.day, r]));
  const max = Math.max(1, ...rows.map((r) => r.good + r.scrap));
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Production per day" });
  svg.append(
    el("svg:line", { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: "axis" }),
    el("svg:line", { x1: left, y1: top, x2: left + plotW, y2: top, class: "grid" }),
    el("svg:text", { x: left - 6, y: top + 4, "text-anchor": "end", class: "small muted" }, num(max)),
    el("svg:text", { x: left - 6, y: top + plotH + 4, "text-anchor": "end", class: "small muted" }, "0"),
  );
  const groupW = plotW / days.length, barW = (groupW * 0.8) / sites.length;
  const shades = ["#6f7a84", "#9aa3aa", "#515c66", "#b7bdc2", "#848e97", "#5f6b75"];
  const labelled = days.length * sites.length <= 16;
  days.forEach((d, i) => {
    sites.forEach((s, j) => {
      const r = at.get(s + "|" + d) || { good: 0, scrap: 0 };
      const hg = (r.good / max) * plotH, hs = (r.scrap / max) * plotH;
      const x = left + i * groupW + groupW * 0.1 + j * barW, w = Math.max(1, barW - 3);
      svg.append(
        el("svg:rect", { x, y: top + plotH - hg, width: w, height: hg, fill: shades[j % shades.length], "data-testid": `trend-${s}-${d}` },
          el("svg:title", {}, `${s} ${d}: ${num(r.good)} good, ${num(r.scrap)} scrap`)),
        el("svg:rect", { x, y: top + plotH - hg - hs, width: w, height: hs, class: "scrap" }),
      );
      if (labelled)
        svg.append(el("svg:text", { x: x + w / 2, y: top + plotH - hg - hs - 5, "text-anchor": "middle", class: "small",
          "data-testid": `trend-label-${s}-${d}` }, num(r.good)));
    });
    if (days.length <= 10 || i % Math.ceil(days.length / 8) === 0)
      svg.append(el("svg:text", { x: left + i * groupW + groupW / 2, y: top + plotH + 18, "text-anchor": "middle", class: "small muted" }, d.slice(5)));
  });
  let lx = left;
  sites.forEach((s, j) => {
    svg.append(el("svg:rect", { x: lx, y: height - 18, width: 12, height: 12, fill: shades[j % shades.length] }),
      el("svg:text", { x: lx + 16, y: height - 8, class: "small" }, s));
    lx += 26 + s.length * 8;
  });
  svg.append(el("svg:rect", { x: lx, y: height - 18, width: 12, height: 12, class: "scrap" }),
    el("svg:text", { x: lx + 16, y: height - 8, class: "small" }, "scrap"));
  box.replaceChildren(svg);
}

function renderRisk(list) {
  const box = $("risk");
  const risky = list.work_orders.filter((o) => o.at_risk);
  if (!risky.length) return empty(box, "No open work order is overdue or due within 24 h with quantity left.");
  const now = Date.now(), shown = risky.slice(0, 9);
  const table = el("table", {}, el("thead", {}, el("tr", {},
    ...["Order", "Due", "Left"].map((h, i) => el("th", { class: i === 2 ? "num" : null }, h)))));
  const body = el("tbody");
  for (const o of shown) {
    const due = o.due ? new Date(o.due) : null;
    const late = due && due.getTime() < now;
    body.append(el("tr", { "data-testid": "risk-" + o.id },
      el("td", {}, el("span", { class: "id" }, o.id), el("br"),
        el("small", {}, [o.material, o.state.replace(/_/g, " ")].join(" · "))),
      el("td", {}, el("span", { class: late ? "late" : "soon", "data-testid": "risk-due-" + o.id },
        due ? (late ? "overdue " : "due ") + localTime(o.due) : "–")),
      el("td", { class: "num" }, el("span", { "data-testid": "risk-left-" + o.id }, num(o.remaining)), el("br"),
        el("small", {}, "of " + num(o.planned_quantity)))));
  }
  table.append(body);
  box.replaceChildren(table);
  if (risky.length > shown.length) box.append(el("p", { class: "more" }, `and ${risky.length - shown.length} more`));
}

function fillSiteFilter(list) {
  const select = $("site");
  const known = list.sites.map((s) => s.site_id);
  const have = [...select.options].slice(1).map((o) => o.value);
  if (known.join() !== have.join()) {
    select.replaceChildren(el("option", { value: "" }, "all sites"),
      ...list.sites.map((s) => el("option", { value: s.site_id }, s.site_id + " · " + s.name)));
  }
  select.value = site;
}

function renderSync(list) {
  fillSiteFilter(list);
  const box = $("sync");
  const health = (s) => (s.revoked ? ["offline", "revoked"] : !s.connected ? ["offline", "offline"]
    : (s.lag_seconds || 0) > LAG_WARN_SECONDS ? ["lagging", "lagging"] : ["ok", "online"]);
  const rank = { offline: 0, lagging: 1, ok: 2 };
  // Abnormal sites first; with many sites the healthy ones are only counted.
  const all = list.sites.filter((s) => !site || s.site_id === site)
    .sort((a, b) => rank[health(a)[0]] - rank[health(b)[0]] || (a.site_id < b.site_id ? -1 : 1));
  if (!all.length) return empty(box, "No sites registered (central-hub site add).");
  let healthy = 0;
  const sites = all.length > 8 ? all.filter((s) => health(s)[0] !== "ok" || healthy++ < 3) : all;
  const table = el("table", {}, el("thead", {}, el("tr", {},
    ...[["Site"], ["Status"], ["Last seen"], ["Backlog", "events waiting in the edge's outbox"],
      ["Lag", "age of the oldest event not yet synced"], ["Down", "changes sent down but not applied yet"]]
      .map(([h, title], i) => el("th", { class: i >= 3 ? "num" : null, title }, h)))));
  const body = el("tbody");
  for (const s of sites) {
    const [status, text] = health(s);
    const backlog = s.backlog_events === null || s.backlog_events === undefined ? "–" : num(s.backlog_events);
    body.append(el("tr", { "data-testid": "sync-" + s.site_id },
      el("td", {}, s.site_id, el("br"), el("small", {}, s.name)),
      el("td", {}, el("span", { class: "status " + status, "data-testid": "status-" + s.site_id }, text)),
      el("td", { "data-testid": "seen-" + s.site_id }, ago(s.last_seen_at)),
      el("td", { class: "num", "data-testid": "backlog-" + s.site_id }, backlog),
      el("td", { class: "num", "data-testid": "lag-" + s.site_id }, seconds(s.lag_seconds)),
      el("td", { class: "num", "data-testid": "down-" + s.site_id }, num(s.down_backlog))));
  }
  table.append(body);
  box.replaceChildren(table);
  if (sites.length < all.length)
    box.append(el("p", { class: "more", "data-testid": "sync-more" }, `and ${all.length - sites.length} more sites online and in sync`));
}

let generation = 0, timer = null, lastOk = null;
async function refresh() {
  const g = ++generation;
  clearTimeout(timer);
  timer = setTimeout(refresh, REFRESH_MS);
  if (!token) { $("login").hidden = false; return; }
  $("login").hidden = true;
  $("range-label").textContent = rangeText();
  // A panel is redrawn only by the latest refresh; an older answer arriving late is dropped.
  const draw = (render) => (data) => { if (g === generation) render(data); };
  const jobs = [
    api("/api/v1/reports/oee?" + query([["group_by", "site"]])).then(draw(renderOee)),
    api("/api/v1/reports/downtime-pareto?" + query([])).then(draw(renderPareto)),
    api("/api/v1/reports/production?" + query([["group_by", "site,day"]])).then(draw(renderTrend)),
    api("/api/v1/work-orders?" + new URLSearchParams([["state", "open"], ["limit", "200"], ...(site ? [["site", site]] : [])]))
      .then(draw(renderRisk)),
    api("/api/v1/sites").then(draw(renderSync)),
  ];
  const results = await Promise.allSettled(jobs);
  if (g !== generation) return;
  const failures = results.filter((r) => r.status === "rejected").map((r) => r.reason);
  showErrors(failures.map((e) => (e instanceof ApiError ? e.message : "The page failed: " + e)));
  const wait = Math.max(0, ...failures.map((e) => (e instanceof ApiError && e.retryAfter) || 0));
  if (wait) { clearTimeout(timer); timer = setTimeout(refresh, Math.min(wait, 30) * 1000); }
  const stamp = $("refreshed");
  if (!failures.length) {
    lastOk = new Date();
    stamp.textContent = "updated " + lastOk.toLocaleTimeString("en-GB");
    stamp.classList.remove("stale");
  } else {
    stamp.textContent = lastOk ? "figures from " + lastOk.toLocaleTimeString("en-GB") + " (refresh failed)" : "not loaded";
    stamp.classList.add("stale");
  }
  document.body.dataset.loaded = failures.length ? "error" : "ok";
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
}

function pressRangeButtons() {
  document.querySelectorAll("#ranges button").forEach((b) => b.setAttribute("aria-pressed", String(!fixedFrom && b.dataset.range === range)));
}
document.querySelectorAll("#ranges button").forEach((b) => {
  b.addEventListener("click", () => {
    range = b.dataset.range;
    fixedFrom = fixedTo = null;
    localStorage.setItem("mes.range", range);
    pressRangeButtons();
    writeFragment();
    refresh();
  });
});
$("site").addEventListener("change", (e) => {
  site = e.target.value;
  localStorage.setItem("mes.site", site);
  writeFragment();
  refresh();
});
$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  localStorage.setItem("mes.token", token);
  refresh();
});
$("change-token").addEventListener("click", () => { $("login").hidden = false; $("token").focus(); });
$("oee-low").textContent = Math.round(OEE_LOW * 100) + " %";
if (site) $("site").append(el("option", { value: site }, site));
$("site").value = site;
pressRangeButtons();
writeFragment();
refresh();
