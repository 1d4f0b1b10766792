/**
 * Memory and disk of a one-hour backlog: ClickHouse becomes unreachable, an
 * hour of traffic at the target rate (280 rows/s × 3600 s = 1,008,000
 * records) arrives, the service queues it all in Deno KV, then ClickHouse
 * comes back and the service drains.
 *
 * ```sh
 * deno task bench:backlog [--rows 1008000] [--drain-seconds 120] [--seed 2] [--proxy-rate 600r/m]
 *   [--keep] [--service-flags=<deno flags for the service, space-separated>]
 * ```
 *
 * Topology: service (child process) → private nginx (600r/m, stock 1 MiB
 * body limit) → the fault proxy (testing/fault_proxy.ts) in this process → ClickHouse. The service
 * starts with the forwarder up, learns the server version, then the forwarder
 * goes down (accepts and closes, so nginx answers 502 and the service keeps
 * retrying its sealed batch), the records are produced as fast as Kafka
 * acknowledges, and once the service's `anonymizer_records_queued_total`
 * equals the records produced, the forwarder comes back up and the service drains for
 * `--drain-seconds` (or until the queue is empty). The fast proxy only
 * shortens the drain; the queueing phase does not depend on it.
 *
 * Figures:
 * - `backlog_rows`: rows queued in KV when the queueing phase ended.
 * - `kv_disk_mb`: KV database + WAL + SHM files then, MiB.
 * - `peak_rss_mb.queueing`: VmHWM of the service when queueing ended (the
 *   peak since its start); `peak_rss_mb.draining`: VmHWM at the end when
 *   draining raised it, else the largest VmRSS sampled (every second) while
 *   draining. `rss_largest_sample_mb` splits sampled RSS into anonymous
 *   (heaps) and file-backed (the deno binary) parts.
 * - `queue_ms_per_million`: service CPU (utime+stime, /proc) from the first
 *   produced record to the end of queueing, ms per million records queued.
 *   It includes the service's failed retries to the dead ClickHouse and one
 *   seal, a small share.
 *
 * Benchmarks measure; nothing here asserts a timing. Progress goes to
 * stderr; the last stdout line is the JSON report.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { recordResults } from "./_results.ts";
import { produce } from "../tools/produce.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import { createWorld, delay } from "../testing/pipeline.ts";
import { CLICKHOUSE_URL, clickhouseQuery, KAFKA_BROKERS } from "../testing/stack.ts";
import {
  closeWorld,
  codeVersion,
  hostFacts,
  kvDiskBytes,
  LoadSampler,
  ProcSampler,
  progress,
  reportContext,
  round,
  rssParts,
  spawnJsonService,
} from "./_service_bench.ts";
import { startFaultProxy } from "../testing/fault_proxy.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rows: { type: "string", default: String(280 * 3600) },
    "drain-seconds": { type: "string", default: "120" },
    seed: { type: "string", default: "2" },
    "proxy-rate": { type: "string", default: "600r/m" },
    keep: { type: "boolean", default: false },
    "service-flags": { type: "string", default: "" },
  },
});
const serviceFlags = values["service-flags"].split(" ").filter((f) => f !== "");
const rows = Number(values.rows);
const drainSeconds = Number(values["drain-seconds"]);
const seed = Number(values.seed);
if (!Number.isInteger(rows) || rows < 1 || !(drainSeconds >= 0)) {
  throw new Error(`Cannot run as --rows must be an integer ≥ 1 and --drain-seconds ≥ 0`);
}
const QUEUE_TIMEOUT_MS = 20 * 60_000;
const MIB = 1_048_576;

const host = hostFacts();
// Others may edit the work tree while a long run goes on: the service starts from this.
const code = codeVersion();
const load = new LoadSampler();
const forwarder = await startFaultProxy(new URL(CLICKHOUSE_URL).host);
const world = await createWorld({
  proxy: { rate: values["proxy-rate"], upstream: forwarder.hostPort },
});
const kvPath = world.env.KV_PATH!;
progress(
  `world: topic ${world.topic}, database ${world.database}, proxy ${world.proxy.url} → ${forwarder.hostPort} → ClickHouse, KV ${kvPath}`,
);

let report: Record<string, unknown> | undefined;
try {
  let flushed = 0;
  let flushedRows = 0;
  let failures = 0;
  const service = await spawnJsonService(world, {
    name: "service",
    denoFlags: serviceFlags,
    onRecord: (r) => {
      if (r.message.startsWith("Flushed batch")) {
        flushed++;
        flushedRows += Number(r.rows);
      } else if (r.level === "WARN") {
        failures++;
      } else if (r.level === "ERROR" || r.level === "FATAL") {
        progress(`service ${r.level}: ${r.message.slice(0, 300)}`);
      }
    },
  });
  const sampler = new ProcSampler(service.child.pid);
  await service.waitFor((r) => r.message.includes("consuming"), 60_000);
  // The version check is the first request; once it passed, ClickHouse "goes away".
  const versionDeadline = Date.now() + 30_000;
  while (!(await world.proxy.readAccessLog()).some((e) => e.status === 200)) {
    if (Date.now() > versionDeadline) throw new Error("The service's version check never passed");
    await delay(200);
  }
  forwarder.mode = "down";
  progress(`service pid ${service.child.pid} up; ClickHouse now unreachable (nginx answers 502)`);

  // ---- Queueing phase.
  const produceStart = Date.now();
  const cpuAtStart = sampler.sample()?.cpuS ?? 0;
  let lastReport = 0;
  const genNow = Date.now();
  const producing = produce(KAFKA_BROKERS.split(","), {
    topic: world.topic,
    rate: 0,
    count: rows,
    seed,
    now: genNow,
    distinctResourceIds: true,
    onProgress: (p) => {
      if (Date.now() - lastReport >= 10_000) {
        lastReport = Date.now();
        const s = sampler.last;
        progress(
          `produced ${p.sent}/${rows}; service RSS ${round(s?.rssMb ?? 0)} MiB, CPU ${
            round(s?.cpuS ?? 0)
          } s`,
        );
      }
    },
  });
  const summary = await producing;
  const produceS = (Date.now() - produceStart) / 1000;
  progress(`produced ${summary.sent} records in ${round(produceS)} s`);
  let queued = 0;
  const queueDeadline = produceStart + QUEUE_TIMEOUT_MS;
  let lastStatus = 0;
  while (Date.now() < queueDeadline) {
    try {
      // This process's own counter: exact, and it never includes rows an earlier process queued.
      queued = (await service.scrape()).series.get("anonymizer_records_queued_total") ?? queued;
    } catch {
      // Busy; try again.
    }
    if (queued >= summary.sent) break;
    if (Date.now() - lastStatus >= 10_000) {
      lastStatus = Date.now();
      const s = sampler.last;
      progress(
        `queued ${queued}/${summary.sent}; RSS ${round(s?.rssMb ?? 0)} MiB, CPU ${
          round(s?.cpuS ?? 0)
        } s, load ${Deno.readTextFileSync("/proc/loadavg").split(" ")[0]}`,
      );
    }
    await delay(1_000);
  }
  const queuedAt = Date.now();
  const q = sampler.sample()!;
  const queueCpuS = q.cpuS - cpuAtStart;
  const kvBytes = await kvDiskBytes(kvPath);
  const kvMain = (await Deno.stat(kvPath)).size;
  progress(
    `queued ${queued} rows in ${round((queuedAt - produceStart) / 1000)} s; KV ${
      round(kvBytes / MIB)
    } MiB; RSS ${round(q.rssMb)} MiB, peak ${round(q.hwmMb)} MiB`,
  );
  // A short idle spell shows whether the queueing peak is retained.
  await delay(15_000);
  const idle = sampler.sample()!;
  const failuresWhileDown = failures;

  // ---- Draining phase.
  forwarder.mode = "pass";
  const drainStart = Date.now();
  const flushedBefore = flushed;
  const flushedRowsBefore = flushedRows;
  progress(`ClickHouse reachable again; draining for up to ${drainSeconds} s`);
  let remaining = queued;
  let lastDrainReport = 0;
  while (Date.now() - drainStart < drainSeconds * 1000) {
    await delay(1_000);
    try {
      const m = (await service.scrape()).series;
      remaining = (m.get("anonymizer_records_queued_total") ?? 0) -
        (m.get("anonymizer_records_flushed_total") ?? 0);
    } catch {
      // Busy; try again.
    }
    if (Date.now() - lastDrainReport >= 10_000) {
      lastDrainReport = Date.now();
      const s = sampler.last;
      progress(
        `drained ${flushed - flushedBefore} batches, ${flushedRows - flushedRowsBefore} rows; ` +
          `${remaining} left; RSS ${round(s?.rssMb ?? 0)} MiB`,
      );
    }
    if (remaining === 0) break;
  }
  const drainEnd = Date.now();
  const d = sampler.sample()!;
  await service.kill("SIGTERM");
  sampler.stop();
  const drainedBatches = flushed - flushedBefore;
  const drainedRows = flushedRows - flushedRowsBefore;

  const stored = Number(
    (await clickhouseQuery(`SELECT count() FROM ${world.database}.http_log`)).trim(),
  );
  let exactness: Record<string, number> | string = "not fully drained";
  if (stored >= summary.sent) {
    const produced = new Set<string>();
    for (
      const r of syntheticRecords({ seed, now: genNow, distinctResourceIds: true }).take(
        summary.sent,
      )
    ) produced.add(String(r.resourceId));
    let lost = 0;
    let duplicated = 0;
    const seen = new Map<string, number>();
    for (
      const id of (await clickhouseQuery(
        `SELECT resource_id FROM ${world.database}.http_log FORMAT TSV`,
      )).trim().split("\n")
    ) seen.set(id, (seen.get(id) ?? 0) + 1);
    for (const id of produced) if (!seen.has(id)) lost++;
    for (const n of seen.values()) if (n > 1) duplicated++;
    exactness = { lost, duplicated };
  }

  report = {
    bench: "backlog",
    backlog_rows: queued,
    kv_disk_mb: round(kvBytes / MIB, 1),
    peak_rss_mb: {
      queueing: round(q.hwmMb, 1),
      // VmHWM when draining set a new high (exact), else the largest 1 s sample while draining.
      draining: round(
        d.hwmMb > idle.hwmMb ? d.hwmMb : sampler.maxRss(drainStart, drainEnd + 1),
        1,
      ),
    },
    queue_ms_per_million: Math.round((queueCpuS * 1000 / queued) * 1e6),
    // Context.
    produced: summary.sent,
    produce_s: round(produceS, 1),
    queue_s: round((queuedAt - produceStart) / 1000, 1),
    queue_rows_per_s: Math.round(queued / ((queuedAt - produceStart) / 1000)),
    queue_cpu_s: round(queueCpuS, 2),
    kv_main_file_mb: round(kvMain / MIB, 1),
    kv_bytes_per_row: round(kvBytes / queued, 1),
    rss_largest_sample_mb: {
      queueing: rssParts(sampler.peak(produceStart, queuedAt)),
      draining: rssParts(sampler.peak(drainStart, drainEnd + 1)),
    },
    rss_at_queued_mb: rssParts(q),
    rss_after_15s_idle_mb: rssParts(idle),
    requests_failed_while_down: failuresWhileDown,
    upstream_connections_refused: forwarder.connections.filter((c) => c.state === "refused").length,
    drain: {
      seconds: round((drainEnd - drainStart) / 1000, 1),
      batches: drainedBatches,
      rows: drainedRows,
      rows_per_batch: drainedBatches === 0 ? 0 : Math.round(drainedRows / drainedBatches),
      rows_left: remaining,
      rss_end_mb: rssParts(d),
      hwm_end_mb: round(d.hwmMb, 1),
      cpu_s: round(d.cpuS - idle.cpuS, 2),
      exactly_once: exactness,
    },
    ...reportContext({ host, load, seed, serviceFlags, code }),
  };
} finally {
  load.stop();
  await closeWorld(world, values.keep);
  await forwarder.close();
}
await recordResults("backlog", report);
Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(report) + "\n"));
