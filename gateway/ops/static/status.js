// The gateway's status page: the document of /api/status, then each new one from /events
// (server-sent events). Read-only; no library but the vendored uPlot for the charts.
"use strict";

const COLOURS = ["#c62828", "#ef6c00", "#f9a825", "#6a1b9a", "#1565c0", "#00838f", "#4e342e"];
const charts = {};
window.gatewayCharts = charts; // for tests and the curious: the uPlot instances

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

function pill(id, text, cls) {
  const node = document.getElementById(id);
  node.textContent = text;
  node.className = "pill " + cls;
}

function doorCard(door) {
  const card = el("div", { class: "card", "data-door": door.door },
    el("h3", {}, door.door, " ", el("span", { class: "muted" }, door.role || "")));
  if (door.open.length === 0) card.append(el("div", { class: "muted" }, "nothing open"));
  for (const open of door.open) {
    card.append(el("div", { "data-reference": open.reference },
      el("strong", {}, `${open.type === "receive" ? "Receiving" : "Shipping"} ${open.reference}`),
      " ", el("span", { class: "muted" }, open.under_way ? "under way" : "next")));
    const lines = open.lines.slice(0, 12);
    if (open.type === "ship" && open.pallets_expected) {
      lines.unshift({ what: "pallets", expected: open.pallets_expected, done: open.pallets_done, over: 0, short: 0 });
    }
    for (const line of lines) {
      const share = line.expected ? Math.min(100, (100 * line.done) / line.expected) : 0;
      card.append(el("div", { class: "line" },
        el("span", { title: line.what }, line.what.length > 18 ? line.what.slice(0, 17) + "…" : line.what),
        el("div", { class: "bar" }, el("span", { style: `width:${share}%` })),
        el("span", {}, `${line.done}/${line.expected}${line.over ? ` +${line.over}` : ""}`)));
    }
    if (open.lines.length > lines.length) card.append(el("div", { class: "muted" }, `${open.lines.length - lines.length} more lines`));
  }
  const recent = el("ul", { class: "recent" });
  for (const tx of [...door.recent].reverse()) {
    recent.append(el("li", { "data-tx-id": tx.tx_id },
      el("span", { class: "muted" }, time(tx.at)),
      el("span", {}, tx.type),
      el("span", { class: "status-" + tx.status }, tx.status.replaceAll("_", " ")),
      el("span", {}, `${tx.items} items`),
      el("span", { class: "status-rejected" }, tx.exceptions.join(", "))));
  }
  card.append(recent);
  return card;
}

function rows(tbody, list) {
  tbody.replaceChildren(...list.map((cells) => el("tr", cells.attrs || {}, ...cells.map((c) => el("td", {}, c)))));
}

function chart(id, trend, days) {
  // Stacked bars: each series is drawn as the sum of itself and those listed after it, the
  // tallest first, so every series shows as its own band; the legend shows its own count.
  const names = Object.keys(trend.series);
  const raw = names.map((n) => trend.series[n]);
  const stacked = raw.map((_, i) => trend.starts.map((__, t) => raw.slice(i).reduce((a, s) => a + s[t], 0)));
  const data = [trend.starts, ...stacked];
  const existing = charts[id];
  if (existing) {
    existing.raw = raw;
    existing.setData(data);
    return;
  }
  const node = document.getElementById(id);
  const bars = uPlot.paths.bars({ size: [0.8, 40] });
  charts[id] = new uPlot({
    width: Math.max(320, node.clientWidth - 10),
    height: 220,
    scales: { x: { time: true } },
    axes: [{ values: days ? "{D} {MMM}" : "{HH}:00" }, {}],
    series: [{}, ...names.map((name, i) => ({
      label: name, stroke: COLOURS[i % COLOURS.length], fill: COLOURS[i % COLOURS.length] + "aa",
      paths: bars, points: { show: false },
      value: (u, _v, sidx, didx) => (didx === null ? "--" : u.raw[sidx - 1][didx]),
    }))],
  }, data, node);
  charts[id].raw = raw; // each series' own counts (the data are stacked)
}

function render(doc) {
  const g = doc.gateway;
  document.getElementById("title").textContent = `${g.site} / ${g.id}`;
  document.title = `${g.id}: gateway status`;
  pill("broker", g.broker_connected ? "broker connected" : "broker not connected", g.broker_connected ? "ok" : "bad");
  pill("ready", g.ready ? "ready" : "not ready: " + g.not_ready.join("; "), g.ready ? "ok" : "bad");
  const age = doc.outbox.oldest_age_s;
  pill("outbox", `outbox ${doc.outbox.depth}/${doc.outbox.limit}${age ? `, oldest ${Math.round(age)} s` : ""}`,
    doc.outbox.depth > doc.outbox.limit * 0.8 ? "bad" : doc.outbox.depth > 0 ? "warn" : "ok");
  document.getElementById("doors").replaceChildren(...doc.doors.map(doorCard));
  rows(document.querySelector("#devices tbody"), doc.devices.map((d) => Object.assign(
    [d.device, d.kind, d.state, d.reads_per_s, d.last_error || ""], { attrs: { "data-device": d.device, class: d.state === "connected" ? "" : "status-rejected" } })));
  document.getElementById("alarms").replaceChildren(...(doc.alarms.length ? doc.alarms.map((a) =>
    el("li", { "data-code": a.code }, el("span", { class: "muted" }, time(a.at) + " "), el("strong", {}, a.code), " ", a.message))
    : [el("li", { class: "muted" }, "none since start")]));
  const agv = document.getElementById("agv");
  agv.hidden = doc.tasks === null;
  if (doc.tasks !== null) {
    rows(document.querySelector("#tasks tbody"), Object.entries(doc.tasks).map(([state, n]) => [state, n]));
    rows(document.querySelector("#robots tbody"), doc.robots.map((r) => [r.robot,
      r.task ? `${r.task.kind} ${r.task.state}` : "", r.task ? r.task.sscc : "", r.task ? r.task.destination : "",
      r.position ? `${r.position.node_id}${r.position.lost ? " (lost)" : ""}` : ""]));
  }
  chart("chart-hours", doc.trends.per_hour, false);
  chart("chart-days", doc.trends.per_day, true);
  const sum = (list) => list.reduce((a, b) => a + b, 0);
  rows(document.querySelector("#totals tbody"), Object.keys(doc.trends.per_hour.series).map((name) => Object.assign(
    [name, sum(doc.trends.per_hour.series[name]), sum(doc.trends.per_day.series[name])], { attrs: { "data-series": name } })));
}

async function start() {
  const response = await fetch("/api/status", { cache: "no-store" });
  render(await response.json());
  const events = new EventSource("/events");
  events.onopen = () => pill("live", "live", "ok");
  events.onerror = () => pill("live", "reconnecting", "warn");
  events.onmessage = (message) => render(JSON.parse(message.data));
}

start().catch((error) => {
  pill("live", "cannot load the status", "bad");
  console.error(error);
});
