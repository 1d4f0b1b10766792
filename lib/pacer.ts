/**
 * When the next request may go through ch-proxy.
 *
 * nginx's `limit_req` with `rate=1r/m` stores the rate as 16 requests per
 * 1000 s (integer arithmetic), so one request is accepted per 62.5 s, not 60 s.
 * A refused request does not move nginx's timer, so after a refusal the next
 * slot is still measured from the last accepted request.
 *
 * @module
 */

/** Pacing facts about past requests (persisted in KV). */
export interface PacingState {
  /** Send time (ms) of the last request that may have used a proxy slot, or `null`. */
  lastConsumedAt: number | null;
  /** Send time (ms) of a request whose response never came (e.g. a crash), or `null`. */
  inflightSince: number | null;
  /** Time (ms) of the last refusal (503), or `null`. Kept in memory only. */
  lastRefusedAt?: number | null;
}

/** Options of {@linkcode nextSlotAt}. */
export interface PacingOptions {
  /** Minimum spacing between accepted requests, ms. Default: `62_500` (stock ch-proxy). */
  spacingMs?: number;
  /** Safety margin added to the spacing, ms. Default: `750`. */
  marginMs?: number;
  /** Wait after a refusal before trying again, ms. Default: `5_000`. */
  refusalRetryMs?: number;
}

/**
 * The earliest time (ms since the epoch) the next request may be sent.
 *
 * @example
 * ```ts
 * import { nextSlotAt } from "./pacer.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(nextSlotAt({ lastConsumedAt: null, inflightSince: null }), 0);
 * assert.equal(nextSlotAt({ lastConsumedAt: 1_000, inflightSince: null }), 64_250);
 * // A request that never got its answer may have used the slot.
 * assert.equal(nextSlotAt({ lastConsumedAt: 1_000, inflightSince: 70_000 }), 133_250);
 * // After a refusal, wait at least refusalRetryMs.
 * assert.equal(
 *   nextSlotAt({ lastConsumedAt: 1_000, inflightSince: null, lastRefusedAt: 64_300 }),
 *   69_300,
 * );
 * ```
 */
export function nextSlotAt(state: PacingState, options: PacingOptions = {}): number {
  const spacing = (options.spacingMs ?? 62_500) + (options.marginMs ?? 750);
  const consumed = Math.max(state.lastConsumedAt ?? -Infinity, state.inflightSince ?? -Infinity);
  const refused = state.lastRefusedAt ?? -Infinity;
  return Math.max(0, consumed + spacing, refused + (options.refusalRetryMs ?? 5_000));
}
