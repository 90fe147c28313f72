"""The status page served at ``GET /``: one self-contained HTML document (inline CSS and JS).

It polls ``GET /status`` every 1.5 seconds and draws the served models (health,
phase, queue, sequence slots), memory, the KV cache tiers and hit rate, and the
last finished requests with their TTFT and tokens per second. It loads nothing
else: no fonts, scripts or styles from anywhere.

With ``--api-key`` the page itself is public (it holds no data) and its script
sends the key: open ``/#key=KEY`` (the fragment never reaches the server or
its access log; ``?key=KEY`` works too), or type it when the page asks. The
key is kept in the tab's ``sessionStorage`` and removed from the address bar.

Rendered elements carry ids and ``data-`` attributes (``#models``,
``tr.model[data-model]``, ``tr.req[data-model][data-n]``, ``body[data-state]``) that
the browser test reads; ``data-state`` is ``ok`` after a successful poll,
``auth`` while a key is needed and ``error`` after a failed poll or a script
error.
"""

from __future__ import annotations

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>kvllama status</title>
<style>
:root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ec; --bg: #f7f8fa; --ok: #1f8a4c;
        --warn: #b7791f; --bad: #c53030; --bar: #4c6ef5; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: baseline; padding: 14px 22px;
         background: #fff; border-bottom: 1px solid var(--line); }
header h1 { font-size: 18px; margin: 0; }
main { padding: 16px 22px; display: grid; gap: 16px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
h2 { font-size: 14px; margin: 0 0 8px; text-transform: uppercase; letter-spacing: .04em;
     color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: 12px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.pill { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; color: #fff; }
.ok { background: var(--ok); } .warn { background: var(--warn); } .bad { background: var(--bad); }
.bar { height: 6px; background: var(--line); border-radius: 3px; min-width: 80px; }
.bar > div { height: 6px; background: var(--bar); border-radius: 3px; }
.kv { display: flex; flex-wrap: wrap; gap: 4px 24px; }
.kv b { font-variant-numeric: tabular-nums; }
#problem { display: none; padding: 10px 22px; background: #fff5f5; color: var(--bad);
           border-bottom: 1px solid #fed7d7; }
#login { display: none; }
#login input { font: inherit; padding: 4px 8px; width: 280px; }
.scroll { overflow-x: auto; }
</style>
</head>
<body data-state="loading">
<header>
  <h1>kvllama</h1>
  <span id="version" class="muted"></span>
  <span>up <b id="uptime">-</b></span>
  <span id="conn" class="pill warn">connecting</span>
  <span class="muted">updated <span id="updated">never</span></span>
</header>
<div id="problem"></div>
<main>
  <section id="login">
    <h2>API key</h2>
    <form id="login-form">
      <p class="muted">This server needs its API key to show its status (it stays in this tab only).</p>
      <input id="key" type="password" autocomplete="off" placeholder="API key"> <button>Show status</button>
    </form>
  </section>
  <section>
    <h2>Models</h2>
    <div class="scroll"><table id="models"><thead><tr>
      <th>model</th><th>health</th><th>phase</th><th class="num">queued</th><th class="num">running</th>
      <th class="num">free slots</th><th class="num">sessions</th><th class="num">kept sequences</th>
      <th>last cache hit</th><th class="num">context</th><th class="num">memory (est.)</th>
    </tr></thead><tbody></tbody></table></div>
  </section>
  <section>
    <h2>Prompt reuse</h2>
    <p class="muted">Prompt tokens each model did not prefill, by where they came from: its own parked
      session, a kept sequence taken over, a copy of another live sequence, a row just saved, the KV
      cache.</p>
    <div class="scroll"><table id="reuse"><thead><tr>
      <th>model</th><th>source</th><th class="num">requests</th><th class="num">tokens</th>
      <th class="num">share of prompt tokens</th>
    </tr></thead><tbody></tbody></table></div>
  </section>
  <section>
    <h2>Memory</h2>
    <div class="kv" id="memory"></div>
  </section>
  <section>
    <h2>KV cache</h2>
    <div class="kv" id="cache-summary"></div>
    <div class="scroll"><table id="tiers"><thead><tr>
      <th>tier</th><th class="num">rows</th><th class="num">bytes</th><th class="num">budget</th><th>used</th>
    </tr></thead><tbody></tbody></table></div>
  </section>
  <section>
    <h2>Recent requests <span class="muted" id="finished"></span></h2>
    <div class="scroll"><table id="requests"><thead><tr>
      <th>finished</th><th>model</th><th class="num">prompt</th><th class="num">cached</th>
      <th>cache</th><th class="num">generated</th><th>finish</th><th class="num">TTFT ms</th>
      <th class="num">tok/s</th><th class="num">total s</th>
    </tr></thead><tbody></tbody></table></div>
  </section>
</main>
<script>
"use strict";
const POLL_MS = 1500;
const KEY_ITEM = "kvllama-api-key";
let timer = null;

function takeKeyFromUrl() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const key = hash.get("key") || query.get("key");
  if (key) {
    sessionStorage.setItem(KEY_ITEM, key);
    query.delete("key");
    const rest = query.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value; else node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "-" : String(child)));
  }
  return node;
}
const num = (value, attrs) => el("td", Object.assign({class: "num"}, attrs || {}), value);
const pill = (text, kind) => el("span", {class: "pill " + kind}, text);

function bytes(n) {
  if (n == null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}
function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + (d || h || m ? m + "m " : "") + (s % 60) + "s";
}
function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
}
function kv(id, pairs) {
  document.getElementById(id).replaceChildren(
    ...pairs.map(([k, v]) => el("span", null, k + " ", el("b", null, v))));
}

function renderModels(models) {
  fill("models", models.map(m => {
    const health = m.healthy ? pill("ok", "ok") : pill(m.error ? "error" : "unhealthy", "bad");
    const slots = m.slots || {};
    const last = m.last_cache_hit;
    const hit = last ? last.kind + " (" + last.prefix_len + " tok)" : null;
    return el("tr", {class: "model", "data-model": m.name},
      el("td", {class: "model-name"}, m.name), el("td", null, health), el("td", null, m.phase),
      num(m.pending), num(m.in_flight), num(slots.free == null ? null : slots.free + " / " + slots.total),
      num(slots.sessions), num(slots.kept), el("td", null, hit), num(m.n_ctx),
      num(bytes(m.memory_estimate_bytes)));
  }));
}

function renderReuse(models) {
  const rows = [];
  for (const m of models) {
    const reuse = m.prompt_reuse;
    if (!reuse || !reuse.requests) continue;
    for (const [source, n] of Object.entries(reuse.requests)) {
      const tokens = reuse.tokens[source] || 0;
      const share = reuse.prompt_tokens ? (100 * tokens / reuse.prompt_tokens).toFixed(1) + " %" : "-";
      rows.push(el("tr", {class: "reuse", "data-model": m.name, "data-source": source,
                          "data-requests": n, "data-tokens": tokens},
        el("td", null, m.name), el("td", null, source), num(n), num(tokens),
        num(source === "none" ? "-" : share)));
    }
  }
  fill("reuse", rows);
}

function renderMemory(mem) {
  const pairs = [["process RSS", bytes(mem.process_rss_bytes)],
                 ["system available", bytes(mem.system_available_bytes)],
                 ["system total", bytes(mem.system_total_bytes)]];
  for (const d of mem.devices || []) {
    pairs.push([d.name + " (" + d.type + ") free", bytes(d.free_bytes) + " of " + bytes(d.total_bytes)]);
  }
  kv("memory", pairs);
}

function renderCache(cache) {
  if (!cache.enabled) { kv("cache-summary", [["KV cache", "disabled"]]); fill("tiers", []); return; }
  const rate = cache.hit_rate == null ? "-" : (100 * cache.hit_rate).toFixed(1) + " %";
  kv("cache-summary", [["hit rate", rate], ["lookups", cache.lookups], ["hits", cache.hits],
                       ["misses", cache.misses], ["rows", cache.rows], ["bytes", bytes(cache.bytes)],
                       ["saves pending", cache.pending_saves]]);
  fill("tiers", Object.entries(cache.tiers).map(([name, t]) => {
    const share = t.budget ? Math.min(100, 100 * t.bytes / t.budget) : 0;
    const bar = el("div", {class: "bar"}, el("div", {style: "width:" + share.toFixed(1) + "%"}));
    return el("tr", {class: "tier", "data-tier": name}, el("td", null, name), num(t.rows),
              num(bytes(t.bytes)), num(bytes(t.budget)), el("td", null, bar));
  }));
}

function renderRequests(requests, total) {
  document.getElementById("finished").textContent = "(" + total + " finished since start)";
  fill("requests", requests.map(r => el("tr", {class: "req", "data-model": r.model, "data-n": r.n},
    el("td", null, new Date(r.finished_at * 1000).toLocaleTimeString()), el("td", null, r.model),
    num(r.prompt_tokens), num(r.cached_tokens), el("td", null, r.cache_hit_kind), num(r.generated_tokens),
    el("td", null, r.finish_reason), num(r.ttft_ms), num(r.tokens_per_second), num(r.seconds))));
}

function render(s) {
  document.getElementById("version").textContent = "v" + s.version;
  document.getElementById("uptime").textContent = duration(s.uptime_seconds);
  renderModels(s.models);
  renderReuse(s.models);
  renderMemory(s.memory);
  renderCache(s.cache);
  renderRequests(s.recent_requests, s.requests_finished);
}

function problem(text) {
  const box = document.getElementById("problem");
  box.textContent = text || "";
  box.style.display = text ? "block" : "none";
}
function connection(text, kind, state) {
  const c = document.getElementById("conn");
  c.textContent = text;
  c.className = "pill " + kind;
  document.body.dataset.state = state;
}

async function poll() {
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = key ? {"Authorization": "Bearer " + key} : {};
  try {
    const response = await fetch("status", {headers, cache: "no-store"});
    if (response.status === 401) {
      document.getElementById("login").style.display = "block";
      connection(key ? "wrong API key" : "API key needed", "warn", "auth");
      return;
    }
    const body = await response.json();
    if (!response.ok) throw new Error((body.error && body.error.message) || "HTTP " + response.status);
    document.getElementById("login").style.display = "none";
    render(body);
    problem("");
    connection("live", "ok", "ok");
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  } catch (err) {
    connection("error", "bad", "error");
    problem("status update failed: " + err.message);
  } finally {
    clearTimeout(timer);
    timer = setTimeout(poll, POLL_MS);
  }
}

window.addEventListener("error", event => {
  document.body.dataset.state = "error";
  problem("script error: " + event.message);
});
document.getElementById("login-form").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, document.getElementById("key").value.trim());
  poll();
});
takeKeyFromUrl();
poll();
</script>
</body>
</html>
"""
