// The dashboard page: one EventSource for everything live; DOM built with textContent only.
import { ago, applyLabels, t, toggleLang } from "/dashboard/static/i18n.js";

const state = { unit: new URLSearchParams(location.search).get("unit"), csrf: "", session: null,
  source: null, work: null, live: null };

const $ = (sel) => document.querySelector(sel);
const fmt = (n) => (n == null ? "—" : Number(n).toLocaleString());
const ms = (v) => (v == null ? "—" : v < 10 ? v.toFixed(2) : Math.round(v).toString());

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function tile(id, value, sub) {
  const node = document.getElementById(id);
  node.querySelector(".v").textContent = value;
  if (sub !== undefined) node.querySelector(".sub").textContent = sub;
}

// -- charts (uPlot) ---------------------------------------------------------
const charts = {};
function makeChart(id, series) {
  const box = document.getElementById(id);
  const opts = {
    width: Math.max(200, box.clientWidth), height: 180,
    scales: { x: { time: true } }, legend: { show: true },
    axes: [{ stroke: "#9fb3c8", grid: { stroke: "#1f3347" } }, { stroke: "#9fb3c8", grid: { stroke: "#1f3347" } }],
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2 }))],
  };
  const chart = new uPlot(opts, [[], ...series.map(() => [])], box);
  new ResizeObserver(() => chart.setSize({ width: Math.max(200, box.clientWidth), height: 180 })).observe(box);
  return chart;
}

function drawCharts(live) {
  if (typeof uPlot === "undefined") return;
  if (!charts.rates) {
    charts.rates = makeChart("chart-rates", [[t("msg_rate"), "#4fc3f7"], [t("delivery_rate"), "#81c784"]]);
    charts.connections = makeChart("chart-connections", [[t("connections"), "#ffb74d"]]);
  }
  const s = live.series;
  charts.rates.setData([s.t, s.messages, s.deliveries]);
  charts.connections.setData([s.t, s.connections]);
}

// -- live numbers -------------------------------------------------------------
// The operator's feed carries every live node (``nodes``) and their sums (``cluster``): the
// count and rate tiles then say 全部节点; latencies and charts are always this node's.
function showLive(live) {
  state.live = live;
  const c = live.cluster;
  const scope = c ? `${t("all_nodes")} (${c.nodes})` : t("this_node");
  const mine = `${t("this_node")} ${live.node}`;
  tile("tile-users", fmt(c ? c.users : live.users));
  document.querySelector("#tile-users .scope").textContent = scope;
  tile("tile-connections", fmt(c ? c.connections : live.connections));
  $("#node-name").textContent = c ? scope : mine;
  const msgs = c ? c.msgs_s : live.rates.messages;
  const dels = c ? c.deliveries_s : live.rates.deliveries;
  const prefix = c ? `${scope} · ` : "";
  tile("tile-msg-rate", msgs.toFixed(1), `${prefix}${t("total")} ${fmt(c ? c.msgs_total : live.totals.messages)}`);
  tile("tile-delivery-rate", dels.toFixed(1), `${prefix}${t("total")} ${fmt(c ? c.deliveries_total : live.totals.deliveries)}`);
  const l = live.latency_ms;
  tile("tile-send-ack", `${ms(l.send_ack.p50)} / ${ms(l.send_ack.p95)} / ${ms(l.send_ack.p99)}`, `p50 / p95 / p99 · ${t("this_node")}`);
  tile("tile-card-callback", `${ms(l.card_callback.p50)} / ${ms(l.card_callback.p95)} / ${ms(l.card_callback.p99)}`, `p50 / p95 / p99 · ${t("this_node")}`);
  if (live.nodes) showNodes(live.nodes);
  drawCharts(live);
}

function showNodes(nodes) {
  $("#nodes-panel").hidden = false;
  $("#nodes tbody").replaceChildren(...nodes.map((n) => {
    const a = n.send_ack_ms;
    const name = n.self ? `${n.node} (${t("this_node")})` : n.node;
    return el("tr", { dataset: { node: n.node }, class: n.self ? "self-node" : "" },
      el("td", {}, name), el("td", { class: "n connections" }, fmt(n.connections)),
      el("td", { class: "n users" }, fmt(n.users)), el("td", { class: "n msgs" }, n.msgs_s.toFixed(1)),
      el("td", { class: "n deliveries" }, n.deliveries_s.toFixed(1)),
      el("td", { class: "n send-ack" }, `${ms(a.p50)} / ${ms(a.p95)} / ${ms(a.p99)}`),
      el("td", { class: "n heard" }, ago(n.at * 1000)));
  }));
}

// -- work: units, overview, callbacks ------------------------------------------
function levelName(level) { return t(`level_${level}`); }

function unitRow(u, self) {
  const name = self
    ? el("span", { class: "self" }, `${u.name} (${t("this_unit")})`)
    : el("a", { href: `?unit=${encodeURIComponent(u.id)}`, class: "drill", dataset: { unit: u.id },
      on: { click: (ev) => { ev.preventDefault(); drill(u.id); } } }, u.name);
  const oldest = u.oldest ? el("span", { title: `${u.oldest.app_id} ${u.oldest.card_id}` }, ago(u.oldest.created_at)) : "—";
  return el("tr", { dataset: { unit: u.id }, class: self ? "self-row" : "" },
    el("td", {}, name), el("td", {}, levelName(u.level)), el("td", { class: "n" }, fmt(u.people)),
    el("td", { class: "n pushed" }, fmt(u.pushed)), el("td", { class: "n decided" }, fmt(u.decided)),
    el("td", { class: "n pending" }, fmt(u.pending)), el("td", { class: "n todo" }, fmt(u.todo)),
    el("td", { class: `n overdue${u.overdue ? " warn" : ""}` }, fmt(u.overdue)), el("td", {}, oldest));
}

function showUnits(units) {
  const crumbs = $("#breadcrumb");
  crumbs.replaceChildren(el("a", { href: "?", class: "crumb", dataset: { unit: "" },
    on: { click: (ev) => { ev.preventDefault(); drill(null); } } }, t("all_units")));
  for (const a of units.trail) {
    crumbs.append(" › ", el("a", { href: `?unit=${encodeURIComponent(a.id)}`, class: "crumb", dataset: { unit: a.id },
      on: { click: (ev) => { ev.preventDefault(); drill(a.id); } } }, a.name));
  }
  if (units.unit) crumbs.append(" › ", el("b", { class: "crumb current" }, units.unit.name));
  const rows = [];
  if (units.unit) rows.push(unitRow(units.unit, true));
  for (const c of units.children) rows.push(unitRow(c, false));
  $("#units tbody").replaceChildren(...rows);
}

function showOverview(o) {
  const g = o.governance;
  tile("tile-governance", `${g.zombie} / ${g.empty} / ${g.duplicate}`,
    `${t("zombie")} / ${t("empty")} / ${t("duplicate")} · ${fmt(g.groups)} ${t("groups")}`);
  if (o.dings) {
    tile("tile-dings", `${fmt(o.dings.confirmed)} / ${fmt(o.dings.total)}`, `${t("awaiting")} ${fmt(o.dings.awaiting)}`);
  } else tile("tile-dings", "—", t("not_yours"));
  if (o.audit) {
    const a = o.audit;
    const node = document.getElementById("tile-audit");
    node.dataset.ok = String(a.ok);
    tile("tile-audit", a.ok ? t("ok") : t("broken"), `${fmt(a.head_seq ?? 0)} ${t("records")}`);
  } else tile("tile-audit", "—", t("not_yours"));
}

async function retry(cb, button) {
  button.disabled = true;
  const resp = await fetch(`/dashboard/api/callbacks/${encodeURIComponent(cb.card_id)}/${encodeURIComponent(cb.action_id)}/retry`, {
    method: "POST", headers: { "X-CSRF-Token": state.csrf }, credentials: "same-origin" });
  button.textContent = resp.ok ? t("retried") : `HTTP ${resp.status}`;
}

function showCallbacks(c) {
  $("#callbacks-panel").hidden = false;
  $("#outbox tbody").replaceChildren(...c.apps.map((a) => el("tr", { dataset: { app: a.app_id } },
    el("td", {}, a.app_id), el("td", { class: "n cb-pending" }, fmt(a.pending)),
    el("td", { class: `n cb-failed${a.failed ? " warn" : ""}` }, fmt(a.failed)), el("td", {}, ago(a.oldest_pending_at)))));
  $("#failed tbody").replaceChildren(...c.failed.map((f) => {
    const button = el("button", { type: "button", class: "retry" }, t("retry"));
    button.addEventListener("click", () => retry(f, button));
    return el("tr", { dataset: { card: f.card_id } }, el("td", {}, f.app_id), el("td", {}, f.card_id),
      el("td", { class: "n" }, fmt(f.attempts)), el("td", { class: "err" }, f.last_error), el("td", {}, button));
  }));
}

function showWork(work) {
  state.work = work;
  showUnits(work.units);
  showOverview(work.overview);
  if (work.callbacks) showCallbacks(work.callbacks);
}

// -- the feed -------------------------------------------------------------------
function setStatus(key) {
  const s = $("#status");
  s.dataset.state = key;
  s.textContent = t(key);
}

function connect() {
  if (state.source) state.source.close();
  const q = state.unit ? `?unit=${encodeURIComponent(state.unit)}` : "";
  const source = new EventSource(`/dashboard/api/stream${q}`);
  state.source = source;
  setStatus("connecting");
  source.addEventListener("open", () => setStatus("live"));
  source.addEventListener("live", (ev) => { setStatus("live"); showLive(JSON.parse(ev.data)); });
  source.addEventListener("work", (ev) => showWork(JSON.parse(ev.data)));
  source.addEventListener("error", async (ev) => {
    setStatus("offline");
    if (ev.data) { source.close(); location.assign("/dashboard/login"); return; }
    const probe = await fetch("/dashboard/api/session", { credentials: "same-origin" });
    if (probe.status === 401) { source.close(); location.assign("/dashboard/login"); return; }
    const q2 = state.unit ? `?unit=${encodeURIComponent(state.unit)}` : "";
    const check = await fetch(`/dashboard/api/units${q2}`, { credentials: "same-origin" });
    if (!check.ok) {  // a unit outside the scope, or unknown: say so, stop retrying
      source.close();
      const body = await check.json();
      const notice = $("#notice");
      notice.textContent = `${body.error.message} (${body.error.code})`;
      notice.hidden = false;
    }
  });
}

function drill(unit) {
  state.unit = unit || null;
  $("#notice").hidden = true;
  history.pushState({ unit: state.unit }, "", state.unit ? `?unit=${encodeURIComponent(state.unit)}` : location.pathname);
  connect();
}

async function main() {
  applyLabels();
  const resp = await fetch("/dashboard/api/session", { credentials: "same-origin" });
  if (!resp.ok) { location.assign("/dashboard/login"); return; }
  state.session = await resp.json();
  state.csrf = state.session.csrf;
  const who = state.session.super ? t("super") : `${t("scoped")} ${state.session.user}: ${state.session.scopes.map((s) => s.name).join("、")}`;
  $("#viewer").textContent = who;
  $("#lang-toggle").addEventListener("click", () => {
    toggleLang();
    $("#viewer").textContent = state.session.super ? t("super") : `${t("scoped")} ${state.session.user}`;
    if (state.work) showWork(state.work);
    if (state.live) showLive(state.live);
  });
  $("#logout").addEventListener("click", async () => {
    await fetch("/dashboard/logout", { method: "POST", headers: { "X-CSRF-Token": state.csrf }, credentials: "same-origin" });
    if (state.source) state.source.close();
    location.assign("/dashboard/login");
  });
  window.addEventListener("popstate", () => {
    state.unit = new URLSearchParams(location.search).get("unit");
    connect();
  });
  connect();
}

main();
