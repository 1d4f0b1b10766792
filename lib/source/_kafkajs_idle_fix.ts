/**
 * Stops kafkajs 2.2.4 from waking the process about a thousand times a
 * second per broker connection while idle.
 *
 * Its RequestQueue re-arms `setTimeout(check, throttledUntil - now)` after
 * every check; with no throttle `throttledUntil` is -1, the delay is negative
 * and becomes 1 ms, forever (tulios/kafkajs#1556, #1704; also the source of
 * the "TimeoutNegativeWarning" on stderr). With nothing pending and no
 * throttle there is nothing to check later: the next `push()` that queues a
 * request schedules its own check. Measured on the end-to-end benchmark:
 * idle CPU 24 → 6 ms/s, CPU per million records 130 → 65 s.
 *
 * kafkajs has had no release since 2023 and is pinned in deno.json, so the
 * internal path patched here cannot move under us; kafka_client_test.ts
 * fails if an upgrade removes or renames it.
 *
 * @module
 */
import RequestQueue from "kafkajs/request-queue";

interface Queue {
  pending: unknown[];
  throttledUntil: number;
}

let applied = false;

/**
 * Patches kafkajs's `RequestQueue.prototype.scheduleCheckPendingRequests`
 * once per process; later calls do nothing.
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
}
