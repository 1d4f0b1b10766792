/**
 * The status page served at `/`: one HTML document with its CSS and script
 * inline, so it needs no build step and no other request than
 * `/status.json`, which it fetches every few seconds.
 *
 * @module
 */

/** Seconds between two refreshes of the page. */
export const STATUS_PAGE_REFRESH_S = 3;

/** The page. Element ids are what tests read after the script ran. */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>anonymizer status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
  h1 { font-size: 1.2rem; margin: 0 0 .2rem; }
  #updated { color: #666; margin-bottom: 1rem; }
  #updated.stale { color: #b00; }
  table { border-collapse: collapse; background: #fff; min-width: 40rem; }
  th, td { text-align: left; padding: .3rem .8rem; border-bottom: 1px solid #e4e4e4; vertical-align: top; }
  th { font-weight: 600; white-space: nowrap; width: 10rem; }
  .num { font-variant-numeric: tabular-nums; }
  #flushes { white-space: pre-line; }
  .charts { display: flex; gap: 1.5rem; margin-top: 1rem; }
  figure { margin: 0; background: #fff; padding: .5rem; border: 1px solid #e4e4e4; }
  figcaption { color: #555; font-size: .85rem; }
  svg polyline { fill: none; stroke-width: 2; }
  #spark-queued polyline { stroke: #d97706; }
  #spark-landed polyline { stroke: #2563eb; }
</style>
</head>
<body data-loaded="">
<h1>anonymizer <span id="instance">…</span></h1>
<div id="updated">loading /status.json …</div>
<table>
  <tr><th>Kafka</th><td id="kafka">n/a</td></tr>
  <tr><th>Partitions</th><td id="partitions">n/a</td></tr>
  <tr><th>Consumer lag</th><td id="lag" class="num">n/a</td></tr>
  <tr><th>Queued</th><td id="queued" class="num">n/a</td></tr>
  <tr><th>KV on disk</th><td id="disk" class="num">n/a</td></tr>
  <tr><th>Sealed batch</th><td id="batch">n/a</td></tr>
  <tr><th>Next slot</th><td id="slot">n/a</td></tr>
  <tr><th>Last flushes</th><td id="flushes">n/a</td></tr>
  <tr><th>Refusals</th><td id="refusals" class="num">n/a</td></tr>
  <tr><th>Dead letters</th><td id="dead">n/a</td></tr>
  <tr><th>ClickHouse</th><td id="clickhouse">n/a</td></tr>
  <tr><th>Landed</th><td id="landed" class="num">n/a</td></tr>
</table>
<div class="charts">
  <figure><svg id="spark-queued" width="320" height="60" viewBox="0 0 320 60"></svg>
    <figcaption>queued rows, last hour: <span id="queued-now">n/a</span></figcaption></figure>
  <figure><svg id="spark-landed" width="320" height="60" viewBox="0 0 320 60"></svg>
    <figcaption>landed rows, last hour: <span id="landed-now">n/a</span></figcaption></figure>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const secs = (ms) => (Math.max(0, ms) / 1000).toFixed(1) + " s";
const bytes = (n) => n < 1024 ? n + " B" : n < 1048576 ? (n / 1024).toFixed(1) + " KiB"
  : (n / 1048576).toFixed(1) + " MiB";
const set = (id, text) => { $(id).textContent = text; };

function spark(svg, samples, key) {
  const w = 320, h = 60, pad = 4;
  const t0 = samples[0].at, t1 = samples[samples.length - 1].at;
  const values = samples.map((p) => p[key]);
  const lo = Math.min(...values), hi = Math.max(...values);
  const x = (t) => t1 === t0 ? w - pad : pad + (t - t0) / (t1 - t0) * (w - 2 * pad);
  const y = (v) => hi === lo ? h / 2 : h - pad - (v - lo) / (hi - lo) * (h - 2 * pad);
  const points = samples.map((p) => x(p.at).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" ");
  svg.innerHTML = '<polyline points="' + points + '"></polyline>';
  svg.dataset.points = String(samples.length);
}

function render(s) {
  set("instance", s.instance);
  set("kafka", (s.kafka.joined ? "joined" : "not joined") +
    (s.kafka.backpressure ? ", paused: KV refuses writes" : ""));
  set("partitions", s.kafka.partitions.length === 0 ? "none owned"
    : s.kafka.partitions.map((p) => p.partition + " (lag " + (p.lag ?? "n/a") + ")").join(", "));
  const lags = s.kafka.partitions.map((p) => p.lag).filter((l) => l !== null);
  set("lag", lags.length === 0 ? "n/a" : lags.reduce((a, b) => a + b, 0) + " messages in total");
  set("queued", s.queue.rows + " rows (" + s.queue.sealedRows + " sealed), oldest " +
    secs(s.queue.oldestAgeMs));
  set("disk", bytes(s.queue.diskBytes));
  const b = s.batch;
  set("batch", b === null ? "none" : b.id + ": " + b.rows + " rows, " + bytes(b.bytes) + ", " +
    b.state + ", " + b.attempts + " attempts" + (b.lastError ? ", last error: " + b.lastError : ""));
  const wait = s.pacing.nextSlotAt - s.at;
  set("slot", (wait > 0 ? "in " + secs(Math.ceil(wait / 100) * 100) : "now") +
    (s.pacing.inflight ? ", a request in flight" : ""));
  set("flushes", s.flushes.length === 0 ? "none yet" : s.flushes.slice(-5).map((f) =>
    secs(s.at - f.at) + " ago: " + f.kind + " " + f.outcome +
    (f.outcome === "ok" || f.status === null ? "" : " " + f.status) +
    (f.rows === null ? "" : ", " + f.rows + " rows") + ", " + f.durationMs + " ms" +
    (f.error === null ? "" : ": " + f.error)).join("\\n"));
  set("refusals", s.refusals.total + " since start, " + s.refusals.inARow + " in a row");
  const codes = Object.entries(s.deadLetters).sort(([a], [b]) => a.localeCompare(b));
  set("dead", codes.length === 0 ? "none since start"
    : codes.map(([c, n]) => c + " " + n).join(", ") + " (since start)");
  set("clickhouse", (s.clickhouse.version ?? "version not known yet") + ", dedup " +
    (s.clickhouse.dedup ?? "n/a") + " (CLICKHOUSE_DEDUP=" + s.clickhouse.dedupSetting + ")");
  set("landed", s.queue.landedRows + " rows in " + s.queue.landedBatches + " batches by this KV");
  spark($("spark-queued"), s.history.samples, "queuedRows");
  spark($("spark-landed"), s.history.samples, "landedRows");
  set("queued-now", String(s.queue.rows));
  set("landed-now", String(s.queue.landedRows));
  set("updated", "updated " + new Date(s.at).toISOString());
  $("updated").className = "";
  document.body.dataset.loaded = String(s.at);
}

async function refresh() {
  try {
    const r = await fetch("status.json", { cache: "no-store" });
    if (!r.ok) throw new Error("status " + r.status);
    render(await r.json());
  } catch (err) {
    set("updated", "cannot read status.json: " + err.message + " (retrying)");
    $("updated").className = "stale";
  }
}
refresh();
setInterval(refresh, ${STATUS_PAGE_REFRESH_S} * 1000);
</script>
</body>
</html>
`;
