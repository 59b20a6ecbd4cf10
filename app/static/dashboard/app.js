// The eventstream dashboard: figures from the edge's stats stream (SSE), DLQ entries and the live tail
// from the edge's APIs. Credentials travel as the es_token cookie that the token form sets.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY = 60; // points per sparkline (one per stats event)
const series = { deliveries: [], publish: [], latency: [] };
let previous = null;
const recent = []; // snapshots of the last ~10 s: the worker's counters change only every few seconds
let stats = null;
let tail = null;
let dlqTimer = null;

function setText(id, value) { const el = $(id); if (el) el.textContent = value; }
function fmt(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}
function notice(text) { const el = $("notice"); el.textContent = text || ""; el.hidden = !text; }
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; }

function spark(id, points) {
  const svg = $(id);
  if (!svg) return;
  const max = Math.max(1e-9, ...points);
  const step = 120 / Math.max(1, HISTORY - 1);
  const offset = 120 - step * (points.length - 1);
  const coords = points.map((v, i) => `${(offset + i * step).toFixed(1)},${(29 - (v / max) * 28).toFixed(1)}`);
  svg.innerHTML = `<polyline points="${coords.join(" ")}"></polyline>`;
}
function push(name, value) { const s = series[name]; s.push(value || 0); if (s.length > HISTORY) s.shift(); }

function rate(cur, prev, pick) {
  if (!prev) return null;
  const dt = cur.time - prev.time;
  const a = pick(cur), b = pick(prev);
  return dt > 0 && a !== undefined && b !== undefined ? Math.max(0, (a - b) / dt) : null;
}
const pipeline = (s, outcome) => ((s.worker || {}).eventstream_pipeline_records || {})[outcome];

function render(s) {
  const d = rate(s, previous, (x) => x.deliveries);
  const p = rate(s, previous, (x) => x.published);
  setText("deliveries-rate", fmt(d, 1)); setText("deliveries-total", fmt(s.deliveries));
  setText("publish-rate", fmt(p, 1)); setText("publish-total", fmt(s.published));
  const lat = s.latency_ms;
  setText("latency-p95", lat.p95 === null ? "–" : `${fmt(lat.p95, 1)} ms`);
  setText("latency-p50", lat.p50 === null ? "–" : `${fmt(lat.p50, 1)} ms`);
  setText("latency-p99", lat.p99 === null ? "–" : `${fmt(lat.p99, 1)} ms`);
  push("deliveries", d); push("publish", p); push("latency", lat.p95);
  spark("chart-deliveries", series.deliveries); spark("chart-publish", series.publish);
  spark("chart-latency", series.latency);
  const st = s.streams;
  setText("streams-total", fmt(st.plain + st.durable + st.endpoint + st.stats));
  setText("streams-plain", fmt(st.plain)); setText("streams-durable", fmt(st.durable));
  setText("streams-endpoint", fmt(st.endpoint)); setText("streams-stats", fmt(st.stats));
  setText("streams-max", fmt(st.max));
  setText("fallbacks", fmt(s.fallbacks)); setText("slow-closed", fmt(s.slow_closed));
  setText("catchup", `${s.catchup.busy}/${s.catchup.max} busy, ${s.catchup.waiting} waiting`);
  recent.push(s);
  while (recent.length > 1 && s.time - recent[0].time > 10) recent.shift();
  const older = recent.length > 1 ? recent[0] : null;
  setText("routed-rate", fmt(rate(s, older, (x) => pipeline(x, "routed")), 1));
  setText("duplicate-rate", fmt(rate(s, older, (x) => pipeline(x, "duplicate")), 1));
  setText("dlq-rate", fmt(rate(s, older, (x) => pipeline(x, "dead_lettered")), 1));
  const group = s.group || {};
  setText("worker-lag", group.error ? "?" : fmt(group.total_lag));
  setText("worker-members", group.error ? "?" : fmt((group.members || []).length));
  const assigned = (s.worker || {}).eventstream_worker_assigned_partitions;
  setText("worker-partitions", assigned ? fmt(Object.values(assigned)[0]) : "?");
  setText("conn-lag-max", fmt(s.connections_lag.max)); setText("conn-lag-sum", fmt(s.connections_lag.sum));
  renderHealth(s.health); renderConnections(s.connections); renderTopics(s.topics);
  previous = s;
}

function renderHealth(components) {
  const body = $("health").tBodies[0];
  body.replaceChildren();
  let worst = "ok";
  for (const [name, c] of Object.entries(components)) {
    const row = body.insertRow();
    cell(row, name); cell(row, c.status, c.status); cell(row, c.reason || "");
    if (c.status === "failed" || (c.status === "degraded" && worst === "ok")) worst = c.status;
  }
  const pill = $("overall"); pill.textContent = `health: ${worst}`; pill.className = `pill ${worst}`;
}

function renderConnections(list) {
  const body = $("connections").tBodies[0];
  body.replaceChildren();
  for (const c of list) { const row = body.insertRow(); cell(row, c.id); cell(row, c.status); cell(row, fmt(c.delivered)); }
}

function renderTopics(topics) {
  const body = $("topics").tBodies[0];
  body.replaceChildren();
  const select = $("tail-topic");
  const known = new Set([...select.options].map((o) => o.value));
  for (const t of topics) {
    const row = body.insertRow();
    row.dataset.topic = t.topic;
    cell(row, t.topic); cell(row, t.partitions.length);
    cell(row, fmt(t.partitions.reduce((a, p) => a + p.low, 0)));
    cell(row, fmt(t.partitions.reduce((a, p) => a + p.high, 0)));
    if (!t.internal && !known.has(t.topic)) select.add(new Option(t.topic, t.topic));
  }
}

function connectStats() {
  if (stats) stats.close();
  stats = new EventSource("/api/v1/stats/stream");
  stats.addEventListener("stats", (e) => {
    $("conn").textContent = "live"; $("conn").className = "pill ok"; notice("");
    render(JSON.parse(e.data));
  });
  stats.onerror = () => {
    $("conn").textContent = "offline"; $("conn").className = "pill off";
    fetch("/api/v1/health").then((r) => {
      if (r.status === 401 || r.status === 403) notice("Sign in with a token to see the figures.");
    }).catch(() => {});
  };
}

async function loadDlq() {
  try {
    const head = await fetch("/api/v1/dlq?limit=1");
    if (!head.ok) throw new Error(`${head.status}`);
    const total = (await head.json()).total;
    const page = await fetch(`/api/v1/dlq?limit=10&offset=${Math.max(0, total - 10)}`);
    if (!page.ok) throw new Error(`${page.status}`);
    renderDlq((await page.json()).entries.reverse());
  } catch (err) {
    const body = $("dlq").tBodies[0];
    body.replaceChildren();
    cell(body.insertRow(), `DLQ not readable (${err.message})`);
  }
}

function renderDlq(entries) {
  const body = $("dlq").tBodies[0];
  body.replaceChildren();
  for (const e of entries) {
    const row = body.insertRow();
    row.dataset.position = e.position;
    cell(row, e.position); cell(row, e.stage);
    cell(row, `${e.error_class || ""}: ${e.error_message || ""}`);
    cell(row, e.replayed ? "yes" : "");
    const button = document.createElement("button");
    button.textContent = "Replay"; button.className = "replay";
    button.onclick = () => replay(e.position, button);
    row.insertCell().append(button);
  }
}

async function replay(position, button) {
  button.disabled = true;
  const r = await fetch("/api/v1/dlq/replay", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ positions: [position], force: true }),
  });
  const body = await r.json().catch(() => ({}));
  button.textContent = r.ok ? `replayed ${body.replayed}` : `failed (${r.status})`;
  if (!r.ok) button.disabled = false;
  setTimeout(loadDlq, 1500);
}

// The tail reads the stream with fetch: EventSource would need one listener per event type (each event
// arrives under its own type name), which a filter box cannot know in advance.
async function watchTail(evt) {
  if (evt) evt.preventDefault();
  stopTail();
  const topic = $("tail-topic").value;
  if (!topic) return;
  const filter = { topics: [topic] };
  const types = $("tail-filter").value.trim();
  if (types) filter.types = types.split(",").map((t) => t.trim()).filter(Boolean);
  const controller = new AbortController();
  tail = controller;
  const list = $("tail");
  try {
    const r = await fetch(`/api/v1/events/stream?filter=${encodeURIComponent(JSON.stringify(filter))}`,
                          { signal: controller.signal });
    if (!r.ok) { notice(`Live tail refused: ${r.status}`); return; }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
        if (!data.length) continue;
        const ev = JSON.parse(data.join("\n"));
        const li = document.createElement("li");
        li.textContent = `${ev.time || ""} ${ev.type} ${ev.subject || ""} ${JSON.stringify(ev.data)}`;
        list.prepend(li);
        while (list.children.length > 200) list.lastChild.remove();
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") notice(`Live tail stopped: ${err.message}`);
  }
}
function stopTail() { if (tail) { tail.abort(); tail = null; } }

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (token) document.cookie = `es_token=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
  $("token").value = "";
  connectStats(); loadDlq();
});
$("sign-out").addEventListener("click", () => {
  document.cookie = "es_token=; path=/; max-age=0; SameSite=Strict";
  connectStats();
});
$("tail-form").addEventListener("submit", watchTail);
$("tail-stop").addEventListener("click", stopTail);

connectStats();
loadDlq();
dlqTimer = setInterval(loadDlq, 10000);
