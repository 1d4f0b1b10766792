/**
 * Harness for end-to-end tests of the pipeline on the real stack: each test
 * gets its own topic, consumer group, ClickHouse database, KV file and
 * private ch-proxy, and runs the service in-process or as a child process
 * (so it can be killed with SIGKILL).
 *
 * @module
 */
import assert from "node:assert/strict";
import { ClickHouseClient } from "../lib/clickhouse_client.ts";
import { type Config, loadConfig } from "../lib/config.ts";
import { migrate } from "../lib/migrate.ts";
import { produce, type ProduceOptions, type ProduceSummary } from "../lib/produce.ts";
import { syntheticRecords } from "../lib/synthetic_records.ts";
import type { HttpLogRecord } from "../lib/types.ts";
import {
  CLICKHOUSE_URL,
  clickhouseQuery,
  createTopic,
  KAFKA_BROKERS,
  startProxy,
  type StartProxyOptions,
  type TestProxy,
  uniqueName,
} from "./_stack.ts";

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

/** Options of {@linkcode createWorld}. */
export interface WorldOptions {
  /** Proxy options. Default: `{ rate: "120r/m" }` (one request per 500 ms). */
  proxy?: StartProxyOptions;
  /** Spacing the service assumes, ms. Default: derived from the proxy rate. */
  spacingMs?: number;
  /** Extra service settings. Default: none. */
  env?: Record<string, string>;
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
  const proxyOptions = { rate: "120r/m", ...options.proxy };
  const topic = await createTopic(uniqueName("e2e"), 3);
  const dlqTopic = await createTopic(`${topic}_dlq`, 1);
  const database = uniqueName("e2e");
  await migrate(new ClickHouseClient(CLICKHOUSE_URL), { database });
  const proxy = await startProxy(proxyOptions);
  const spacingMs = options.spacingMs ?? spacingFor(proxyOptions.rate);
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-e2e-" });
  const env: Record<string, string> = {
    KAFKA_BROKERS,
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
      await clickhouseQuery(`DROP DATABASE IF EXISTS ${database}`);
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

/** Produces `count` distinct-id records into the world's topic; returns them and the summary. */
export async function produceRecords(
  world: World,
  options: Omit<ProduceOptions, "topic"> & { count: number; seed: number },
): Promise<{ records: HttpLogRecord[]; summary: ProduceSummary }> {
  const now = options.now ?? Date.now();
  const summary = await produce(KAFKA_BROKERS.split(","), {
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

/** A service running as a child process (`deno run main.ts run` with the service's permissions). */
export interface ServiceProcess {
  /** The child. */
  child: Deno.ChildProcess;
  /** Path of the file collecting its stdout and stderr. */
  logPath: string;
  /** Resolves when the log shows `pattern`. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Sends `signal` and waits for the exit status. */
  kill(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/** Starts the service as a child process with the world's settings plus `overrides`. */
export async function spawnService(
  world: World,
  options: { overrides?: Record<string, string>; name?: string } = {},
): Promise<ServiceProcess> {
  const logPath = `${world.dir}/${options.name ?? "service"}.log`;
  const file = await Deno.open(logPath, { create: true, append: true, write: true });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-sys",
      "main.ts",
      "run",
    ],
    cwd: ROOT,
    env: { ...world.env, ...options.overrides, NO_COLOR: "1" },
    clearEnv: false,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // FsFile.writable buffers 64 KiB until close (Deno 2.7+), which would hide
  // the log from waitForLog while the child runs: write through instead.
  let writing = Promise.resolve();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      writing = writing.then(async () => {
        for (let off = 0; off < chunk.byteLength;) off += await file.write(chunk.subarray(off));
      });
      await writing;
    }
  };
  const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]).finally(async () => {
    await writing;
    file.close();
  });
  const readLog = () => Deno.readTextFile(logPath);
  return {
    child,
    logPath,
    async waitForLog(pattern, timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const m = pattern.exec(await readLog());
        if (m) return m[0];
        await delay(100);
      }
      throw new Error(
        `Cannot find ${pattern} in ${logPath} within ${timeoutMs} ms:\n${
          (await readLog()).slice(-3000)
        }`,
      );
    },
    async kill(signal: Deno.Signal = "SIGKILL") {
      try {
        child.kill(signal);
      } catch {
        // Already exited.
      }
      const status = await child.status;
      await pumped;
      return status;
    },
  };
}

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Row count of `http_log` in `database` (direct to ClickHouse, no proxy). */
export async function storedCount(database: string): Promise<number> {
  return Number((await clickhouseQuery(`SELECT count() FROM ${database}.http_log`)).trim());
}

/** Polls until `http_log` holds at least `expected` rows, reporting progress. */
export async function waitForRows(
  database: string,
  expected: number,
  timeoutMs = 300_000,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let n = 0;
  let reported = 0;
  while (Date.now() < deadline) {
    n = await storedCount(database);
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
 * Asserts every produced record is stored exactly once: no id missing, none
 * twice, nothing else; every address masked and none equal to a raw one.
 */
export async function assertExactlyOnce(database: string, records: HttpLogRecord[]): Promise<void> {
  const dup = await clickhouseQuery(
    `SELECT resource_id, count() AS c FROM ${database}.http_log GROUP BY resource_id HAVING c > 1 LIMIT 5`,
  );
  assert.equal(dup.trim(), "", `duplicated resource ids (id, count):\n${dup}`);
  const stored =
    (await clickhouseQuery(`SELECT resource_id FROM ${database}.http_log ORDER BY resource_id`))
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
  const unmasked = await clickhouseQuery(
    `SELECT count() FROM ${database}.http_log ` +
      `WHERE NOT (endsWith(remote_addr, '.X') OR endsWith(remote_addr, '::X') OR remote_addr = 'invalid')`,
  );
  assert.equal(unmasked.trim(), "0", "rows with an unmasked remote_addr");
  const raw = new Set(records.map((r) => r.remoteAddr));
  const addrs = (await clickhouseQuery(`SELECT DISTINCT remote_addr FROM ${database}.http_log`))
    .trim().split("\n");
  assert.equal(addrs.filter((a) => raw.has(a)).length, 0, "a raw address was stored");
}
