// Polls /api/state and draws every panel with one renderer: a Plotly chart, a table, or the
// panel's empty state (a sentence saying what is missing).
"use strict";

function section(panel) {
  let el = document.getElementById("panel-" + panel.id);
  if (!el) {
    el = document.createElement("section");
    el.id = "panel-" + panel.id;
    el.dataset.kind = panel.kind;
    const title = document.createElement("h2");
    title.textContent = panel.title;
    const body = document.createElement("div");
    body.className = "body";
    el.append(title, body);
    document.getElementById("panels").append(el);
  }
  return el;
}

function showEmpty(el, body, sentence) {
  if (el.dataset.state === "chart") Plotly.purge(body);
  body.className = "body empty";
  body.textContent = sentence;
  el.dataset.state = "empty";
}

function showChart(el, body, panel) {
  if (el.dataset.state !== "chart") { body.textContent = ""; body.className = "body chart"; }
  const layout = Object.assign({ margin: { l: 50, r: 10, t: 10, b: 40 }, showlegend: true, legend: { orientation: "h" } }, panel.layout);
  Plotly.react(body, panel.traces, layout, { displaylogo: false, responsive: true });
  el.dataset.state = "chart";
  el.dataset.traces = String(panel.traces.length);
}

function showTable(el, body, panel) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const column of panel.columns) { const th = document.createElement("th"); th.textContent = column; head.append(th); }
  const rows = table.createTBody();
  for (const row of panel.rows) {
    const tr = rows.insertRow();
    for (const cell of row) tr.insertCell().textContent = String(cell);
  }
  body.className = "body";
  body.replaceChildren(table);
  el.dataset.state = "table";
  el.dataset.rows = String(panel.rows.length);
}

function draw(state) {
  document.getElementById("updated").textContent = "updated " + state.updated + " UTC";
  const problems = document.getElementById("problems");
  problems.replaceChildren(...state.problems.map((p) => { const li = document.createElement("li"); li.textContent = p; return li; }));
  for (const panel of state.panels) {
    const el = section(panel);
    const body = el.querySelector(".body");
    if (panel.empty) showEmpty(el, body, panel.empty);
    else if (panel.kind === "chart") showChart(el, body, panel);
    else showTable(el, body, panel);
  }
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
}

async function refresh() {
  let wait = 5;
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    if (response.ok) {
      const state = await response.json();
      wait = state.refresh_s;
      draw(state);
    } else {
      document.getElementById("updated").textContent = "the dashboard answered " + response.status + "; retrying";
    }
  } catch (error) {
    document.getElementById("updated").textContent = "the dashboard does not answer; retrying";
  }
  setTimeout(refresh, wait * 1000);
}

refresh();
