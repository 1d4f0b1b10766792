/**
 * Fault injection on the real stack: the Kafka broker restarts while records
 * are produced and consumed. A private broker (testing/kafka_broker.ts) takes
 * the restart; the shared one is never touched.
 */
import assert from "node:assert/strict";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { keepLog, progress, startFeed } from "../testing/feed.ts";
import { startKafkaBroker } from "../testing/kafka_broker.ts";
import {
  assertExactlyOnce,
  assertStopsCleanly,
  createWorld,
  delay,
  flushedRows,
  joinedPartitions,
  spawnService,
  storedCount,
  waitForRows,
} from "../testing/pipeline.ts";
import { topicMessageCount } from "../testing/stack.ts";

Deno.test({
  name: "anonymizer stores every record exactly once across a Kafka broker restart mid-stream",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using broker = await startKafkaBroker();
    // The topics live on the private broker; ClickHouse and the proxy are as usual.
    await using world = await createWorld({ brokers: broker.brokers, prefix: "fault" });
    const feed = await startFeed(broker.brokers, world.topic, { rate: 300, seed: 4242 });
    const service = await spawnService(world);
    let records: HttpLogRecord[] = [];
    let feedStopped = false;
    try {
      let ackedAtStop = 0;
      let storedAtStop = 0;
      const before = await t.step(
        "the service consumes and stores rows before the restart",
        async () => {
          await service.waitForLog(/Joined group/, { timeoutMs: 60_000 });
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
        assert.equal(
          await topicMessageCount(world.topic, { brokers: broker.brokers }),
          records.length,
        );
      });

      await t.step("each id is stored once, every address masked", async () => {
        await assertExactlyOnce(world.database, records);
      });

      await t.step(
        "the service logged the outage, kept running and rejoined with every partition",
        () => {
          const log = service.log();
          const failures = log.split("\n").filter((l) =>
            /ECONNREFUSED|Kafka consumer crashed|Cannot commit offset/.test(l)
          );
          assert.ok(failures.length > 0, "no sign of the broker outage in the service log");
          assert.equal(service.hasExited, false, "the service exited");
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
        await assertStopsCleanly(service);
      });
    } finally {
      if (!feedStopped) await feed.stop().catch(() => {});
      await service.kill("SIGTERM");
      progress(`service log kept at ${await keepLog(service.logPath)}`);
    }
  },
});
