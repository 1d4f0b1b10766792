import assert from "node:assert/strict";
import RequestQueue from "kafkajs/request-queue";
import { kafkaClient } from "./kafka_client.ts";
import { TIMEOUT_CHECK_MS } from "./_kafkajs_idle_fix.ts";

interface QueueUnderTest {
  pending: unknown[];
  throttledUntil: number;
  throttleCheckTimeoutId: number | null;
  enforceRequestTimeout: boolean;
  requestTimeout: number;
  inflight: Map<number, { sentAt: number; requestTimeout: number; timeoutRequest(): void }>;
  isConnected(): boolean;
  destroy(): void;
  scheduleCheckPendingRequests(): void;
  scheduleRequestTimeoutCheck(): void;
}

function requestQueue(options: { enforceRequestTimeout?: boolean } = {}): QueueUnderTest {
  const quiet = { debug() {}, info() {}, warn() {}, error() {} };
  const Queue = RequestQueue as unknown as new (options: object) => QueueUnderTest;
  return new Queue({
    maxInFlightRequests: 1,
    requestTimeout: 30_000,
    enforceRequestTimeout: options.enforceRequestTimeout ?? false,
    clientId: "anonymizer-test",
    broker: "127.0.0.1:9092",
    logger: quiet,
  });
}

Deno.test("kafkaClient() patches kafkajs's idle request-queue timers", async (t) => {
  await t.step("the patched kafkajs method and its fields still exist", () => {
    const queue = requestQueue();
    assert.equal(typeof queue.scheduleCheckPendingRequests, "function");
    assert.deepEqual(queue.pending, []);
    assert.equal(queue.throttledUntil, -1);
    assert.equal(queue.throttleCheckTimeoutId, null);
    assert.equal(typeof queue.scheduleRequestTimeoutCheck, "function");
    assert.equal(typeof queue.destroy, "function");
    assert.equal(queue.isConnected(), true);
    assert.ok(queue.inflight instanceof Map);
    assert.equal(queue.requestTimeout, 30_000);
    assert.equal(queue.enforceRequestTimeout, false);
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

  await t.step("the request-timeout check runs once a second, not every 100 ms", () => {
    const { delays } = scheduleTimeoutCheck(requestQueue({ enforceRequestTimeout: true }));
    assert.deepEqual(delays, [TIMEOUT_CHECK_MS]);
  });

  await t.step("the check times out overdue requests only", () => {
    const queue = requestQueue({ enforceRequestTimeout: true });
    const timedOut: number[] = [];
    const request = (id: number, sentAt: number) => ({
      sentAt,
      requestTimeout: 30_000,
      timeoutRequest: () => timedOut.push(id),
    });
    queue.inflight.set(1, request(1, Date.now() - 31_000));
    queue.inflight.set(2, request(2, Date.now() - 1_000));
    const { checks } = scheduleTimeoutCheck(queue);
    checks[0]!();
    assert.deepEqual(timedOut, [1]);
  });

  await t.step("a queue that does not enforce timeouts schedules no check", () => {
    const { delays } = scheduleTimeoutCheck(requestQueue({ enforceRequestTimeout: false }));
    assert.deepEqual(delays, []);
  });
});

/** Runs `queue.scheduleRequestTimeoutCheck()` with the interval timer captured, not started. */
function scheduleTimeoutCheck(
  queue: QueueUnderTest,
): { delays: number[]; checks: Array<() => void> } {
  const delays: number[] = [];
  const checks: Array<() => void> = [];
  const original = globalThis.setInterval;
  globalThis.setInterval = ((fn: () => void, ms: number) => {
    checks.push(fn);
    delays.push(ms);
    return 0;
  }) as unknown as typeof setInterval;
  try {
    queue.scheduleRequestTimeoutCheck();
  } finally {
    globalThis.setInterval = original;
  }
  return { delays, checks };
}
