/**
 * Kafka down at start-up: the service keeps retrying with capped backoff,
 * answers not ready on /readyz, logs one line per try naming KAFKA_BROKERS,
 * and once the broker starts it joins and stores every record exactly once.
 * A private broker (testing/kafka_broker.ts) is stopped before the service
 * starts; the shared one is never touched.
 */
import assert from "node:assert/strict";
import { startKafkaBroker } from "../testing/kafka_broker.ts";
import {
  assertStopsCleanly,
  createWorld,
  delay,
  produceRecords,
  spawnService,
  waitForRows,
} from "../testing/pipeline.ts";
import { CLICKHOUSE_TARGETS, clickhouseQuery } from "../testing/stack.ts";

const RETRY_LINE = /Cannot connect the dead-letter producer with Kafka at KAFKA_BROKERS=/g;

for (const target of CLICKHOUSE_TARGETS) {
  Deno.test({
    name: `startService() waits for a broker started after it on ClickHouse ${target.name}`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      await using broker = await startKafkaBroker();
      await using world = await createWorld({
        brokers: broker.brokers,
        prefix: "kstart",
        clickhouse: { url: target.url },
      });
      await broker.stop();
      const service = await spawnService(world, { metrics: true });
      try {
        await t.step("without a broker it stays up, not ready, one line per try", async () => {
          await service.waitForLog(RETRY_LINE, { timeoutMs: 60_000 });
          // The old start-up died after about 6 s; three tries take 6 s of connects plus 3 s of waits.
          await service.waitForLog(/\(try 3\)/, { timeoutMs: 60_000 });
          assert.equal(service.hasExited, false, service.log());
          const res = await fetch(`http://${service.metricsAddr}/readyz`);
          await res.body?.cancel();
          assert.equal(res.status, 503);
          const tries = [...service.log().matchAll(RETRY_LINE)].length;
          const numbered = [...service.log().matchAll(/\(try (\d+)\)/g)].map((m) => Number(m[1]));
          assert.deepEqual(numbered, Array.from({ length: tries }, (_, i) => i + 1));
          assert.match(service.log(), new RegExp(`KAFKA_BROKERS="?${broker.brokers}`));
        });
        await t.step("the broker starts; the service joins and becomes ready", async () => {
          await broker.start();
          await service.waitForLog(/Joined group/, { timeoutMs: 120_000 });
          const res = await fetch(`http://${service.metricsAddr}/readyz`);
          await res.body?.cancel();
          assert.equal(res.status, 200);
        });
        await t.step("every record produced lands exactly once", async () => {
          const { records } = await produceRecords(world, { count: 500, seed: 8 });
          assert.equal(await waitForRows(world.database, 500, 180_000, { url: target.url }), 500);
          // Give a late duplicate a chance to show up before counting.
          await delay(2_000);
          const stored = (await clickhouseQuery(
            `SELECT count(), uniqExact(resource_id), ` +
              `countIf(resource_id IN (${records.map((r) => r.resourceId).join(",")})) ` +
              `FROM ${world.database}.http_log FORMAT TabSeparated`,
            { url: target.url },
          )).trim();
          assert.equal(stored, "500\t500\t500", "rows, distinct ids, produced ids");
        });
        await t.step("it stops cleanly, with no uncaught error in its log", async () => {
          await assertStopsCleanly(service);
          assert.doesNotMatch(service.log(), /Uncaught|KafkaJSNumberOfRetriesExceeded\s*\n\s+at /);
        });
      } finally {
        await service.kill("SIGKILL");
      }
    },
  });
}
