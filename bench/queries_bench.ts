/**
 * Times the Grafana dashboard queries of schema/queries/ against N raw rows of the stock
 * producer's distribution, loaded through http_log so that the totals views fill, on a
 * ClickHouse server over HTTP (direct, not ch-proxy) and on chDB.
 *
 * ```sh
 * deno task bench:queries --sizes 1000000,10000000 --engines clickhouse,chdb --runs 5 --chunk 1000000
 * ```
 *
 * Each query is timed once merges have settled and again after `OPTIMIZE ... FINAL`, where the
 * sizes on disk are taken; docs/performance.md reports a run.
 *
 * Env: `BENCH_CLICKHOUSE_URL` (default `http://127.0.0.1:8123`), `BENCH_DATABASE` (default
 * `anonymizer_bench`, dropped and recreated), `BENCH_CHDB_DIR` (default a temp dir, removed).
 * Progress goes to stderr; the last stdout line is the JSON report.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { AnonymizerError } from "../lib/errors.ts";
import { bindQuery, type ParamValue, readDashboardQuery } from "../lib/dashboard_query.ts";
import { type Engine, openChdbEngine, openHttpEngine, sqlRunner } from "./_engines.ts";
import { migrate } from "../lib/migrate.ts";

const TOTALS_VIEWS = ["http_log_totals_1m", "http_log_totals_resource_1h", "http_log_totals_ip_1h"];
const DAY = 86_400;

interface QueryTiming {
  p50_ms: number;
  p95_ms: number;
  result_rows: number;
}

interface TableSize {
  rows: number;
  parts: number;
  bytes_on_disk: number;
  bytes_per_row: number;
}

const encoder = new TextEncoder();
function progress(message: string): void {
  Deno.stderr.writeSync(encoder.encode(`${new Date().toISOString()} ${message}\n`));
}

/**
 * `rows` of the stock producer's distribution, generated server-side, with timestamps uniform over
 * the seconds [first, last]; `batch` fills batch_id.
 */
function loadStatement(
  database: string,
  rows: number,
  seconds: { first: number; last: number },
  batch: number,
): string {
  const words = [
    "static",
    "media",
    "content",
    "images",
    "video",
    "assets",
    "files",
    "stream",
    "thumbnails",
    "preview",
    "live",
    "vod",
    "downloads",
    "public",
    "cache",
    "data",
  ];
  const list = (values: string[]) => `[${values.map((v) => `'${v}'`).join(",")}]`;
  // rand(n) with distinct n keeps ClickHouse from folding the calls into one value.
  const word = (n: number) => `${list(words)}[rand(${n}) % ${words.length} + 1]`;
  return `
INSERT INTO ${database}.http_log
    (timestamp, resource_id, bytes_sent, request_time_milli, response_status, cache_status,
     method, remote_addr, url, batch_id)
SELECT
    toDateTime(${seconds.first} + rand(1) % ${seconds.last - seconds.first + 1}),
    100000000 + rand64(2) % 900000000,
    rand64(3) % 2097152,
    rand(4) % 30001,
    [200, 301, 400, 403, 404, 500, 502, 504][rand(5) % 8 + 1],
    ${list(["HIT", "MISS", "BYPASS", "STALE", "EXPIRED", "REVALIDATED", "UPDATING", "SCARCE"])}
        [rand(6) % 8 + 1],
    ['GET', 'HEAD'][rand(7) % 2 + 1],
    concat(toString(rand(8) % 256), '.', toString(rand(9) % 256), '.', toString(rand(10) % 256),
        '.X'),
    concat('/', ${word(11)}, '/', ${word(12)}, '/', ${word(13)}, '/', ${word(14)}, '/',
        ${word(15)}, '/', substring(lower(hex(MD5(toString(rand64(16))))), 1, 20 + rand(17) % 13),
        ${list(["", ".jpg", ".png", ".js", ".css", ".m3u8", ".ts", ".mp4"])}[rand(18) % 8 + 1]),
    ${batch}
FROM numbers(${rows})`;
}

function percentile(sorted: number[], p: number): number {
  const value = sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? NaN;
  return Math.round(value * 100) / 100;
}

async function tableSizes(engine: Engine, database: string): Promise<Record<string, TableSize>> {
  // A view's storage is `.inner.<view>` on 18.16 and `.inner_id.<view uuid>` on modern servers.
  const viewOf = new Map<string, string>();
  if (engine.modern) {
    const tables = await engine.run(
      `SELECT toString(uuid), name FROM system.tables WHERE database = '${database}'`,
    );
    for (const line of tables.data.trim().split("\n")) {
      const [uuid = "", name = ""] = line.split("\t");
      viewOf.set(`.inner_id.${uuid}`, name);
    }
  }
  const parts = await engine.run(
    `SELECT table, sum(rows), count(), sum(bytes_on_disk) FROM system.parts
     WHERE database = '${database}' AND active GROUP BY table`,
  );
  const sizes: Record<string, TableSize> = {};
  for (const line of parts.data.trim().split("\n")) {
    const [table = "", rows = "0", count = "0", bytes = "0"] = line.split("\t");
    const name = viewOf.get(table) ?? table.replace(/^\.inner\./, "");
    sizes[name] = {
      rows: Number(rows),
      parts: Number(count),
      bytes_on_disk: Number(bytes),
      bytes_per_row: Math.round(Number(bytes) / Number(rows) * 100) / 100,
    };
  }
  return sizes;
}

async function queryNames(): Promise<string[]> {
  const names = [];
  for await (const entry of Deno.readDir(new URL("../schema/queries/", import.meta.url))) {
    if (entry.name.endsWith(".sql")) names.push(entry.name.replace(/\.sql$/, ""));
  }
  return names.sort();
}

async function timeQueries(
  engine: Engine,
  database: string,
  params: Record<string, ParamValue>,
  options: { runs: number; phase: string },
): Promise<Record<string, QueryTiming>> {
  const to = Number(params.to);
  const timings: Record<string, QueryTiming> = {};
  for (const name of await queryNames()) {
    const from = to - (name === "top_resources" ? 3600 : DAY);
    const sql = bindQuery(await readDashboardQuery(name), {
      database,
      params: { ...params, from },
    });
    let resultRows = 0;
    const times: number[] = [];
    for (let run = 0; run <= options.runs; run++) {
      const { data, ms } = await engine.run(sql);
      resultRows = data.trim() === "" ? 0 : data.trim().split("\n").length;
      if (run > 0) times.push(ms);
    }
    times.sort((a, b) => a - b);
    const timing = {
      p50_ms: percentile(times, 0.5),
      p95_ms: percentile(times, 0.95),
      result_rows: resultRows,
    };
    timings[name] = timing;
    progress(`${engine.label} ${options.phase}: ${name} p50 ${timing.p50_ms} ms`);
  }
  return timings;
}

/** Waits until no merge has run on `database` for three polls in a row, or `limitSeconds`. */
async function settleMerges(engine: Engine, database: string, limitSeconds: number) {
  const started = performance.now();
  for (let idlePolls = 0; idlePolls < 3;) {
    if (performance.now() - started > limitSeconds * 1000) break;
    await new Promise((resolve) => setTimeout(resolve, 5000));
    const merges = await engine.run(
      `SELECT count() FROM system.merges WHERE database = '${database}'`,
    );
    idlePolls = merges.data.trim() === "0" ? idlePolls + 1 : 0;
  }
  return (performance.now() - started) / 1000;
}

const tenths = (seconds: number) => Math.round(seconds * 10) / 10;

async function benchOne(
  engine: Engine,
  size: number,
  options: { database: string; runs: number; chunk: number },
) {
  const { database, runs } = options;
  await engine.run(`DROP DATABASE IF EXISTS ${database}`);
  await migrate(sqlRunner(engine), { database });
  const now = Math.floor(Date.now() / 1000);
  const loadStarted = performance.now();
  // Chunks arrive in time order, each covering its share of the day, as the service inserts.
  const chunks = Math.ceil(size / options.chunk);
  for (let loaded = 0, batch = 1; loaded < size; batch++) {
    const rows = Math.min(options.chunk, size - loaded);
    const seconds = {
      first: now - DAY + 1 + Math.floor((batch - 1) * DAY / chunks),
      last: now - DAY + Math.floor(batch * DAY / chunks),
    };
    await engine.run(loadStatement(database, rows, seconds, batch));
    loaded += rows;
    const elapsed = (performance.now() - loadStarted) / 1000;
    progress(`${engine.label}: loaded ${loaded}/${size} rows in ${elapsed.toFixed(1)} s`);
  }
  const loadSeconds = (performance.now() - loadStarted) / 1000;
  const settleSeconds = await settleMerges(engine, database, 900);
  progress(`${engine.label}: background merges settled after ${settleSeconds.toFixed(1)} s`);

  // A row from the last hour gives the single resource, network and combination to look up.
  const sample = await engine.run(
    `SELECT resource_id, remote_addr, response_status, cache_status FROM ${database}.http_log
     WHERE timestamp > ${now - 3600} LIMIT 1`,
  );
  const [resourceId = "0", remoteAddr = "", status = "0", cacheStatus = ""] = sample.data.trim()
    .split("\t");
  const params: Record<string, ParamValue> = {
    to: now,
    step: 60,
    resource_id: BigInt(resourceId),
    remote_addr: remoteAddr,
    response_status: Number(status),
    cache_status: cacheStatus,
  };
  const settledTables = await tableSizes(engine, database);
  const settled = await timeQueries(engine, database, params, { runs, phase: "settled" });

  const optimizeStarted = performance.now();
  for (const table of ["http_log", ...TOTALS_VIEWS]) {
    await engine.run(`OPTIMIZE TABLE ${database}.${table} FINAL`);
    progress(`${engine.label}: optimized ${table}`);
  }
  const optimizeSeconds = (performance.now() - optimizeStarted) / 1000;
  const optimized = await timeQueries(engine, database, params, { runs, phase: "optimized" });

  return {
    engine: engine.label,
    size,
    load_seconds: tenths(loadSeconds),
    settle_seconds: tenths(settleSeconds),
    optimize_final_seconds: tenths(optimizeSeconds),
    parts_settled: Object.fromEntries(
      Object.entries(settledTables).map(([table, size]) => [table, size.parts]),
    ),
    queries_settled: settled,
    queries_optimized: optimized,
    tables_optimized: await tableSizes(engine, database),
  };
}

async function hardware() {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  return {
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    memory_gib: Math.round(Deno.systemMemoryInfo().total / 2 ** 30),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "1000000" },
      engines: { type: "string", default: "clickhouse,chdb" },
      runs: { type: "string", default: "5" },
      chunk: { type: "string", default: "1000000" },
    },
  });
  const sizes = values.sizes.split(",").map(Number);
  const options = {
    database: Deno.env.get("BENCH_DATABASE") ?? "anonymizer_bench",
    runs: Number(values.runs),
    chunk: Number(values.chunk),
  };
  const results = [];
  for (const kind of values.engines.split(",")) {
    let engine: Engine;
    let chdbDir: string | undefined;
    if (kind === "clickhouse") {
      engine = await openHttpEngine(
        Deno.env.get("BENCH_CLICKHOUSE_URL") ?? "http://127.0.0.1:8123",
      );
    } else if (kind === "chdb") {
      chdbDir = Deno.env.get("BENCH_CHDB_DIR") ?? await Deno.makeTempDir({ prefix: "chdb_" });
      engine = await openChdbEngine(chdbDir);
    } else {
      throw new AnonymizerError(
        `Cannot bench as the engine is unknown: current value is "${kind}"`,
        {
          code: "config_invalid",
        },
      );
    }
    try {
      for (const size of sizes) results.push(await benchOne(engine, size, options));
      await engine.run(`DROP DATABASE IF EXISTS ${options.database}`);
    } finally {
      await engine.close();
      if (chdbDir !== undefined && Deno.env.get("BENCH_CHDB_DIR") === undefined) {
        await Deno.remove(chdbDir, { recursive: true });
      }
    }
  }
  const report = { bench: "queries", hardware: await hardware(), runs: options.runs, results };
  Deno.stdout.writeSync(encoder.encode(JSON.stringify(report) + "\n"));
}

if (import.meta.main) await main();
