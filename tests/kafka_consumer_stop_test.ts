/**
 * kafkaConsumer().stop() on the real broker: a fetch waiting for data is
 * given up, so a stop does not wait for the fetch's long wait, and the
 * member leaves its group, so the next member is assigned at once, with
 * no warning logged (a LeaveGroup whose answer kafkajs no longer waited for
 * showed as "Response without match").
 */
import assert from "node:assert/strict";
import { reset } from "@logtape/logtape";
import { captureLogs } from "../testing/capture_logs.ts";
import { kafkaConsumer } from "../lib/source/kafka_consumer.ts";
import { MAX_FETCH_WAIT_MS as FETCH_WAIT_MS } from "../lib/source/_fetch_wait.ts";
import type { SourceBatch } from "../lib/source/source_consumer.ts";
import { delay } from "../testing/pipeline.ts";
import { createTopic, KAFKA_BROKERS, uniqueName, withKafkaAdmin } from "../testing/stack.ts";
import { produce } from "../tools/produce.ts";

function handlers(joins: string[], batches: SourceBatch[]) {
  return {
    joined: (_partitions: number[], memberId: string) => joins.push(memberId),
    rebalancing: () => {},
    heartbeat: () => {},
    crashed: () => {},
    stopped: () => {},
    batch: (b: SourceBatch) => {
      batches.push(b);
      return Promise.resolve();
    },
  };
}

async function waitUntil(what: string, test: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!test()) {
    if (Date.now() > deadline) throw new Error(`Cannot see ${what} within ${timeoutMs} ms`);
    await delay(50);
  }
}

Deno.test({
  name: "kafkaConsumer() stop() gives up the fetch in flight and leaves the group",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const topic = await createTopic(uniqueName("stop"), 1);
    const groupId = uniqueName("stop_group");
    const brokers = KAFKA_BROKERS.split(",");
    const joins: string[] = [];
    const batches: SourceBatch[] = [];
    const consumer = kafkaConsumer(brokers, { topic, groupId, clientId: "anonymizer-tests" });
    const logs = await captureLogs();

    await t.step(
      "the member joins, reads what is there, then waits on an empty fetch",
      async () => {
        await consumer.start(handlers(joins, batches));
        await waitUntil("a join", () => joins.length === 1, 60_000);
        await produce(brokers, { topic, count: 10, seed: 5, rate: 0 });
        await waitUntil(
          "the 10 records",
          () => batches.flatMap((b) => b.messages).length === 10,
          30_000,
        );
        // The fetch after the batch now waits for data that does not come.
        await delay(500);
      },
    );

    await t.step("stop() returns before the fetch's wait could have ended", async () => {
      const started = performance.now();
      await consumer.stop();
      const ms = performance.now() - started;
      assert.ok(ms < FETCH_WAIT_MS - 1_000, `stop took ${Math.round(ms)} ms`);
    });

    await t.step("no warning is logged, also after the stop", async () => {
      // A late answer arrives within milliseconds on loopback.
      await delay(1_000);
      await reset();
      const warnings = logs.filter((r) => r.level !== "debug" && r.level !== "info");
      assert.deepEqual(warnings.map((r) => r.message.map(String).join("")), []);
    });

    await t.step("the group has no member left", async () => {
      const group = await withKafkaAdmin((admin) => admin.describeGroups([groupId]));
      assert.deepEqual(group.groups[0]?.members, []);
      assert.equal(group.groups[0]?.state, "Empty");
    });
  },
});
