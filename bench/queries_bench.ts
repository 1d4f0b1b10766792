/**
 * Times the Grafana dashboard queries of schema/queries/ against N raw rows of the stock
 * distribution (testing/stock_sql.ts, the SQL twin of tools/synthetic_records.ts), loaded through
 * http_log so that the totals views fill, on ClickHouse 18.16 and on a modern server, both over
 * HTTP; chDB in-process is a third, optional engine.
 *
 * ```sh
 * deno task bench:queries --sizes 1000000,10000000 --engines 18.16,modern --runs 5
 * ```
 *
 * Every query runs for each time range (`--ranges`, ending now) and each number of concurrent
 * panels (`--concurrency`: that many copies at once, each timed), with one point a minute in the
 * time series or, with `--points N`, about N points over the range in whole minutes (what a
 * Grafana panel N pixels wide asks for); `combination_totals` runs for
 * all 15 non-empty combinations of resource, network, status and cache status, with hot keys (the
 * top resource and busiest network of the last complete hour) and cold ones (those of one row).
 * Each is timed once background merges have settled and again after `OPTIMIZE ... FINAL`, where
 * the sizes on disk are taken. The report goes to bench/results/ (bench/_results.ts).
 *
 * Engines: `18.16` is `BENCH_CLICKHOUSE_URL` (default `http://127.0.0.1:8123`); `modern` starts a
 * private `stack/chdb_server.py` on a free port and a temp dir, so big data never loads the
 * shared stack's server; `chdb` runs chDB in-process. `BENCH_DATABASE` (default
 * `anonymizer_bench`) is dropped and recreated. Progress goes to stderr; the last stdout line is
 * the JSON report.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { AnonymizerError } from "../lib/errors.ts";
import { bindQuery, type ParamValue, readDashboardQuery } from "../tools/dashboard_query.ts";
import { type Engine, openChdbEngine, openHttpEngine, sqlRunner } from "../testing/sql_engines.ts";
import { migrate } from "../lib/sink/clickhouse/migrate.ts";
import { recordResults } from "./_results.ts";
import { stockInsertSql } from "../testing/stock_sql.ts";
import { freePort } from "../testing/stack.ts";
import type { QueryTiming, TableSize } from "./_queries_results.ts";

const TOTALS_VIEWS = [
  "http_log_totals_1m",
  "http_log_totals_resource_1h",
  "http_log_totals_ip_1h",
  "http_log_totals_resource_ip_1h",
];
const HOUR = 3600;
const DAY = 86_400;
const RANGES: Record<string, number> = { "1h": HOUR, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY };
const DIMENSIONS = ["resource_id", "remote_addr", "response_status", "cache_status"] as const;
type Dimension = typeof DIMENSIONS[number];
type Keys = Record<Dimension, string>;

const encoder = new TextEncoder();
function progress(message: string): void {
  Deno.stderr.writeSync(encoder.encode(`${new Date().toISOString()} ${message}\n`));
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

/** One timed query: which file, the placeholder values, and how the report labels it. */
interface Case {
  query: string;
  combination: string;
  key: string;
  range: string;
  params: Record<string, ParamValue>;
}

/**
 * Seconds per point of a time series: one a minute, or with `points` > 0 about that many points
 * over the range in whole minutes, as Grafana's `$__interval` gives a panel `points` wide.
 */
function stepFor(range: string, points: number): number {
  if (points <= 0) return 60;
  return Math.max(60, Math.ceil(RANGES[range]! / points / 60) * 60);
}

function cases(
  to: number,
  keys: { hot: Keys; cold: Keys },
  options: { ranges: string[]; points: number },
): Case[] {
  const list: Case[] = [{
    query: "top_resources",
    combination: "-",
    key: "-",
    range: "1h",
    params: { from: to - HOUR },
  }];
  for (const range of options.ranges) {
    const window = { from: to - RANGES[range]!, to, step: stepFor(range, options.points) };
    for (const query of ["traffic_over_time", "cache_status_over_time", "status_codes_over_time"]) {
      list.push({ query, combination: "-", key: "-", range, params: window });
    }
    for (const [key, values] of Object.entries(keys)) {
      list.push({
        query: "ip_totals",
        combination: "remote_addr",
        key,
        range,
        params: { ...window, remote_addr: values.remote_addr },
      });
      list.push({
        query: "resource_day",
        combination: "resource_id",
        key,
        range,
        params: { ...window, resource_id: values.resource_id },
      });
      for (let mask = 1; mask < 16; mask++) {
        const chosen = DIMENSIONS.filter((_, i) => (mask & (1 << i)) !== 0);
        const params: Record<string, ParamValue> = { ...window };
        for (const d of DIMENSIONS) params[d] = chosen.includes(d) ? values[d] : "";
        list.push({
          query: "combination_totals",
          combination: chosen.join("+"),
          key,
          range,
          params,
        });
      }
    }
  }
  return list;
}

async function timeCases(
  engine: Engine,
  database: string,
  list: Case[],
  options: { runs: number; phase: string; concurrency: number[] },
): Promise<QueryTiming[]> {
  const timings: QueryTiming[] = [];
  const templates = new Map<string, string>();
  for (const c of list) {
    if (!templates.has(c.query)) templates.set(c.query, await readDashboardQuery(c.query));
    const sql = bindQuery(templates.get(c.query)!, { database, params: c.params });
    for (const concurrency of options.concurrency) {
      let resultRows = 0;
      const times: number[] = [];
      // The first round warms caches and is not timed.
      for (let run = 0; run <= options.runs; run++) {
        const answers = await Promise.all(
          Array.from({ length: concurrency }, () => engine.run(sql)),
        );
        const data = answers[0]!.data.trim();
        resultRows = data === "" ? 0 : data.split("\n").length;
        if (run > 0) times.push(...answers.map((a) => a.ms));
      }
      times.sort((a, b) => a - b);
      const timing = {
        phase: options.phase,
        query: c.query,
        combination: c.combination,
        key: c.key,
        range: c.range,
        concurrency,
        p50_ms: percentile(times, 0.5),
        p95_ms: percentile(times, 0.95),
        result_rows: resultRows,
      };
      timings.push(timing);
      progress(
        `${engine.label} ${options.phase} ${c.query} ${c.combination} ${c.key} ${c.range} ` +
          `x${concurrency}: p50 ${timing.p50_ms} ms, p95 ${timing.p95_ms} ms`,
      );
    }
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

/** Hot: the top resource and busiest network of the last complete hour; cold: one row's. */
async function lookupKeys(engine: Engine, database: string, now: number) {
  const lastHour = Math.floor(now / HOUR) * HOUR - HOUR;
  const cold = await engine.run(
    `SELECT resource_id, remote_addr, response_status, cache_status FROM ${database}.http_log
     WHERE timestamp >= ${lastHour} AND timestamp < ${lastHour + HOUR} LIMIT 1`,
  );
  const [resourceId = "0", remoteAddr = "", status = "0", cacheStatus = ""] = cold.data.trim()
    .split("\t");
  const hotResource = await engine.run(
    `SELECT resource_id FROM ${database}.http_log_totals_resource_1h
     WHERE hour = toDateTime(${lastHour}) GROUP BY resource_id
     ORDER BY sum(requests) DESC, resource_id LIMIT 1`,
  );
  const hotNetwork = await engine.run(
    `SELECT remote_addr FROM ${database}.http_log_totals_ip_1h
     WHERE hour = toDateTime(${lastHour}) GROUP BY remote_addr
     ORDER BY sum(requests) DESC, remote_addr LIMIT 1`,
  );
  return {
    hot: {
      resource_id: hotResource.data.trim(),
      remote_addr: hotNetwork.data.trim(),
      response_status: "200",
      cache_status: "HIT",
    },
    cold: {
      resource_id: resourceId,
      remote_addr: remoteAddr,
      response_status: status,
      cache_status: cacheStatus,
    },
  };
}

interface BenchOptions {
  database: string;
  runs: number;
  chunk: number;
  days: number;
  ranges: string[];
  points: number;
  concurrency: number[];
}

async function benchOne(engine: Engine, size: number, options: BenchOptions) {
  const { database, runs } = options;
  await engine.run(`DROP DATABASE IF EXISTS ${database}`);
  await migrate(sqlRunner(engine), { database });
  const now = Math.floor(Date.now() / 1000);
  const span = options.days * DAY;
  const loadStarted = performance.now();
  // Chunks arrive in time order, each covering its share of the span, as the service inserts.
  const chunks = Math.ceil(size / options.chunk);
  for (let loaded = 0, batch = 1; loaded < size; batch++) {
    const rows = Math.min(options.chunk, size - loaded);
    await engine.run(stockInsertSql(`${database}.http_log`, rows, {
      first: now - span + 1 + Math.floor((batch - 1) * span / chunks),
      last: now - span + Math.floor(batch * span / chunks),
      batchId: batch,
    }));
    loaded += rows;
    const elapsed = (performance.now() - loadStarted) / 1000;
    progress(`${engine.label}: loaded ${loaded}/${size} rows in ${elapsed.toFixed(1)} s`);
  }
  const loadSeconds = (performance.now() - loadStarted) / 1000;
  const settleSeconds = await settleMerges(engine, database, 900);
  progress(`${engine.label}: background merges settled after ${settleSeconds.toFixed(1)} s`);

  const keys = await lookupKeys(engine, database, now);
  const list = cases(now, keys, options);
  const timing = { runs, concurrency: options.concurrency };
  const settledTables = await tableSizes(engine, database);
  const settled = await timeCases(engine, database, list, { ...timing, phase: "settled" });

  const optimizeStarted = performance.now();
  for (const table of ["http_log", ...TOTALS_VIEWS]) {
    await engine.run(`OPTIMIZE TABLE ${database}.${table} FINAL`);
    progress(`${engine.label}: optimized ${table}`);
  }
  const optimizeSeconds = (performance.now() - optimizeStarted) / 1000;
  const optimized = await timeCases(engine, database, list, { ...timing, phase: "optimized" });

  return {
    engine: engine.label,
    size,
    days: options.days,
    keys,
    load_seconds: tenths(loadSeconds),
    settle_seconds: tenths(settleSeconds),
    optimize_final_seconds: tenths(optimizeSeconds),
    tables_settled: settledTables,
    tables_optimized: await tableSizes(engine, database),
    queries: [...settled, ...optimized],
  };
}

/** A private modern server (stack/chdb_server.py) on a temp dir, stopped with SIGTERM. */
async function startModernServer(): Promise<{ url: string; stop(): Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "bench_modern_" });
  const port = freePort();
  const child = new Deno.Command("python3", {
    args: [new URL("../stack/chdb_server.py", import.meta.url).pathname, dir, String(port)],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("ready on")) {
    const { value, done } = await lines.read();
    if (done) {
      throw new AnonymizerError(
        `Cannot start the modern server as stack/chdb_server.py exited: output was ${
          JSON.stringify(seen)
        }`,
        { code: "bench_server_failed" },
      );
    }
    seen += value;
  }
  return {
    url: `http://127.0.0.1:${port}`,
    stop: async () => {
      child.kill("SIGTERM");
      while (!(await lines.read()).done);
      await child.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

async function openEngine(kind: string): Promise<{ engine: Engine; close(): Promise<void> }> {
  if (kind === "18.16") {
    const engine = await openHttpEngine(
      Deno.env.get("BENCH_CLICKHOUSE_URL") ?? "http://127.0.0.1:8123",
    );
    return { engine, close: () => engine.close() };
  }
  if (kind === "modern") {
    const server = await startModernServer();
    const engine = await openHttpEngine(server.url);
    return {
      engine: { ...engine, label: `${engine.label} (chDB server over HTTP)` },
      close: async () => {
        await engine.close();
        await server.stop();
      },
    };
  }
  if (kind === "chdb") {
    const dir = await Deno.makeTempDir({ prefix: "chdb_" });
    const engine = await openChdbEngine(dir);
    return {
      engine: { ...engine, label: `${engine.label} (in-process)` },
      close: async () => {
        await engine.close();
        await Deno.remove(dir, { recursive: true });
      },
    };
  }
  throw new AnonymizerError(
    `Cannot bench as the engine must be 18.16, modern or chdb: current value is "${kind}"`,
    { code: "config_invalid" },
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "1000000" },
      engines: { type: "string", default: "18.16,modern" },
      runs: { type: "string", default: "5" },
      chunk: { type: "string", default: "1000000" },
      days: { type: "string", default: "1" },
      ranges: { type: "string", default: "1h,1d,7d,30d" },
      concurrency: { type: "string", default: "1,8" },
      points: { type: "string", default: "0" },
    },
  });
  const ranges = values.ranges.split(",");
  for (const range of ranges) {
    if (!(range in RANGES)) {
      throw new AnonymizerError(
        `Cannot bench as each range must be one of ${
          Object.keys(RANGES).join(", ")
        }: current value is "${range}"`,
        { code: "config_invalid" },
      );
    }
  }
  const options: BenchOptions = {
    database: Deno.env.get("BENCH_DATABASE") ?? "anonymizer_bench",
    runs: Number(values.runs),
    chunk: Number(values.chunk),
    days: Number(values.days),
    ranges,
    points: Number(values.points),
    concurrency: values.concurrency.split(",").map(Number),
  };
  if (!Number.isInteger(options.points) || options.points < 0) {
    throw new AnonymizerError(
      `Cannot bench as --points must be an integer ≥ 0: current value is "${values.points}"`,
      { code: "config_invalid" },
    );
  }
  const sizes = values.sizes.split(",").map(Number);
  const started = new Date();
  const results: unknown[] = [];
  const report = {
    runs: options.runs,
    days: options.days,
    ranges,
    points: options.points,
    concurrency: options.concurrency,
    results,
  };
  for (const kind of values.engines.split(",")) {
    const { engine, close } = await openEngine(kind);
    try {
      for (const size of sizes) {
        results.push(await benchOne(engine, size, options));
        // Rewritten after each size, so a long run that fails late keeps what it measured.
        const file = await recordResults("queries", report, { date: started });
        progress(`recorded ${file.pathname}`);
      }
      await engine.run(`DROP DATABASE IF EXISTS ${options.database}`);
    } finally {
      await close();
    }
  }
  Deno.stdout.writeSync(encoder.encode(JSON.stringify({ bench: "queries", ...report }) + "\n"));
}

if (import.meta.main) await main();
