/**
 * Fault injection on the real stack: the Kafka broker restarts while records
 * are produced and consumed. A private broker (tests/_kafka_broker.ts) takes
 * the restart; the shared one is never touched.
 */
import assert from "node:assert/strict";
import { ClickHouseClient } from "../lib/clickhouse_client.ts";
import { migrate } from "../lib/migrate.ts";
import type { HttpLogRecord } from "../lib/types.ts";
import { keepLog, progress, startFeed, topicMessageCount } from "./_feed.ts";
import { type KafkaBroker, startKafkaBroker } from "./_kafka_broker.ts";
import {
  assertExactlyOnce,
  delay,
  spacingFor,
  storedCount,
  waitForRows,
  type World,
} from "./_pipeline.ts";
import { flushedRows, joinedPartitions, spawnServiceChild } from "./_service_process.ts";
import { CLICKHOUSE_URL, clickhouseQuery, startProxy, uniqueName } from "./_stack.ts";

const PROXY_RATE = "120r/m";

/** Like `createWorld()`, but the topics live on `broker` instead of the shared Kafka. */
async function createWorldOn(broker: KafkaBroker): Promise<World> {
  const topic = await broker.createTopic(uniqueName("fault"), 3);
  const dlqTopic = await broker.createTopic(`${topic}_dlq`, 1);
  const database = uniqueName("fault");
  await migrate(new ClickHouseClient(CLICKHOUSE_URL), { database });
  const proxy = await startProxy({ rate: PROXY_RATE });
  const spacingMs = spacingFor(PROXY_RATE);
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-fault-" });
  const env: Record<string, string> = {
    KAFKA_BROKERS: broker.brokers,
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

Deno.test({
  name: "anonymizer stores every record exactly once across a Kafka broker restart mid-stream",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using broker = await startKafkaBroker();
    await using world = await createWorldOn(broker);
    const feed = await startFeed(broker.brokers, world.topic, { rate: 300, seed: 4242 });
    const service = await spawnServiceChild(world, { name: "service" });
    let records: HttpLogRecord[] = [];
    let feedStopped = false;
    try {
      let ackedAtStop = 0;
      let storedAtStop = 0;
      const before = await t.step(
        "the service consumes and stores rows before the restart",
        async () => {
          await service.waitForLog(/Joined group/, 60_000);
          await feed.waitForAcked(3_000);
          assert.ok(await waitForRows(world.database, 1_000, 60_000) >= 1_000);
        },
      );
      if (!before) return;

      const restarted = await t.step(
        "the broker stops, stays down 5 s and starts again on the same data",
        async () => {
          ackedAtStop = feed.acked.length;
          storedAtStop = await storedCount(world.database);
          progress(
            `stopping the broker: ${ackedAtStop} records acknowledged, ${storedAtStop} stored`,
          );
          await broker.stop();
          assert.equal(broker.running, false);
          const ackedWhenDown = feed.acked.length;
          await delay(5_000);
          assert.equal(
            feed.acked.length,
            ackedWhenDown,
            "records were acknowledged while the broker was down",
          );
          await broker.start();
          progress(
            `broker back after 5 s down; ${ackedWhenDown} records were acknowledged before it`,
          );
          assert.equal(broker.running, true);
        },
      );
      if (!restarted) return;

      const resumed = await t.step("production and storage resume after the restart", async () => {
        await feed.waitForAcked(ackedAtStop + 3_000, 180_000);
        const target = (await storedCount(world.database)) + 1_000;
        assert.ok(await waitForRows(world.database, target, 180_000) >= target);
        progress(
          `${feed.acked.length} acknowledged, producer retried ${feed.failedRequests} requests`,
        );
      });
      if (!resumed) return;

      await t.step("every acknowledged record lands", async () => {
        records = await feed.stop();
        feedStopped = true;
        progress(`feed stopped at ${records.length} records`);
        assert.ok(records.length >= ackedAtStop + 3_000);
        assert.equal(await waitForRows(world.database, records.length, 300_000), records.length);
        // Give a late duplicate a chance to show up before counting.
        await delay(5_000);
      });

      await t.step("Kafka holds each produced record once (the premise of the check)", async () => {
        assert.equal(await topicMessageCount(broker.brokers, world.topic), records.length);
      });

      await t.step("each id is stored once, every address masked", async () => {
        await assertExactlyOnce(world.database, records);
      });

      await t.step(
        "the service logged the outage, kept running and rejoined with every partition",
        async () => {
          const log = await service.readLog();
          const failures = log.split("\n").filter((l) =>
            /ECONNREFUSED|Kafka consumer crashed|Cannot commit offset/.test(l)
          );
          assert.ok(failures.length > 0, "no sign of the broker outage in the service log");
          assert.equal(service.exited, false, "the service exited");
          const joins = joinedPartitions(log);
          progress(
            `service log: ${failures.length} connection failure lines, ${joins.length} group joins ` +
              `(${joins.map((p) => p.join(",")).join(" / ")}), ${
                flushedRows(log).length
              } batches flushed`,
          );
          assert.ok(joins.length >= 1);
          assert.deepEqual(
            joins.at(-1),
            [0, 1, 2],
            "the only consumer owns every partition after the restart",
          );
        },
      );

      await t.step("the service stops cleanly on SIGTERM", async () => {
        const status = await service.kill("SIGTERM");
        assert.equal(status.code, 0);
        assert.match(await service.readLog(), /Stopped cleanly/);
      });
    } finally {
      if (!feedStopped) await feed.stop().catch(() => {});
      await service.kill("SIGTERM");
      progress(`service log kept at ${await keepLog(service.logPath)}`);
    }
  },
});
