// The dashboard page served at "/": no external assets. It polls /stats,
// fires bursts of concurrent requests from the browser and charts requests
// against database calls. `/?burst=N&ids=K` fires one burst on load.
#ifndef CACHEFLIGHT_EXAMPLE_DASHBOARD_HPP
#define CACHEFLIGHT_EXAMPLE_DASHBOARD_HPP

#include <string_view>

inline constexpr std::string_view dashboard_html = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cacheflight demo</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 860px; color: #1b1f24; }
  h1 { font-size: 1.4em; margin-bottom: .2em; }
  .figures { display: grid; grid-template-columns: repeat(4, 1fr); gap: .8em; margin: 1em 0; }
  .figure { border: 1px solid #d0d7de; border-radius: 6px; padding: .6em .8em; }
  .figure b { display: block; font-size: 1.6em; }
  .figure span { color: #57606a; font-size: .85em; }
  form { display: flex; gap: .6em; align-items: center; flex-wrap: wrap; }
  input { width: 6em; }
  button { padding: .35em 1em; }
  #result { margin: .8em 0; min-height: 1.4em; }
  canvas { border: 1px solid #d0d7de; border-radius: 6px; width: 100%; height: 220px; }
  .legend span { margin-right: 1.2em; }
</style>
</head>
<body>
<h1>cacheflight: one database call for a burst</h1>
<p>Each request for <code>/user/{id}</code> goes through one cache. Concurrent misses for an id share a
single load.</p>
<div class="figures">
  <div class="figure"><b id="requests">0</b><span>HTTP requests</span></div>
  <div class="figure"><b id="db_calls">0</b><span>database calls</span></div>
  <div class="figure"><b id="coalesced">0</b><span>callers that joined a load</span></div>
  <div class="figure"><b id="hit_rate">0%</b><span>cache hit rate</span></div>
</div>
<form id="burst-form">
  <label>requests <input id="n" type="number" min="1" max="5000" value="1000"></label>
  <label>distinct ids <input id="ids" type="number" min="1" max="5000" value="1"></label>
  <label>first id <input id="first" type="number" min="0" value="42"></label>
  <button id="fire" type="submit">Fire burst</button>
</form>
<div id="result"></div>
<canvas id="chart" width="860" height="220"></canvas>
<div class="legend"><span style="color:#0969da">&#9632; requests</span><span style="color:#cf222e">&#9632; database calls</span></div>
<script>
const history = [];
const $ = (id) => document.getElementById(id);

async function poll() {
  try {
    const s = await (await fetch('/stats', {cache: 'no-store'})).json();
    $('requests').textContent = s.requests;
    $('db_calls').textContent = s.db_calls;
    $('coalesced').textContent = s.cache.coalesced;
    $('hit_rate').textContent = (100 * s.cache.hit_rate).toFixed(1) + '%';
    history.push({requests: s.requests, db: s.db_calls});
    if (history.length > 120) history.shift();
    draw();
  } catch (e) { /* the server may be restarting */ }
}

function draw() {
  const c = $('chart'), g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  if (history.length < 2) return;
  const max = Math.max(1, ...history.map(h => h.requests));
  const line = (key, color) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    history.forEach((h, i) => {
      const x = i * (c.width - 10) / (history.length - 1) + 5;
      const y = c.height - 5 - (h[key] / max) * (c.height - 10);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  };
  line('requests', '#0969da');
  line('db', '#cf222e');
}

async function burst(n, ids, first) {
  const before = await (await fetch('/stats', {cache: 'no-store'})).json();
  const t0 = performance.now();
  const results = await Promise.all(Array.from({length: n}, (_, i) =>
    fetch('/user/' + (first + i % ids), {cache: 'no-store'}).then(r => r.ok).catch(() => false)));
  const ms = performance.now() - t0;
  const after = await (await fetch('/stats', {cache: 'no-store'})).json();
  const ok = results.filter(Boolean).length;
  const calls = after.db_calls - before.db_calls;
  $('result').innerHTML = `<span id="burst-summary" data-requests="${n}" data-ok="${ok}" data-db-calls="${calls}">` +
    `${n} requests (${ok} ok) &rarr; <b>${calls}</b> database call${calls === 1 ? '' : 's'} in ${ms.toFixed(0)} ms</span>`;
  poll();
}

$('burst-form').addEventListener('submit', (e) => {
  e.preventDefault();
  burst(+$('n').value, +$('ids').value, +$('first').value);
});

setInterval(poll, 500);
poll();
const q = new URLSearchParams(location.search);
if (q.has('burst')) {
  $('n').value = q.get('burst');
  $('ids').value = q.get('ids') || 1;
  $('first').value = q.get('first') || 42;
  burst(+$('n').value, +$('ids').value, +$('first').value);
}
</script>
</body>
</html>
)HTML";

#endif
