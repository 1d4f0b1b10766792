/**
 * Stops kafkajs 2.2.4 from waking an idle process many times a second per
 * broker connection. Two timers of its RequestQueue do it:
 *
 * - The pending-request check re-arms `setTimeout(check, throttledUntil - now)`
 *   after every check; with no throttle `throttledUntil` is -1, the delay is
 *   negative and becomes 1 ms, forever (tulios/kafkajs#1556, #1704; also the
 *   source of the "TimeoutNegativeWarning" on stderr). With nothing pending
 *   and no throttle there is nothing to check later: the next `push()` that
 *   queues a request schedules its own check. Measured on the end-to-end
 *   benchmark: idle CPU 24 → 6 ms/s, CPU per million records 130 → 65 s.
 * - The request-timeout check runs every `min(requestTimeout, 100)` ms for as
 *   long as the connection is open, whether a request is in flight or not.
 *   With the 30 s default timeout (the fetch's adds its wait to it), a
 *   timeout found up to a second late changes nothing, so the check runs
 *   every {@linkcode TIMEOUT_CHECK_MS} instead: a tenth of the wake-ups.
 *
 * kafkajs has had no release since 2023 and is pinned in deno.json, so the
 * internals patched here cannot move under us; kafka_client_test.ts fails if
 * an upgrade removes or renames them.
 *
 * @module
 */
import RequestQueue from "kafkajs/request-queue";

/** How often a connection looks for requests past their timeout, ms. */
export const TIMEOUT_CHECK_MS = 1_000;

interface InflightRequest {
  sentAt: number;
  requestTimeout: number;
  timeoutRequest(): void;
}

interface Queue {
  pending: unknown[];
  throttledUntil: number;
  enforceRequestTimeout: boolean;
  requestTimeout: number;
  requestTimeoutIntervalId: ReturnType<typeof setInterval> | undefined;
  inflight: Map<number, InflightRequest>;
  isConnected(): boolean;
  destroy(): void;
}

let applied = false;

/** Times out the requests of `queue` older than their timeout; stops when disconnected. */
function expireOverdue(queue: Queue): void {
  const now = Date.now();
  for (const request of queue.inflight.values()) {
    if (now - request.sentAt > request.requestTimeout) request.timeoutRequest();
  }
  if (!queue.isConnected()) queue.destroy();
}

/**
 * Patches kafkajs's `RequestQueue.prototype.scheduleCheckPendingRequests` and
 * `scheduleRequestTimeoutCheck` once per process; later calls do nothing.
 */
export function applyKafkajsIdleFix(): void {
  if (applied) return;
  applied = true;
  const proto = (RequestQueue as unknown as { prototype: Record<string, unknown> }).prototype;
  const original = proto.scheduleCheckPendingRequests as (this: Queue) => void;
  proto.scheduleCheckPendingRequests = function (this: Queue): void {
    if (this.pending.length === 0 && this.throttledUntil - Date.now() <= 0) return;
    original.call(this);
  };
  proto.scheduleRequestTimeoutCheck = function (this: Queue): void {
    if (!this.enforceRequestTimeout) return;
    // As kafkajs does: a reconnect replaces the check of the connection before.
    this.destroy();
    const every = Math.min(this.requestTimeout, TIMEOUT_CHECK_MS);
    this.requestTimeoutIntervalId = setInterval(() => expireOverdue(this), every);
  };
}
