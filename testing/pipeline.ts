/**
 * Harness for end-to-end tests of the pipeline on the real stack: each test
 * gets its own topic, consumer group, ClickHouse database, KV file and
 * private ch-proxy (on the shared Kafka and ClickHouse, or on private ones),
 * and runs the service in-process or as a child process whose log it follows
 * live (so it can be signalled at a precise moment, or killed with SIGKILL).
 *
 * @module
 */
import assert from "node:assert/strict";
import { ClickHouseClient } from "../lib/sink/clickhouse/clickhouse_client.ts";
import { type Config, loadConfig } from "../lib/config.ts";
import { migrate } from "../lib/sink/clickhouse/migrate.ts";
import { produce, type ProduceOptions, type ProduceSummary } from "../tools/produce.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { runTaskFlags } from "./run_task_flags.ts";
import {
  CLICKHOUSE_URL,
  clickhouseQuery,
  createTopic,
  freePort,
  KAFKA_BROKERS,
  startProxy,
  type StartProxyOptions,
  type TestProxy,
  uniqueName,
} from "./stack.ts";

const ROOT = new URL("..", import.meta.url);

/** Everything one end-to-end test owns. */
export interface World extends AsyncDisposable {
  /** Source topic (3 partitions). */
  topic: string;
  /** Dead-letter topic. */
  dlqTopic: string;
  /** Consumer group. */
  group: string;
  /** ClickHouse database, migrated. */
  database: string;
  /** Private ch-proxy in front of ClickHouse. */
  proxy: TestProxy;
  /** Spacing the service is configured with, ms. */
  spacingMs: number;
  /** Temp folder for KV files and logs. */
  dir: string;
  /** Environment for the service (anonymizer settings only). */
  env: Record<string, string>;
  /** Removes the proxy, the database and the temp folder. */
  close(): Promise<void>;
}

/** ClickHouse a world's database lives in, when it is not the shared stack's. */
export interface WorldClickHouse {
  /** HTTP endpoint, e.g. `"http://127.0.0.1:40123"`. */
  readonly url: string;
  /**
   * Whether the server runs; while it does not, closing the world leaves the
   * database to the server's own cleanup. Default: `true`.
   */
  readonly running?: boolean;
}

/** Options of {@linkcode createWorld}. */
export interface WorldOptions {
  /** Proxy options. Default: `{ rate: "120r/m" }` (one request per 500 ms) in front of the world's ClickHouse. */
  proxy?: StartProxyOptions;
  /** Spacing the service assumes, ms. Default: derived from the proxy rate. */
  spacingMs?: number;
  /** Extra service settings. Default: none. */
  env?: Record<string, string>;
  /** Prefix of the topic, database and temp folder names. Default: `"e2e"`. */
  prefix?: string;
  /**
   * Kafka bootstrap brokers the topics are created on and the service reads,
   * comma-separated, e.g. a private broker's (testing/kafka_broker.ts).
   * Default: {@linkcode KAFKA_BROKERS}.
   */
  brokers?: string;
  /**
   * ClickHouse the database is migrated into and the proxy forwards to, e.g.
   * a private server (testing/clickhouse_server.ts) a test stops and starts.
   * Default: the shared stack's, {@linkcode CLICKHOUSE_URL}.
   */
  clickhouse?: WorldClickHouse;
}

/** Spacing nginx enforces for a `limit_req` rate such as `"120r/m"`: 1000 / floor(rate·1000/period) s. */
export function spacingFor(rate: string): number {
  const m = /^(\d+)r\/([sm])$/.exec(rate);
  if (m === null) {
    throw new Error(
      `Cannot derive spacing as the rate is not Nr/s or Nr/m: current value is "${rate}"`,
    );
  }
  const perMs = Math.floor((Number(m[1]) * 1000) / (m[2] === "m" ? 60 : 1));
  return 1_000_000 / perMs;
}

/** Sets up a fresh topic, database and proxy. */
export async function createWorld(options: WorldOptions = {}): Promise<World> {
  const prefix = options.prefix ?? "e2e";
  const brokers = options.brokers ?? KAFKA_BROKERS;
  const clickhouse = options.clickhouse ?? { url: CLICKHOUSE_URL };
  const proxyOptions = { rate: "120r/m", upstream: new URL(clickhouse.url).host, ...options.proxy };
  const topic = await createTopic(uniqueName(prefix), 3, { brokers });
  const dlqTopic = await createTopic(`${topic}_dlq`, 1, { brokers });
  const database = uniqueName(prefix);
  await migrate(new ClickHouseClient(clickhouse.url), { database });
  const proxy = await startProxy(proxyOptions);
  const spacingMs = options.spacingMs ?? spacingFor(proxyOptions.rate);
  const dir = await Deno.makeTempDir({ prefix: `anonymizer-${prefix}-` });
  const env: Record<string, string> = {
    KAFKA_BROKERS: brokers,
    KAFKA_TOPIC: topic,
    KAFKA_DLQ_TOPIC: dlqTopic,
    KAFKA_GROUP_ID: `${topic}_group`,
    CLICKHOUSE_URL: proxy.url,
    CLICKHOUSE_DATABASE: database,
    CLICKHOUSE_SPACING_MS: String(spacingMs),
    CLICKHOUSE_MARGIN_MS: "100",
    KV_PATH: `${dir}/a/queue.kv`,
    METRICS_LISTEN: "",
    LOG_LEVEL: "info",
    ...options.env,
  };
  const world: World = {
    topic,
    dlqTopic,
    group: env.KAFKA_GROUP_ID!,
    database,
    proxy,
    spacingMs,
    dir,
    env,
    async close() {
      await proxy.close();
      if (clickhouse.running !== false) {
        await clickhouseQuery(`DROP DATABASE IF EXISTS ${database}`, { url: clickhouse.url });
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
    [Symbol.asyncDispose]() {
      return world.close();
    },
  };
  return world;
}

/** The service configuration for `world`, with `overrides` on top. */
export function worldConfig(world: World, overrides: Record<string, string> = {}): Config {
  return loadConfig({ ...world.env, ...overrides }, []);
}

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

/**
 * A `now` for synthetic records, whose timestamps fall in the hour before it,
 * that keeps them in one UTC day: `at`, or the last millisecond of the day
 * before within the first hour after midnight. A batch holds rows of one day,
 * so records spread over two days make two batches where a test expects one.
 */
export function sameDayNow(at: number = Date.now()): number {
  const intoDay = at % DAY_MS;
  return intoDay < HOUR_MS ? at - intoDay - 1 : at;
}

/**
 * Produces `count` distinct-id records into the world's topic; returns them
 * and the summary. `now` defaults to {@linkcode sameDayNow}.
 */
export async function produceRecords(
  world: World,
  options: Omit<ProduceOptions, "topic"> & { count: number; seed: number },
): Promise<{ records: HttpLogRecord[]; summary: ProduceSummary }> {
  const now = options.now ?? sameDayNow();
  const summary = await produce(world.env.KAFKA_BROKERS!.split(","), {
    rate: 0,
    distinctResourceIds: true,
    ...options,
    now,
    topic: world.topic,
  });
  assert.equal(summary.sent, options.count);
  const records = syntheticRecords({
    seed: options.seed,
    now,
    distinctResourceIds: options.distinctResourceIds ?? true,
  })
    .take(options.count).toArray();
  return { records, summary };
}

/** Options of {@linkcode spawnService}. */
export interface SpawnServiceOptions {
  /** Settings on top of the world's, e.g. another `KV_PATH`. Default: none. */
  overrides?: Record<string, string>;
  /** Names the child in messages and its log, `<world.dir>/<name>.log`. Default: `"service"`. */
  name?: string;
  /**
   * Serves /metrics on a free loopback port (sets `METRICS_LISTEN` over
   * `overrides`), for {@linkcode ServiceProcess.scrape} and
   * {@linkcode ServiceProcess.metric}. Default: `false`, the world's setting.
   */
  metrics?: boolean;
  /** Extra `deno run` flags, e.g. `--v8-flags=--max-old-space-size=96`. Default: none. */
  denoFlags?: string[];
  /** Called with every complete line of output (stdout or stderr) as it arrives. Default: none. */
  onLine?: (line: string) => void;
}

/** A match of {@linkcode ServiceProcess.waitForLog}. */
export interface LogMatch {
  /** The match. */
  match: RegExpExecArray;
  /** Index in the log just past the match, to wait for a later line `from` there. */
  end: number;
  /** When it was seen (ms since the epoch). */
  seenAt: number;
}

/**
 * A service running as a child process (`deno run main.ts run` with the
 * flags of `deno task run`), its output kept in memory as it arrives and
 * written through to a log file.
 */
export interface ServiceProcess {
  /** Name given at spawn; the log is `<world.dir>/<name>.log`. */
  readonly name: string;
  /** The child. */
  readonly child: Deno.ChildProcess;
  /** Path of the file collecting its stdout and stderr. */
  readonly logPath: string;
  /** When it was spawned (ms since the epoch). */
  readonly spawnedAt: number;
  /** `host:port` of its /metrics listener when spawned with `metrics: true`, else `null`. */
  readonly metricsAddr: string | null;
  /** Everything it wrote so far. */
  log(): string;
  /**
   * Resolves with the first match of `pattern` in the log at or after
   * character `from` (default 0) and the time it was seen; rejects after
   * `timeoutMs` (default 60 s) or when the process exits without it.
   */
  waitForLog(pattern: RegExp, options?: { from?: number; timeoutMs?: number }): Promise<LogMatch>;
  /** Resolves with the exit status, once its output is drained. */
  readonly exited: Promise<Deno.CommandStatus>;
  /** Whether it has exited and its output is drained. */
  readonly hasExited: boolean;
  /** Sends `signal` (default SIGKILL) unless it already exited, then waits for the exit status. */
  kill(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
  /** Scrapes its /metrics (see {@linkcode scrapeMetrics}); rejects unless spawned with `metrics: true`. */
  scrape(): Promise<{ text: string; series: Scrape }>;
  /** One unlabelled gauge or counter of its /metrics, `null` when absent. */
  metric(name: string): Promise<number | null>;
}

/**
 * Starts the service as a child process with the world's settings plus
 * `options.overrides`, and follows its log live.
 *
 * @example Wait for a log line, then stop it
 * ```ts ignore
 * import { createWorld, spawnService } from "./pipeline.ts";
 *
 * await using world = await createWorld();
 * const service = await spawnService(world, { name: "a", metrics: true });
 * await service.waitForLog(/Joined group/);
 * console.log(await service.metric("anonymizer_queue_rows"));
 * await service.kill("SIGTERM");
 * ```
 */
export async function spawnService(
  world: World,
  options: SpawnServiceOptions = {},
): Promise<ServiceProcess> {
  const name = options.name ?? "service";
  const logPath = `${world.dir}/${name}.log`;
  const metricsAddr = options.metrics ? `127.0.0.1:${freePort()}` : null;
  const file = await Deno.open(logPath, { create: true, append: true, write: true });
  const child = new Deno.Command(Deno.execPath(), {
    // The flags of `deno task run` (permissions, V8 heap limits); a later
    // --v8-flags in denoFlags overrides the task's.
    args: ["run", ...runTaskFlags(), ...(options.denoFlags ?? []), "main.ts", "run"],
    cwd: ROOT,
    env: {
      ...world.env,
      ...options.overrides,
      ...(metricsAddr === null ? {} : { METRICS_LISTEN: metricsAddr }),
      NO_COLOR: "1",
    },
    clearEnv: false,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const spawnedAt = Date.now();
  let text = "";
  let done = false;
  const watchers = new Set<() => void>();
  const notify = () => {
    for (const w of [...watchers]) w();
  };
  // FsFile.writable buffers 64 KiB until close (Deno 2.7+), which would keep
  // the file behind the child's output: write each chunk through instead.
  let writing = Promise.resolve();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    let partial = "";
    for await (const chunk of stream) {
      writing = writing.then(async () => {
        for (let off = 0; off < chunk.byteLength;) off += await file.write(chunk.subarray(off));
      });
      const piece = decoder.decode(chunk, { stream: true });
      text += piece;
      if (options.onLine !== undefined) {
        const lines = (partial + piece).split("\n");
        partial = lines.pop()!;
        for (const line of lines) options.onLine(line);
      }
      notify();
    }
  };
  const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const exited = (async () => {
    const status = await child.status;
    await pumped;
    await writing;
    file.close();
    done = true;
    notify();
    return status;
  })();
  const scrape = () =>
    metricsAddr === null
      ? Promise.reject(
        new Error(`Cannot scrape ${name} as it was spawned without metrics: true`),
      )
      : scrapeMetrics(`http://${metricsAddr}/metrics`);

  return {
    name,
    child,
    logPath,
    spawnedAt,
    metricsAddr,
    log: () => text,
    exited,
    get hasExited() {
      return done;
    },
    waitForLog(pattern, opts = {}) {
      const from = opts.from ?? 0;
      const timeoutMs = opts.timeoutMs ?? 60_000;
      const re = new RegExp(
        pattern.source,
        pattern.flags.includes("g") ? pattern.flags : pattern.flags + "g",
      );
      return new Promise((resolve, reject) => {
        const check = () => {
          re.lastIndex = from;
          const match = re.exec(text);
          if (match !== null) {
            finish();
            resolve({ match, end: match.index + match[0].length, seenAt: Date.now() });
          } else if (done) {
            finish();
            reject(
              new Error(
                `${name} exited without logging ${pattern}; its log ends:\n${text.slice(-3000)}`,
              ),
            );
          }
        };
        const timer = setTimeout(() => {
          finish();
          reject(
            new Error(
              `Cannot find ${pattern} in the log of ${name} within ${timeoutMs} ms:\n${
                text.slice(-3000)
              }`,
            ),
          );
        }, timeoutMs);
        const finish = () => {
          clearTimeout(timer);
          watchers.delete(check);
        };
        watchers.add(check);
        check();
      });
    },
    async kill(signal: Deno.Signal = "SIGKILL") {
      if (!done) {
        try {
          child.kill(signal);
        } catch {
          // Exited meanwhile.
        }
      }
      return await exited;
    },
    scrape,
    async metric(metric) {
      return (await scrape()).series.get(metric) ?? null;
    },
  };
}

/** Stops `service` with SIGTERM and asserts it exits with code 0 after logging "Stopped cleanly". */
export async function assertStopsCleanly(service: ServiceProcess): Promise<void> {
  const status = await service.kill("SIGTERM");
  assert.equal(
    status.code,
    0,
    `${service.name} exit code; its log ends:\n${service.log().slice(-3000)}`,
  );
  assert.match(service.log(), /Stopped cleanly/);
}

/** One scrape of /metrics: series (`name` or `name{labels}`) to value. */
export type Scrape = Map<string, number>;

/** Fetches and parses Prometheus text from `url`; asserts it answered 200. */
export async function scrapeMetrics(url: string): Promise<{ text: string; series: Scrape }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  assert.equal(res.status, 200, `GET ${url} answered ${res.status}`);
  const series: Scrape = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^(\S+?(?:\{.*\})?) (\S+)$/.exec(line);
    if (m) series.set(m[1]!, Number(m[2]));
  }
  return { text, series };
}

/** Matches a "Joined group" log line; group 1 is its partition list (`0,1,2` or `none`). */
export const JOINED_GROUP: RegExp = /Joined group \S+ with partitions "?([\d,]+|none)"?/;

/** The partitions of a {@linkcode JOINED_GROUP} match's list: `"0,2"` → `[0, 2]`, `"none"` → `[]`. */
export function partitionsOf(list: string): number[] {
  return list === "none" ? [] : list.split(",").map(Number);
}

/** Partition sets of every "Joined group" line in `log`, oldest first. */
export function joinedPartitions(log: string): number[][] {
  return [...log.matchAll(new RegExp(JOINED_GROUP, "g"))].map((m) => partitionsOf(m[1]!));
}

/** Rows of every "Flushed batch" line in `log`. */
export function flushedRows(log: string): number[] {
  return [...log.matchAll(/Flushed batch \S+: (\d+) rows/g)].map((m) => Number(m[1]));
}

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Options of {@linkcode storedCount} and {@linkcode waitForRows}. */
export interface StoredCountOptions {
  /** ClickHouse HTTP endpoint holding the database. Default: {@linkcode CLICKHOUSE_URL}. */
  url?: string;
}

/** Row count of `http_log` in `database` (direct to ClickHouse, no proxy). */
export async function storedCount(
  database: string,
  options: StoredCountOptions = {},
): Promise<number> {
  return Number(
    (await clickhouseQuery(`SELECT count() FROM ${database}.http_log`, options)).trim(),
  );
}

/** Polls until `http_log` holds at least `expected` rows, reporting progress. */
export async function waitForRows(
  database: string,
  expected: number,
  timeoutMs = 300_000,
  options: StoredCountOptions = {},
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let n = 0;
  let reported = 0;
  while (Date.now() < deadline) {
    n = await storedCount(database, options);
    if (n >= expected) return n;
    if (Date.now() - reported > 15_000) {
      reported = Date.now();
      // deno-lint-ignore no-console -- progress of a long wait, for whoever watches the test
      console.error(`  … ${n} of ${expected} rows stored in ${database}`);
    }
    await delay(500);
  }
  return n;
}

/**
 * Polls `check` every 250 ms until it returns a value other than
 * `undefined`, and returns that value; throws after `timeoutMs` (default
 * 120 s). Every 15 s a line on stderr says what it still waits for.
 */
export async function until<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 120_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let reported = Date.now();
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`Cannot see ${what} within ${timeoutMs} ms`);
    if (Date.now() - reported > 15_000) {
      reported = Date.now();
      // deno-lint-ignore no-console -- progress of a long wait, for whoever watches the test
      console.error(`  … still waiting for ${what}`);
    }
    await delay(250);
  }
}

/**
 * Asserts every produced record is stored exactly once: no id missing, none
 * twice, nothing else; every address masked and none equal to a raw one.
 * `options.url` names the server. Default: {@linkcode CLICKHOUSE_URL}.
 */
export async function assertExactlyOnce(
  database: string,
  records: HttpLogRecord[],
  options: StoredCountOptions = {},
): Promise<void> {
  const query = (sql: string) => clickhouseQuery(sql, options);
  const dup = await query(
    `SELECT resource_id, count() AS c FROM ${database}.http_log GROUP BY resource_id HAVING c > 1 LIMIT 5`,
  );
  assert.equal(dup.trim(), "", `duplicated resource ids (id, count):\n${dup}`);
  const stored = (await query(`SELECT resource_id FROM ${database}.http_log ORDER BY resource_id`))
    .trim().split("\n").filter((l) => l !== "");
  const expected = records.map((r) => r.resourceId).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
    .map(String);
  assert.equal(
    stored.length,
    expected.length,
    `stored ${stored.length} rows, produced ${expected.length}`,
  );
  const missing = expected.filter((id, i) => stored[i] !== id);
  assert.deepEqual(missing.slice(0, 5), [], "stored ids differ from produced ids");
  const unmasked = await query(
    `SELECT count() FROM ${database}.http_log ` +
      `WHERE NOT (endsWith(remote_addr, '.X') OR endsWith(remote_addr, '::X') OR remote_addr = 'invalid')`,
  );
  assert.equal(unmasked.trim(), "0", "rows with an unmasked remote_addr");
  const raw = new Set(records.map((r) => r.remoteAddr));
  const addrs = (await query(`SELECT DISTINCT remote_addr FROM ${database}.http_log`))
    .trim().split("\n");
  assert.equal(addrs.filter((a) => raw.has(a)).length, 0, "a raw address was stored");
}
