/**
 * How long the service's Kafka fetches wait for data, from the proxy's
 * spacing.
 *
 * @module
 */

/** Longest fetch wait, ms: the one at the stock proxy's spacing. */
export const MAX_FETCH_WAIT_MS = 10_000;
/** Shortest fetch wait, ms, for a spacing of zero. */
const MIN_FETCH_WAIT_MS = 100;

/**
 * The fetch wait for requests spaced `spacingMs` apart: a sixth of it, in
 * 100 ms – 10 s.
 *
 * Each fetch's batches cost a KV append, a Kafka commit and a KV promote
 * whatever their size, so a long wait saves CPU when traffic is light. But at
 * live rates a fetch returns when its wait is over, not at 1 MiB, so a record
 * reaches the queue up to one fetch wait after it reached Kafka, and records
 * produced together can fall into two fetches and so two slots. A sixth of
 * the spacing keeps that delay under a sixth of a slot at any proxy rate; at
 * the stock 62.5 s it is 10 s.
 *
 * @example
 * ```ts
 * import { fetchWaitFor } from "./_fetch_wait.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(fetchWaitFor(62_500), 10_000);
 * assert.equal(fetchWaitFor(10_000), 1_666);
 * assert.equal(fetchWaitFor(0), 100);
 * ```
 */
export function fetchWaitFor(spacingMs: number): number {
  return Math.max(MIN_FETCH_WAIT_MS, Math.min(MAX_FETCH_WAIT_MS, Math.floor(spacingMs / 6)));
}
