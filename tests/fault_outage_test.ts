/**
 * Fault: ClickHouse is down for minutes while Kafka keeps receiving records.
 * The service must keep consuming (queueing in KV), stay within its memory,
 * and store everything exactly once when ClickHouse is back.
 *
 * ClickHouse here is a private server (testing/clickhouse_server.ts) of the
 * run's kind, 18.16 or modern, so that stopping it leaves the shared stack
 * alone: the world's database is migrated into that server and its private
 * ch-proxy forwards to it.
 * assertExactlyOnce() reads the shared ClickHouse, so the stored rows are
 * copied there into a scratch database for it.
 */
import assert from "node:assert/strict";
import { ClickHouseClient } from "../lib/sink/clickhouse/clickhouse_client.ts";
import { openQueue } from "../lib/queue/kv_queue.ts";
import { createMetrics } from "../lib/metrics.ts";
import { migrate } from "../lib/sink/clickhouse/migrate.ts";
import { produce, type ProduceSummary } from "../tools/produce.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { type ClickHouseServer, startClickHouseServer } from "../testing/clickhouse_server.ts";
import { progress } from "../testing/feed.ts";
import {
  assertExactlyOnce,
  createWorld,
  delay,
  spawnService,
  storedCount,
  waitForRows,
} from "../testing/pipeline.ts";
import {
  CLICKHOUSE_URL,
  clickhouseQuery,
  KAFKA_BROKERS,
  kafkaClient,
  uniqueName,
} from "../testing/stack.ts";
import { assertInsertsCarriedTokens } from "../testing/query_log.ts";
import { assertTotalsMatch } from "../testing/totals.ts";
import { stockRows } from "../testing/stock_rows.ts";

/** How long ClickHouse stays down once it has exited, ms. */
const OUTAGE_MS = 200_000;
/** Production rate, records per second. */
const RATE = 50;
const SAMPLE_EVERY_MS = 10_000;
const RSS_LIMIT = 300 * 1024 * 1024;
/** Most records the consumer group may be behind Kafka's end offsets (20 s of production). */
const LAG_LIMIT = 20 * RATE;
const MB = 1024 * 1024;

/** One look at the service from outside. */
interface Sample {
  /** Seconds since the outage began. */
  t: number;
  /** Records Kafka acknowledged to the producer. */
  sent: number;
  /** Σ(end offset − committed offset) over partitions. */
  lag: number;
  /** `anonymizer_queue_rows`. */
  queued: number;
  /** `anonymizer_queue_landed_rows`. */
  landed: number;
  /** `anonymizer_process_resident_memory_bytes`. */
  rss: number;
}

/** Reads one unlabeled gauge from Prometheus text. */
function gauge(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  assert.ok(m !== null, `metric ${name} missing from /metrics`);
  return Number(m[1]);
}

/**
 * Copies `http_log` of `database` on `server` into a scratch database on the
 * shared ClickHouse, runs assertExactlyOnce() there, and drops the copy.
 */
async function assertExactlyOnceOn(
  server: ClickHouseServer,
  database: string,
  records: HttpLogRecord[],
): Promise<void> {
  const copy = uniqueName("outage_copy");
  await migrate(new ClickHouseClient(CLICKHOUSE_URL), { database: copy });
  try {
    const rows = await server.query(`SELECT * FROM ${database}.http_log FORMAT TabSeparated`);
    await clickhouseQuery(`INSERT INTO ${copy}.http_log FORMAT TabSeparated`, { body: rows });
    const [here, there] = await Promise.all([
      storedCount(database, { url: server.url }),
      clickhouseQuery(`SELECT count() FROM ${copy}.http_log`).then((t) => Number(t.trim())),
    ]);
    assert.equal(there, here, "the copy holds every stored row");
    await assertExactlyOnce(copy, records);
  } finally {
    await clickhouseQuery(`DROP DATABASE IF EXISTS ${copy}`);
  }
}

Deno.test({
  name:
    "anonymizer keeps consuming through a 3-minute ClickHouse outage and then stores every record once",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using server = await startClickHouseServer();
    await using world = await createWorld({ clickhouse: server, prefix: "outage" });
    const version = (await server.query("SELECT version() FORMAT TabSeparated")).trim();
    assert.match(version, server.kind === "modern" ? /^26\./ : /^18\.16\./);
    assert.equal(
      (await server.query(`EXISTS TABLE ${world.database}.http_log`)).trim(),
      "1",
      "the world was migrated into the private server",
    );
    const service = await spawnService(world, { metrics: true });
    const metricsUrl = `http://${service.metricsAddr}/metrics`;
    const admin = kafkaClient("anonymizer-tests").admin();
    await admin.connect();
    const producing = new AbortController();
    let sent = 0;
    let produced: Promise<ProduceSummary> | undefined;
    const seed = 9_401;
    const now = Date.now();
    const samples: Sample[] = [];
    let outageStart = 0;

    const lag = async (): Promise<number> => {
      const ends = await admin.fetchTopicOffsets(world.topic);
      const [committed] = await admin.fetchOffsets({ groupId: world.group, topics: [world.topic] });
      let total = 0;
      for (const end of ends) {
        const c = Number(
          committed?.partitions.find((p) => p.partition === end.partition)?.offset ?? -1,
        );
        total += Number(end.high) - Math.max(0, c);
      }
      return total;
    };
    const sample = async (): Promise<Sample> => {
      const { text } = await service.scrape();
      const s = {
        t: Math.round((Date.now() - outageStart) / 1000),
        sent,
        lag: await lag(),
        queued: gauge(text, "anonymizer_queue_rows"),
        landed: gauge(text, "anonymizer_queue_landed_rows"),
        rss: gauge(text, "anonymizer_process_resident_memory_bytes"),
      };
      progress(
        `t=${s.t}s sent ${s.sent}, lag ${s.lag}, queued ${s.queued}, landed ${s.landed}, ` +
          `rss ${(s.rss / MB).toFixed(1)} MB`,
      );
      return s;
    };

    try {
      const ok = (passed: boolean) => {
        if (!passed) throw new Error("Cannot go on as an earlier phase failed");
      };
      ok(
        await t.step("the service stores records produced at 50/s", async () => {
          // Ready means joined to the consumer group: the moment records may be produced.
          const readyUrl = metricsUrl.replace(/\/metrics$/, "/readyz");
          const deadline = Date.now() + 60_000;
          for (;;) {
            const ready = await fetch(readyUrl).then((r) => r.text().then(() => r.ok), () => false);
            if (ready) break;
            assert.equal(service.hasExited, false, "the service exited at start");
            assert.ok(
              Date.now() < deadline,
              "the service did not join the consumer group within 60 s",
            );
            await delay(250);
          }
          produced = produce(KAFKA_BROKERS.split(","), {
            topic: world.topic,
            rate: RATE,
            count: Infinity,
            seed,
            now,
            distinctResourceIds: true,
            signal: producing.signal,
            onProgress: (p) => {
              sent = p.sent;
            },
          });
          // Awaited after the outage; a failure before then must not go unhandled.
          produced.catch(() => {});
          const stored = await waitForRows(world.database, 500, 120_000, { url: server.url });
          assert.ok(stored >= 500, `only ${stored} rows stored before the outage`);
          outageStart = Date.now();
          samples.push(await sample());
        }),
      );

      ok(
        await t.step(
          `ClickHouse stops for ${OUTAGE_MS / 1000} s; the service keeps consuming`,
          async () => {
            await server.stop();
            assert.equal(server.running, false);
            const stoppedAt = Date.now();
            progress(
              `ClickHouse exited ${((stoppedAt - outageStart) / 1000).toFixed(1)} s after SIGTERM`,
            );
            await assert.rejects(server.query("SELECT 1"), "ClickHouse still answers");
            const first = await sample();
            samples.push(first);
            while (Date.now() - stoppedAt < OUTAGE_MS) {
              await delay(Math.min(SAMPLE_EVERY_MS, OUTAGE_MS - (Date.now() - stoppedAt)));
              samples.push(await sample());
            }
            const during = samples.slice(samples.indexOf(first));
            const last = during.at(-1)!;
            assert.ok(
              last.sent - first.sent >= (RATE * OUTAGE_MS) / 1000 / 2,
              "the producer kept producing",
            );
            for (const s of during) {
              assert.ok(
                s.lag <= LAG_LIMIT,
                `consumer lag ${s.lag} at t=${s.t}s exceeds ${LAG_LIMIT}`,
              );
              assert.equal(
                s.landed,
                first.landed,
                `rows landed at t=${s.t}s while ClickHouse was down`,
              );
              assert.ok(s.rss < RSS_LIMIT, `RSS ${(s.rss / MB).toFixed(1)} MB at t=${s.t}s`);
            }
            // Everything consumed during the outage waits in KV: the queue grows with production.
            const producedDuring = last.sent - first.sent;
            assert.ok(
              last.queued - first.queued >= producedDuring - LAG_LIMIT,
              `queue grew by ${
                last.queued - first.queued
              } while ${producedDuring} records were produced`,
            );
            assert.equal(service.hasExited, false, "the service exited during the outage");
          },
        ),
      );

      ok(
        await t.step("ClickHouse starts again and every record lands exactly once", async () => {
          await server.start();
          progress(`ClickHouse back; producing 20 s more`);
          await delay(20_000);
          producing.abort();
          const summary = await produced!;
          assert.equal(summary.aborted, true);
          const total = summary.sent;
          progress(`${total} records produced in all`);
          assert.equal(
            await waitForRows(world.database, total, 300_000, { url: server.url }),
            total,
          );
          const records = syntheticRecords({ seed, now, distinctResourceIds: true }).take(total)
            .toArray();
          await assertExactlyOnceOn(server, world.database, records);
          // The KV bookkeeping of the last batch follows its INSERT by a moment.
          let end = await sample();
          for (const deadline = Date.now() + 30_000; end.queued > 0 && Date.now() < deadline;) {
            await delay(1_000);
            end = await sample();
          }
          samples.push(end);
          assert.equal(end.queued, 0, "rows left in the queue");
          assert.equal(end.landed, total);
          assert.equal(await storedCount(world.database, { url: server.url }), total);
          const log = await world.proxy.readAccessLog();
          const outage = log.filter((e) => e.status === 502);
          assert.ok(outage.length > 0, "nginx never answered 502: the outage was not seen");
          const requests = (await (await fetch(metricsUrl)).text()).split("\n")
            .filter((l) => l.startsWith("anonymizer_clickhouse_requests_total{"));
          progress(`nginx: ${log.length} requests, ${outage.length} answered 502`);
          progress(`service: ${requests.join("; ")}`);
        }),
      );

      await t.step("the totals views count each row once", async () => {
        const compared = await assertTotalsMatch((sql) => server.query(sql), world.database);
        for (const c of compared) {
          progress(`${c.view} by (${c.keys}): ${c.totals} over ${c.groups} groups`);
        }
      });

      if (server.kind === "modern") {
        await t.step(
          "every INSERT carried its batch token, and no batch was written twice",
          async () => {
            const { inserts, resends } = await assertInsertsCarriedTokens(
              (sql) => server.query(sql),
              world.database,
            );
            progress(
              `query_log: ${inserts} INSERTs reached ClickHouse, ${resends} dropped as resends`,
            );
          },
        );
      }

      await t.step("the service stops cleanly", async () => {
        const status = await service.kill("SIGTERM");
        const log = await Deno.readTextFile(service.logPath);
        assert.equal(status.code, 0, log.slice(-3000));
        // Failed requests are expected; an exception escaping into the flusher's retry loop is not.
        const escaped = log.split("\n").filter((l) => /Flusher step failed|Uncaught/.test(l));
        assert.deepEqual(escaped.slice(0, 5), [], "unexpected errors in the service log");
        const levels: Record<string, number> = {};
        for (const m of log.matchAll(/\[(TRC|DBG|INF|WRN|ERR|FTL)\]/g)) {
          levels[m[1]!] = (levels[m[1]!] ?? 0) + 1;
        }
        progress(`service log: ${log.split("\n").length} lines, levels ${JSON.stringify(levels)}`);
      });
    } finally {
      producing.abort();
      await produced?.catch(() => {});
      await service.kill("SIGKILL");
      await admin.disconnect();
      if (!server.running) await server.start();
      const rss = samples.map((s) => (s.rss / MB).toFixed(1));
      progress(`RSS samples (MB): ${rss.join(" ")}`);
      progress(`queue samples: ${samples.map((s) => s.queued).join(" ")}`);
      progress(`lag samples: ${samples.map((s) => s.lag).join(" ")}`);
    }
  },
});

Deno.test("anonymizer /metrics reports the KV queue as it is at the scrape", async (t) => {
  // What an operator watches during an outage: the queue growing in KV.
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-metrics-" });
  try {
    await using queue = await openQueue(`${dir}/queue.kv`);
    const metrics = createMetrics(queue);
    const row = stockRows(1, 1)[0]!;
    await t.step("an empty queue scrapes as 0 rows", async () => {
      assert.equal(gauge(await metrics.registry.metrics(), "anonymizer_queue_rows"), 0);
    });
    await t.step("10 rows queued scrape as 10 rows at once", async () => {
      const entries = Array.from({ length: 10 }, (_, i) => ({ offset: BigInt(i), row }));
      await queue.append("http_log", 0, entries, { next: 10n });
      const text = await metrics.registry.metrics();
      assert.equal(gauge(text, "anonymizer_queue_rows"), 10, "anonymizer_queue_rows");
      assert.ok(gauge(text, "anonymizer_kv_disk_bytes") > 0, "anonymizer_kv_disk_bytes");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
