import assert from "node:assert/strict";
import RequestQueue from "kafkajs/request-queue";
import { kafkaClient } from "./kafka_client.ts";

interface QueueUnderTest {
  pending: unknown[];
  throttledUntil: number;
  throttleCheckTimeoutId: number | null;
  scheduleCheckPendingRequests(): void;
}

function requestQueue(): QueueUnderTest {
  const quiet = { debug() {}, info() {}, warn() {}, error() {} };
  const Queue = RequestQueue as unknown as new (options: object) => QueueUnderTest;
  return new Queue({
    maxInFlightRequests: 1,
    requestTimeout: 1_000,
    enforceRequestTimeout: false,
    clientId: "anonymizer-test",
    broker: "127.0.0.1:9092",
    logger: quiet,
  });
}

Deno.test("kafkaClient() patches kafkajs's idle request-queue check", async (t) => {
  await t.step("the patched kafkajs method and its fields still exist", () => {
    const queue = requestQueue();
    assert.equal(typeof queue.scheduleCheckPendingRequests, "function");
    assert.deepEqual(queue.pending, []);
    assert.equal(queue.throttledUntil, -1);
    assert.equal(queue.throttleCheckTimeoutId, null);
  });

  kafkaClient(["127.0.0.1:9092"], { clientId: "anonymizer-test" });

  await t.step("an idle, unthrottled queue schedules no check", () => {
    const queue = requestQueue();
    queue.scheduleCheckPendingRequests();
    assert.equal(queue.throttleCheckTimeoutId, null);
  });

  await t.step("a queue with a pending request still schedules its check", () => {
    const queue = requestQueue();
    queue.pending.push({});
    queue.scheduleCheckPendingRequests();
    assert.notEqual(queue.throttleCheckTimeoutId, null);
    clearTimeout(queue.throttleCheckTimeoutId!);
  });
});
