/**
 * Sends one request in a ch-proxy slot and keeps the shared pacing state in
 * KV true. The send time is written before the request leaves, so a process
 * that dies mid-request makes the next start treat the slot as used.
 *
 * @module
 */
import { ClickHouseError } from "./errors.ts";
import type { KvQueue } from "./queue/kv_queue.ts";

/** The result of {@linkcode pacedRequest}. */
export type PacedResult<T> =
  | { ok: true; value: T }
  | { ok: false; error: ClickHouseError; slotUsed: boolean };

/**
 * Runs `send` as the request of the current slot. Non-ClickHouse errors are
 * rethrown after the pacing state is settled (the slot counts as used).
 */
export async function pacedRequest<T>(
  queue: KvQueue,
  send: () => Promise<T>,
  options: { now?: () => number } = {},
): Promise<PacedResult<T>> {
  const now = options.now ?? Date.now;
  const pacer = await queue.pacer();
  const sentAt = now();
  await queue.setPacer({ ...pacer, inflightSince: sentAt });
  try {
    const value = await send();
    await queue.setPacer({ lastConsumedAt: sentAt, inflightSince: null });
    return { ok: true, value };
  } catch (err) {
    const slotUsed = !(err instanceof ClickHouseError) ||
      !(err.outcome === "refused" || err.outcome === "too_large");
    await queue.setPacer({
      lastConsumedAt: slotUsed ? sentAt : pacer.lastConsumedAt,
      inflightSince: null,
    });
    if (!(err instanceof ClickHouseError)) throw err;
    return { ok: false, error: err, slotUsed };
  }
}
