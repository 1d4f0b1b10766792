/**
 * Several instances of one consumer group behind one source address, through
 * one private nginx at the stock 1r/m and 1 MiB: do they share its slots
 * without refusals, and does the group carry one instance's ceiling?
 *
 * ```sh
 * deno task bench:slots [--instances 1,2,3] [--rate 350] [--inserts 6] [--seed 5] [--no-kill] [--keep]
 * ```
 *
 * For each instance count N, in a fresh world (testing/pipeline.ts
 * createWorld: 3-partition topic, database, private stock proxy), with the
 * service's production pacing (CLICKHOUSE_SPACING_MS 62500, MARGIN 750,
 * CLICKHOUSE_SLOT_SHARING group):
 * 1. the producer sends the stock distribution at `--rate` msg/s, above the
 *    ceiling of about 296 rows/s, so every slot has a full batch to carry;
 * 2. N services start, each on its own KV; once every one logged a view of N
 *    members, the measurement starts at the next accepted INSERT and lasts
 *    `--inserts` accepted INSERTs more;
 * 3. with N > 1 and without `--no-kill`, one instance is killed with SIGKILL
 *    and the failover time is measured: from the kill to the first accepted
 *    INSERT after the survivors logged their smaller view;
 * 4. the producer stops, the services stop, and the backlog is drained by one
 *    service per KV through a fast private proxy (600r/m), so that every
 *    produced id can be checked: `lost` and `duplicated` over the whole run.
 *
 * Figures per N:
 * - `refusals_steady`: 503s in the measured window; `refusals_total`: in the
 *   whole stock-proxy phase (start-up and failover included).
 * - `rows_per_s`: rows stored during the window / its length, the stored
 *   count read straight from ClickHouse (not through the proxy) right after
 *   the first and the last INSERT of the window.
 * - `ceiling_share`: `rows_per_s` / the ceiling of one instance measured in
 *   the same run (N = 1), when it was run.
 * - `latency_p50_s`/`latency_p99_s`: per row of the window's INSERTs, nginx's
 *   `$msec` of the INSERT minus the time Kafka acknowledged the record (the
 *   producer's acknowledged count is sampled every 250 ms, so ±0.25 s). The
 *   producer is faster than the ceiling, so the backlog grows during a run
 *   and so does this figure: it is queueing delay, not the pipeline's own.
 * - `insert_spacing_s`: seconds between consecutive accepted INSERTs.
 * - `failover_s`: step 3.
 *
 * Benchmarks measure; nothing here asserts a timing. Progress goes to
 * stderr; the last stdout line is the JSON report, also written to
 * bench/results/.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { recordResults } from "./_results.ts";
import { startFeed } from "../testing/feed.ts";
import {
  createWorld,
  delay,
  type ServiceProcess,
  spawnService,
  until,
  type World,
} from "../testing/pipeline.ts";
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
  progress,
  quantile,
  reportContext,
  round,
} from "./_service_bench.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    instances: { type: "string", default: "1,2,3" },
    rate: { type: "string", default: "350" },
    inserts: { type: "string", default: "6" },
    seed: { type: "string", default: "5" },
    "no-kill": { type: "boolean", default: false },
    keep: { type: "boolean", default: false },
  },
});
const counts = values.instances.split(",").map(Number);
const rate = Number(values.rate);
const inserts = Number(values.inserts);
const seed = Number(values.seed);
if (counts.some((n) => !Number.isInteger(n) || n < 1) || !(rate > 0) || !(inserts >= 2)) {
  throw new Error(
    `Cannot run as --instances must list whole numbers ≥ 1, --rate be > 0 and --inserts ≥ 2: ` +
      `current values are "${values.instances}", "${values.rate}", "${values.inserts}"`,
  );
}

const SHARING = /Sharing ch-proxy slots with (\d+) members/g;
const isInsert = (e: AccessLogEntry) => e.status === 200 && e.uri.includes("INSERT");

function lastView(s: ServiceProcess): number | undefined {
  return [...s.log().matchAll(SHARING)].map((m) => Number(m[1])).at(-1);
}

async function stored(world: World): Promise<number> {
  return Number((await clickhouseQuery(`SELECT count() FROM ${world.database}.http_log`)).trim());
}

/** Waits for the `n`-th accepted INSERT at or after index `from` of the access log. */
async function nthInsert(
  world: World,
  from: number,
  n: number,
): Promise<{ entry: AccessLogEntry; index: number }> {
  return await until(`accepted INSERT ${n}`, async () => {
    const log = await world.proxy.readAccessLog();
    let seen = 0;
    for (let i = from; i < log.length; i++) {
      if (isInsert(log[i]!) && ++seen === n) return { entry: log[i]!, index: i };
    }
    return undefined;
  }, 600_000);
}

async function measure(n: number): Promise<Record<string, unknown>> {
  const world = await createWorld({ prefix: `slots${n}`, proxy: { rate: "1r/m" } });
  delete world.env.CLICKHOUSE_SPACING_MS;
  delete world.env.CLICKHOUSE_MARGIN_MS;
  progress(`N=${n}: topic ${world.topic}, stock proxy ${world.proxy.url}`);
  const feed = await startFeed(KAFKA_BROKERS, world.topic, { rate, seed: seed + n });
  // When the i-th record was acknowledged: the first sample whose count passed i.
  const ackSamples: Array<{ at: number; count: number }> = [];
  const sampler = setInterval(
    () => ackSamples.push({ at: Date.now(), count: feed.acked.length }),
    250,
  );
  const services: ServiceProcess[] = [];
  const kvs = Array.from({ length: n }, (_, i) => `${world.dir}/kv${i}/queue.kv`);
  try {
    for (const [i, kv] of kvs.entries()) {
      services.push(await spawnService(world, { name: `s${i}`, overrides: { KV_PATH: kv } }));
    }
    await until(
      `all ${n} instances in one view`,
      () => services.every((s) => lastView(s) === n) || undefined,
      300_000,
    );
    const logAtView = (await world.proxy.readAccessLog()).length;
    const { entry: first, index: firstIndex } = await nthInsert(world, logAtView, 1);
    const storedFirst = await stored(world);
    progress(`N=${n}: window opens at ${new Date(first.msec * 1000).toISOString()}`);
    const { entry: last } = await nthInsert(world, firstIndex + 1, inserts);
    const storedLast = await stored(world);
    const all = await world.proxy.readAccessLog();
    const window = all.filter((e) => e.msec >= first.msec && e.msec <= last.msec);
    const windowInserts = window.filter(isInsert);
    const spacing = windowInserts.slice(1).map((e, i) => round(e.msec - windowInserts[i]!.msec, 3));
    const rowsPerS = (storedLast - storedFirst) / (last.msec - first.msec);
    progress(`N=${n}: ${round(rowsPerS, 1)} rows/s over ${windowInserts.length} INSERTs`);

    const batchIds = windowInserts.slice(1).map((e) => /anonymizer-batch-(\d+)-/.exec(e.uri)?.[1])
      .filter((id): id is string => id !== undefined);
    const insertAt = new Map(
      windowInserts.map((e) => [/anonymizer-batch-(\d+)-/.exec(e.uri)?.[1], e.msec]),
    );
    const latencies: number[] = [];
    if (batchIds.length > 0) {
      const indexOf = new Map(feed.acked.map((r, i) => [String(r.resourceId), i]));
      const tsv = await clickhouseQuery(
        `SELECT batch_id, resource_id FROM ${world.database}.http_log ` +
          `WHERE batch_id IN (${batchIds.join(",")}) FORMAT TSV`,
      );
      for (const line of tsv.trim().split("\n").filter((l) => l !== "")) {
        const [id, resource] = line.split("\t");
        const at = insertAt.get(id);
        const index = indexOf.get(resource!);
        if (at === undefined || index === undefined) continue;
        const acked = ackSamples.find((s) => s.count > index);
        if (acked !== undefined) latencies.push(at - acked.at / 1000);
      }
    }
    latencies.sort((a, b) => a - b);

    let failover: number | null = null;
    if (n > 1 && !values["no-kill"]) {
      const victim = services.at(-1)!;
      const killedAt = Date.now();
      await victim.kill("SIGKILL");
      progress(`N=${n}: killed ${victim.name}`);
      const survivors = services.slice(0, -1);
      await until(
        "the survivors' smaller view",
        () => survivors.every((s) => lastView(s) === n - 1) || undefined,
        300_000,
      );
      const viewAt = Date.now();
      // The first INSERT once every survivor uses the smaller view ends the failover.
      const logAtView = (await world.proxy.readAccessLog()).length;
      const { entry: after } = await nthInsert(world, logAtView, 1);
      progress(
        `N=${n}: survivors saw ${n - 1} members ${
          round((viewAt - killedAt) / 1000, 1)
        } s after the kill`,
      );
      failover = round(after.msec - killedAt / 1000, 1);
      progress(`N=${n}: failover ${failover} s`);
    }
    const stockLog = await world.proxy.readAccessLog();

    const records = await feed.stop();
    for (const s of services) if (!s.hasExited) await s.kill("SIGTERM");
    await using fast = await startProxy({ rate: "600r/m" });
    const drains: ServiceProcess[] = [];
    for (const [i, kv] of kvs.entries()) {
      drains.push(
        await spawnService(world, {
          name: `drain${i}`,
          overrides: {
            KV_PATH: kv,
            CLICKHOUSE_URL: fast.url,
            CLICKHOUSE_SPACING_MS: "100",
            CLICKHOUSE_MARGIN_MS: "100",
            CLICKHOUSE_SLOT_SHARING: "off",
          },
        }),
      );
    }
    await until(
      "the backlog drained",
      async () => await stored(world) >= records.length || undefined,
      600_000,
    ).catch(() => undefined);
    await delay(5_000);
    for (const s of drains) await s.kill("SIGTERM");
    const dup = Number((await clickhouseQuery(
      `SELECT count() - uniqExact(resource_id) FROM ${world.database}.http_log`,
    )).trim());
    const ids = new Set(records.map((r) => String(r.resourceId)));
    const storedIds = new Set(
      (await clickhouseQuery(`SELECT DISTINCT resource_id FROM ${world.database}.http_log`)).trim()
        .split("\n"),
    );
    let lost = 0;
    for (const id of ids) if (!storedIds.has(id)) lost++;
    return {
      instances: n,
      refusals_steady: window.filter((e) => e.status === 503).length,
      refusals_total: stockLog.filter((e) => e.status === 503).length,
      rows_per_s: round(rowsPerS, 1),
      window_s: round(last.msec - first.msec, 1),
      window_inserts: windowInserts.length,
      insert_spacing_s: spacing,
      latency_p50_s: latencies.length ? round(quantile(latencies, 0.5), 1) : null,
      latency_p99_s: latencies.length ? round(quantile(latencies, 0.99), 1) : null,
      failover_s: failover,
      produced: records.length,
      lost,
      duplicated: dup,
    };
  } finally {
    clearInterval(sampler);
    await feed.stop().catch(() => {});
    for (const s of services) if (!s.hasExited) await s.kill();
    await closeWorld(world, values.keep);
  }
}

const host = hostFacts();
const code = codeVersion();
const load = new LoadSampler();
const runs: Record<string, unknown>[] = [];
for (const n of counts) runs.push(await measure(n));
const alone = runs.find((r) => r.instances === 1)?.rows_per_s as number | undefined;
for (const r of runs) {
  r.ceiling_share = alone === undefined ? null : round((r.rows_per_s as number) / alone, 3);
}
const report = {
  bench: "slots",
  producer_rate: rate,
  runs,
  ...reportContext({ host, load, seed, serviceFlags: [], code }),
};
await recordResults("slots", report);
Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(report) + "\n"));
