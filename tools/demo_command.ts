/**
 * `anonymizer demo`: on the local stack, migrates, produces synthetic records
 * and runs the service, printing live progress, then the dashboard's totals.
 *
 * @module
 */
// deno-lint-ignore-file no-console -- a command talks to its user on stdout and stderr
import { parseArgs } from "node:util";
import { ClickHouseClient } from "../lib/sink/clickhouse/clickhouse_client.ts";
import { loadConfig, secretValues } from "../lib/config.ts";
import { bindQuery, readDashboardQuery } from "./dashboard_query.ts";
import { configureLogging } from "../lib/logging.ts";
import { migrate } from "../lib/sink/clickhouse/migrate.ts";
import { openQueue } from "../lib/queue/kv_queue.ts";
import { produce } from "./produce.ts";
import { startService } from "../lib/service.ts";

/** The stack's ClickHouse servers: direct HTTP endpoint and the ch-proxy in front of it. */
const SERVERS = {
  "18.16": { direct: "http://127.0.0.1:8123", proxy: "http://127.0.0.1:8124" },
  modern: { direct: "http://127.0.0.1:8125", proxy: "http://127.0.0.1:8126" },
} as const;

const HELP = `Usage: anonymizer demo [--clickhouse 18.16|modern] [--count N] [--rate N]
                      [--seed N] [--direct-url URL]

Runs the whole pipeline on the local stack (deno task stack:up):
  1. creates the tables directly on ClickHouse (--direct-url), not through
     ch-proxy, so the demo does not wait a 62.5 s slot per statement;
  2. produces --count synthetic records at --rate messages/s into Kafka;
  3. runs the service, which sends them through ch-proxy at its real rate,
     printing: produced, queued, landed, next flush in N s;
  4. stops once every record has landed (or on Ctrl-C) and prints the
     cache-status totals from the dashboard query.

  --clickhouse S     which server of the stack: 18.16 (Debian's, behind ch-proxy
                    on 8124) or modern (ClickHouse 26.9, behind ch-proxy on 8126)
                    (default 18.16)
  --count N         records to produce (default 5000)
  --rate N          messages per second (default 200)
  --seed N          generator seed (default 1)
  --direct-url URL  ClickHouse without the proxy (default: the chosen server's,
                    http://127.0.0.1:8123 or http://127.0.0.1:8125)

Service settings come from the environment as for "anonymizer run"; the demo
defaults CLICKHOUSE_URL to the chosen server's ch-proxy, KV_PATH to
.stack/demo/<server>/queue.kv and KAFKA_GROUP_ID to anonymizer-demo-<server>:
each server has its own queue, since a queue remembers its server's version.`;

/**
 * Entry point of `anonymizer demo`; resolves to the exit code.
 *
 * @example
 * ```ts
 * import { main } from "./demo_command.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(await main(["--count", "lots"]), 2);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  let flags;
  try {
    flags = parseArgs({
      args,
      options: {
        count: { type: "string", default: "5000" },
        rate: { type: "string", default: "200" },
        seed: { type: "string", default: "1" },
        clickhouse: { type: "string", default: "18.16" },
        "direct-url": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch {
    console.error(
      `Cannot run the demo as an option is unknown or lacks a value: current value is ${
        JSON.stringify(args.join(" "))
      }`,
    );
    return 2;
  }
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  for (const name of ["count", "rate", "seed"] as const) {
    if (!/^\d+$/.test(flags[name])) {
      console.error(
        `Cannot run the demo as --${name} must be a whole number: current value is "${
          flags[name]
        }"`,
      );
      return 2;
    }
  }
  const name = flags.clickhouse;
  if (name !== "18.16" && name !== "modern") {
    console.error(
      `Cannot run the demo as --clickhouse must be 18.16 or modern: current value is ${
        JSON.stringify(name)
      }`,
    );
    return 2;
  }
  const server = SERVERS[name];
  const count = Number(flags.count);
  const config = loadConfig({
    CLICKHOUSE_URL: server.proxy,
    KV_PATH: `.stack/demo/${name}/queue.kv`,
    KAFKA_GROUP_ID: `anonymizer-demo-${name}`,
    LOG_LEVEL: "warning",
    ...Deno.env.toObject(),
  }, []);
  await configureLogging({
    level: config.logLevel,
    format: config.logFormat,
    secrets: secretValues(config),
  });

  const direct = new ClickHouseClient(flags["direct-url"] ?? server.direct);
  const schema = await migrate(direct, { database: config.clickhouseDatabase });
  console.log(
    `demo: ClickHouse ${schema.version}: tables ready in ${config.clickhouseDatabase} ` +
      `(created: ${schema.created.join(", ") || "none"}); sending through ${config.clickhouseUrl}`,
  );
  await Deno.mkdir(`.stack/demo/${name}`, { recursive: true });
  {
    await using q = await openQueue(config.kvPath);
    await q.setServer({ version: schema.version, checkedAt: Date.now() });
  }
  const before = Number(
    (await direct.query(
      `SELECT count() FROM ${config.clickhouseDatabase}.http_log FORMAT TabSeparated`,
    )).trim(),
  );

  const service = await startService(config);
  const baseline = (await service.queue.stats()).landedRows;
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  let produced = 0;
  const producing = produce(config.kafkaBrokers, {
    topic: config.kafkaTopic,
    rate: Number(flags.rate),
    count,
    seed: Number(flags.seed),
    signal: stop.signal,
    onProgress: (p) => produced = p.sent,
  });
  const started = Date.now();
  try {
    for (;;) {
      const stats = await service.queue.stats();
      const landed = stats.landedRows - baseline;
      const { flusher } = service.status();
      const next = Math.max(0, Math.ceil((flusher.nextSlotAt - Date.now()) / 1000));
      console.log(
        `demo: ${Math.round((Date.now() - started) / 1000)} s: produced ${produced}, ` +
          `queued ${stats.queuedRows + stats.sealedRows}, landed ${landed}, ` +
          `next flush in ${flusher.inflight ? "(sending)" : `${next} s`}`,
      );
      if (landed >= count || stop.signal.aborted) break;
      await new Promise((r) => setTimeout(r, 2_000));
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    stop.abort();
    await producing;
    await service.stop();
  }

  const after = Number(
    (await direct.query(
      `SELECT count() FROM ${config.clickhouseDatabase}.http_log FORMAT TabSeparated`,
    )).trim(),
  );
  console.log(`demo: http_log grew from ${before} to ${after} rows`);
  const now = Math.floor(Date.now() / 1000);
  const sql = bindQuery(await readDashboardQuery("cache_status_over_time"), {
    database: config.clickhouseDatabase,
    params: { step: 86_400, from: now - 2 * 86_400, to: now + 60 },
  });
  const table = await direct.query(`${sql} FORMAT PrettyCompactNoEscapes`);
  console.log("demo: totals by cache status (dashboard query cache_status_over_time):");
  console.log(table);
  return 0;
}
