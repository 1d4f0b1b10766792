/**
 * End-to-end throughput through the real stack at the stock ch-proxy rate:
 * Kafka → service (child process) → a private nginx at 1r/m with the stock
 * 1 MiB body limit → ClickHouse, with the producer faster than the proxy can
 * carry, so every request leaves full and the figure is the product's ceiling.
 *
 * ```sh
 * deno task bench:e2e [--rate 400] [--flushes 5] [--idle-seconds 60] [--seed 1] [--drain-rate 600r/m] [--keep]
 *   [--service-flags=<deno flags for the service, space-separated>]
 * ```
 *
 * `--service-flags` passes extra `deno run` flags to the service, e.g.
 * `--service-flags=--v8-flags=--max-old-space-size=96`; the report echoes them.
 *
 * 1. Fresh topic (3 partitions), database and private stock proxy
 *    (testing/pipeline.ts createWorld). The service runs with its defaults for
 *    pacing (CLICKHOUSE_SPACING_MS 62500, CLICKHOUSE_MARGIN_MS 750).
 * 2. Before any record is produced, the service's CPU is read over `--idle-seconds`
 *    (0 skips it): its fixed cost with nothing to carry (`idle_cpu_ms_per_s`).
 * 3. The producer sends the stock distribution at `--rate` msg/s with
 *    distinct resource ids; the Kafka acknowledgement time of each produce
 *    request is kept as the produce time of the records it carried.
 * 4. Once the proxy's access log shows `--flushes` accepted INSERTs after the
 *    first, the producer stops and the service is stopped (SIGTERM).
 * 5. The backlog left is drained by a second service process on the same KV,
 *    pointed at a fast private proxy (`--drain-rate`), so every produced id
 *    must end up in ClickHouse exactly once: `lost` and `duplicated` are
 *    checked by id over the whole run.
 *
 * Figures (measured window = from the first to the last measured INSERT):
 * - `sustained_rows_per_s`: rows of the measured INSERTs after the first /
 *   seconds between the first and last (nginx `$msec`).
 * - `rows_per_request`: mean rows of the measured INSERTs after the first, counted in
 *   ClickHouse by `batch_id`; each INSERT is tied to its batch id through the
 *   service log ("Flushed batch"), in order, checked against nginx's time.
 * - `latency_p50_s`/`latency_p99_s`: per row landed through the stock proxy,
 *   nginx `$msec` of the INSERT that carried it minus the Kafka ack time of
 *   the produce request that carried it. Under overload the queue is FIFO and
 *   grows, so this grows with the run length: it measures queueing, not the
 *   pipeline's own delay (see `latency_by_insert_p50_s`).
 * - `cpu_s_per_million`: service CPU (utime+stime of the child, /proc)
 *   during the measured window / rows landed in it × 1e6. The service also
 *   consumed and queued faster than it landed in that window, so this
 *   overstates the per-record cost; `cpu_s_per_million_total` is both
 *   service processes' whole CPU (start-up included, the idle phase not) /
 *   records produced, each of which was consumed, queued, packed and landed
 *   exactly once.
 * - `peak_rss_mb`: VmHWM of the service during the stock-proxy phase.
 *
 * Benchmarks measure; nothing here asserts a timing. Progress goes to
 * stderr; the last stdout line is the JSON report.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { recordResults } from "./_results.ts";
import { produce, type ProduceSummary } from "../tools/produce.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import { createWorld, delay, spacingFor } from "../testing/pipeline.ts";
import {
  type AccessLogEntry,
  clickhouseQuery,
  KAFKA_BROKERS,
  startProxy,
} from "../testing/stack.ts";
import {
  closeWorld,
  codeVersion,
  hostFacts,
  LoadSampler,
  type LogRecord,
  ProcSampler,
  progress,
  quantile,
  readProc,
  reportContext,
  round,
  rssParts,
  spawnJsonService,
} from "./_service_bench.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rate: { type: "string", default: "400" },
    flushes: { type: "string", default: "5" },
    "idle-seconds": { type: "string", default: "60" },
    seed: { type: "string", default: "1" },
    "drain-rate": { type: "string", default: "600r/m" },
    keep: { type: "boolean", default: false },
    "service-flags": { type: "string", default: "" },
  },
});
const serviceFlags = values["service-flags"].split(" ").filter((f) => f !== "");
const rate = Number(values.rate);
const flushes = Number(values.flushes);
const seed = Number(values.seed);
const idleSeconds = Number(values["idle-seconds"]);
const drainRate = values["drain-rate"];
if (!(rate > 0) || !Number.isInteger(flushes) || flushes < 1 || !(idleSeconds >= 0)) {
  throw new Error(
    `Cannot run as --rate must be > 0, --flushes an integer ≥ 1 and --idle-seconds ≥ 0: ${rate}, ${flushes}, ${idleSeconds}`,
  );
}
const STOCK_RATE = "1r/m";
const DRAIN_TIMEOUT_MS = 300_000;

const isInsert = (e: AccessLogEntry) => e.uri.includes("INSERT");

interface Flush {
  batchId: string;
  rows: number;
  bytes: number;
  /** Service-side time of the log line (ms). */
  at: number;
}

function flushOf(r: LogRecord): Flush | null {
  if (!r.message.startsWith("Flushed batch")) return null;
  return {
    batchId: String(r.batchId),
    rows: Number(r.rows),
    bytes: Number(r.bytes),
    at: Date.parse(r["@timestamp"]),
  };
}

const host = hostFacts();
// Others may edit the work tree while a long run goes on: the service starts from this.
const code = codeVersion();
const load = new LoadSampler();
const world = await createWorld({ proxy: { rate: STOCK_RATE } });
// The service's own pacing defaults, as in production.
delete world.env.CLICKHOUSE_SPACING_MS;
delete world.env.CLICKHOUSE_MARGIN_MS;
progress(
  `world: topic ${world.topic}, database ${world.database}, stock proxy ${world.proxy.url} (${STOCK_RATE}), dir ${world.dir}`,
);

let report: Record<string, unknown> | undefined;
try {
  // ---- Phase 1: stock proxy, producer faster than the proxy carries.
  let queueRows = 0;
  let lastFlushAt: number | null = null;
  let flushNo = 0;
  const service1 = await spawnJsonService(world, {
    name: "service-stock",
    denoFlags: serviceFlags,
    onRecord: (r) => {
      const f = flushOf(r);
      if (f !== null) {
        flushNo++;
        const gap = lastFlushAt === null ? "first" : `+${round((f.at - lastFlushAt) / 1000, 2)} s`;
        lastFlushAt = f.at;
        progress(
          `flush #${flushNo}: ${f.rows} rows, ${f.bytes} bytes (${
            round((100 * f.bytes) / 1_048_576, 1)
          }% of 1 MiB), ${gap} since previous; ~${queueRows} rows queued before it`,
        );
      } else if (r.level === "WARN" || r.level === "ERROR" || r.level === "FATAL") {
        progress(`service ${r.level}: ${r.message.slice(0, 300)}`);
      }
    },
  });
  const sampler1 = new ProcSampler(service1.child.pid);
  await service1.waitFor((r) => r.message.includes("consuming"), 60_000);
  let idleCpuMsPerS: number | null = null;
  let idleCpuS = 0;
  if (idleSeconds > 0) {
    // Past start-up (group join, the version probe) before the clock starts.
    await delay(5_000);
    const before = readProc(service1.child.pid);
    await delay(idleSeconds * 1_000);
    const after = readProc(service1.child.pid);
    if (before !== null && after !== null) {
      idleCpuS = after.cpuS - before.cpuS;
      idleCpuMsPerS = round((idleCpuS * 1000) / ((after.at - before.at) / 1000), 2);
    }
    progress(`idle: ${idleCpuMsPerS} CPU-ms per second over ${idleSeconds} s with no records`);
  }
  progress(`service pid ${service1.child.pid} started; producing ${rate} msg/s (seed ${seed})`);

  const genNow = Date.now();
  const acks: Array<[sent: number, at: number]> = [];
  const stopProducing = new AbortController();
  const producing: Promise<ProduceSummary> = produce(KAFKA_BROKERS.split(","), {
    topic: world.topic,
    rate,
    seed,
    now: genNow,
    distinctResourceIds: true,
    signal: stopProducing.signal,
    onProgress: (p) => acks.push([p.sent, Date.now()]),
  });
  const produceStarted = Date.now();

  const need = flushes + 1;
  const deadline = Date.now() + (need + 2) * 64_000 + 60_000;
  let accepted: AccessLogEntry[] = [];
  let lastStatus = 0;
  while (Date.now() < deadline) {
    await delay(1_000);
    accepted = (await world.proxy.readAccessLog()).filter((e) => isInsert(e) && e.status === 200);
    if (accepted.length >= need) break;
    if (Date.now() - lastStatus >= 15_000) {
      lastStatus = Date.now();
      try {
        // This process's own counters: exact at every scrape (the queue gauges lagged one scrape
        // before commit 0821249).
        const m = (await service1.scrape()).series;
        queueRows = (m.get("anonymizer_records_queued_total") ?? 0) -
          (m.get("anonymizer_records_flushed_total") ?? 0);
      } catch {
        // The listener may be busy; the next scrape will do.
      }
      const cpu = sampler1.last;
      progress(
        `produced ${
          acks.at(-1)?.[0] ?? 0
        }, queued ${queueRows}, ${accepted.length}/${need} INSERTs accepted, ` +
          `service CPU ${round(cpu?.cpuS ?? 0)} s, RSS ${round(cpu?.rssMb ?? 0)} MiB, load ${
            Deno.readTextFileSync("/proc/loadavg").split(" ")[0]
          }`,
      );
    }
  }
  stopProducing.abort();
  const summary = await producing;
  const produced = summary.sent;
  const producedFor = (Date.now() - produceStarted) / 1000;
  progress(`producer stopped: ${produced} records in ${round(producedFor)} s`);
  sampler1.sample();
  const hwm1 = sampler1.last?.hwmMb ?? 0;
  await service1.kill("SIGTERM");
  sampler1.stop();
  const cpu1Total = sampler1.last?.cpuS ?? 0;
  const stockFlushes = service1.records.map(flushOf).filter((f): f is Flush => f !== null);
  const stockLog = await world.proxy.readAccessLog();

  // ---- Phase 2: drain the rest through a fast proxy, on the same KV.
  const fast = await startProxy({ rate: drainRate });
  progress(`draining through ${fast.url} (${drainRate})`);
  const service2 = await spawnJsonService(world, {
    name: "service-drain",
    overrides: {
      CLICKHOUSE_URL: fast.url,
      CLICKHOUSE_SPACING_MS: String(spacingFor(drainRate)),
      CLICKHOUSE_MARGIN_MS: "100",
    },
    denoFlags: serviceFlags,
    onRecord: (r) => {
      const f = flushOf(r);
      if (f !== null) progress(`drain flush: ${f.rows} rows, ${f.bytes} bytes`);
      else if (r.level === "ERROR" || r.level === "FATAL") {
        progress(`drain service ${r.level}: ${r.message}`);
      }
    },
  });
  const sampler2 = new ProcSampler(service2.child.pid);
  const drainStart = Date.now();
  let stored = 0;
  let idleSince: number | null = null;
  while (Date.now() - drainStart < DRAIN_TIMEOUT_MS) {
    await delay(2_000);
    stored = Number(
      (await clickhouseQuery(`SELECT count() FROM ${world.database}.http_log`)).trim(),
    );
    if (stored >= produced) break;
    let queued = NaN;
    try {
      queued = (await service2.scrape()).series.get("anonymizer_queue_rows") ?? NaN;
    } catch {
      // Not listening yet.
    }
    // Nothing left to send but ids still missing: they are lost, not late.
    if (queued === 0 && service2.records.some((r) => flushOf(r) !== null)) {
      idleSince ??= Date.now();
      if (Date.now() - idleSince > 20_000) break;
    } else {
      idleSince = null;
    }
  }
  const drainS = (Date.now() - drainStart) / 1000;
  sampler2.sample();
  const hwm2 = sampler2.last?.hwmMb ?? 0;
  await service2.kill("SIGTERM");
  sampler2.stop();
  const cpu2Total = sampler2.last?.cpuS ?? 0;
  const fastLog = await fast.readAccessLog();
  await fast.close();
  progress(`drain done in ${round(drainS)} s: ${stored} rows stored of ${produced} produced`);

  // ---- Analysis.
  const inserts = stockLog.filter((e) => isInsert(e) && e.status === 200);
  const measured = inserts.slice(0, need);
  if (measured.length < 2) {
    throw new Error(`Only ${measured.length} INSERTs were accepted; nothing to measure`);
  }
  if (stockFlushes.length !== inserts.length) {
    progress(
      `WARNING: ${inserts.length} accepted INSERTs in the access log but ${stockFlushes.length} "Flushed batch" lines`,
    );
  }
  const skewMs = measured.map((e, i) => Math.abs((stockFlushes[i]?.at ?? NaN) - e.msec * 1000));
  const landingOf = new Map<string, number>();
  measured.forEach((e, i) => {
    const f = stockFlushes[i];
    if (f !== undefined) landingOf.set(f.batchId, e.msec * 1000);
  });
  const perBatch = new Map<string, number>();
  for (
    const line of (await clickhouseQuery(
      `SELECT batch_id, count() FROM ${world.database}.http_log GROUP BY batch_id FORMAT TSV`,
    )).trim().split("\n")
  ) {
    const [id, n] = line.split("\t");
    if (id) perBatch.set(id, Number(n));
  }
  const measuredRows = measured.map((_, i) => perBatch.get(stockFlushes[i]?.batchId ?? "") ?? 0);
  const measuredBytes = measured.map((_, i) => stockFlushes[i]?.bytes ?? 0);
  const windowS = measured.at(-1)!.msec - measured[0]!.msec;
  const windowRows = measuredRows.slice(1).reduce((a, b) => a + b, 0);
  const windowCpu = sampler1.cpuAt(measured.at(-1)!.msec * 1000) -
    sampler1.cpuAt(measured[0]!.msec * 1000);

  // Produce time of record i: the ack of the produce request that carried it.
  const ackOf = new Map<string, number>();
  let a = 0;
  let i = 0;
  for (
    const record of syntheticRecords({ seed, now: genNow, distinctResourceIds: true }).take(
      produced,
    )
  ) {
    while (acks[a]![0] <= i) a++;
    ackOf.set(String(record.resourceId), acks[a]![1]);
    i++;
  }
  const seen = new Map<string, number>();
  const latencies: number[] = [];
  const byInsert = new Map<string, number[]>();
  let unexpected = 0;
  for (
    const line of (await clickhouseQuery(
      `SELECT batch_id, resource_id FROM ${world.database}.http_log FORMAT TSV`,
    )).trim().split("\n")
  ) {
    const [batch, id] = line.split("\t") as [string, string];
    if (id === undefined) continue;
    seen.set(id, (seen.get(id) ?? 0) + 1);
    const ack = ackOf.get(id);
    if (ack === undefined) {
      unexpected++;
      continue;
    }
    const landed = landingOf.get(batch);
    if (landed !== undefined) {
      const s = (landed - ack) / 1000;
      latencies.push(s);
      let list = byInsert.get(batch);
      if (list === undefined) byInsert.set(batch, list = []);
      list.push(s);
    }
  }
  let lost = 0;
  for (const id of ackOf.keys()) if (!seen.has(id)) lost++;
  let duplicated = 0;
  for (const n of seen.values()) if (n > 1) duplicated++;
  latencies.sort((x, y) => x - y);
  const unmasked = Number((await clickhouseQuery(
    `SELECT count() FROM ${world.database}.http_log WHERE NOT endsWith(remote_addr, '.X')`,
  )).trim());

  // The first INSERT may leave as soon as the first records arrive (its slot came during the
  // idle phase), so it is left out, as from the rate.
  const rowsPerRequest = windowRows / (measuredRows.length - 1);
  report = {
    bench: "e2e",
    sustained_rows_per_s: round(windowRows / windowS, 1),
    rows_per_request: Math.round(rowsPerRequest),
    refusals: stockLog.filter((e) => e.status === 503).length,
    lost,
    duplicated,
    latency_p50_s: round(quantile(latencies, 0.5), 1),
    latency_p99_s: round(quantile(latencies, 0.99), 1),
    cpu_s_per_million: round((windowCpu / windowRows) * 1e6, 2),
    peak_rss_mb: round(hwm1, 1),
    rss_largest_sample_mb: rssParts(sampler1.peak()),
    // Context.
    producer_rate: rate,
    produced,
    produced_rate_actual: round(produced / summary.elapsedMs * 1000, 1),
    measured_inserts: measured.length,
    measured_window_s: round(windowS, 2),
    measured_rows_after_first: windowRows,
    insert_spacing_s: measured.slice(1).map((e, k) => round(e.msec - measured[k]!.msec, 3)),
    rows_per_insert: measuredRows,
    bytes_per_insert: measuredBytes,
    fill_of_1mib: round(
      measuredBytes.slice(1).reduce((x, y) => x + y, 0) / (measuredBytes.length - 1) / 1_048_576,
      4,
    ),
    latency_by_insert_p50_s: measured.map((_, k) => {
      const list = (byInsert.get(stockFlushes[k]?.batchId ?? "") ?? []).sort((x, y) => x - y);
      return round(quantile(list, 0.5), 1);
    }),
    latency_rows: latencies.length,
    log_vs_nginx_max_skew_ms: Math.round(Math.max(...skewMs)),
    stock_proxy_statuses: countStatuses(stockLog),
    window_cpu_s: round(windowCpu, 2),
    idle_cpu_ms_per_s: idleCpuMsPerS,
    idle_seconds: idleSeconds,
    cpu_s_per_million_total: round(((cpu1Total - idleCpuS + cpu2Total) / produced) * 1e6, 2),
    service_cpu_s: { stock_phase: round(cpu1Total, 2), drain_phase: round(cpu2Total, 2) },
    drain: {
      rate: drainRate,
      seconds: round(drainS, 1),
      inserts: fastLog.filter((e) => isInsert(e) && e.status === 200).length,
      refusals: fastLog.filter((e) => e.status === 503).length,
      peak_rss_mb: round(hwm2, 1),
    },
    stored,
    unexpected_ids: unexpected,
    unmasked_addresses: unmasked,
    ...reportContext({ host, load, seed, serviceFlags, code }),
  };
} finally {
  load.stop();
  await closeWorld(world, values.keep);
}
await recordResults("e2e", report);
Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(report) + "\n"));

function countStatuses(log: AccessLogEntry[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const e of log) out[e.status] = (out[e.status] ?? 0) + 1;
  return out;
}
