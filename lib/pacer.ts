/**
 * The one place request slots are timed: when the next request may go
 * through a rate-limited proxy, and the pacing state persisted across
 * restarts and shared with `anonymizer migrate`.
 *
 * nginx's `limit_req` with `rate=1r/m` stores the rate as 16 requests per
 * 1000 s (integer arithmetic), so one request is accepted per 62.5 s, not 60 s.
 * A refused request does not move nginx's timer, so after a refusal the next
 * slot is still measured from the last accepted request.
 *
 * @module
 */

import type { RequestOutcome } from "./errors.ts";

/** Spacing of stock ch-proxy between accepted requests, ms: nginx's `1r/m` as 16 per 1000 s. */
export const DEFAULT_SPACING_MS = 62_500;

/** Pacing facts about past requests, persisted so a restart cannot reuse a slot. */
export interface PacerState {
  /** Send time (ms) of the last request that may have used a proxy slot, or `null`. */
  lastConsumedAt: number | null;
  /** Send time (ms) of a request whose response never came (e.g. a crash), or `null`. */
  inflightSince: number | null;
}

/** Where a {@linkcode Pacer} keeps its {@linkcode PacerState}; the KV queue is one. */
export interface PacerStore {
  /** The stored state, or both fields `null` before any request. */
  pacer(): Promise<PacerState>;
  /** Replaces the stored state. */
  setPacer(state: PacerState): Promise<void>;
}

/** Options of {@linkcode nextSlotAt} and {@linkcode Pacer}. */
export interface PacingOptions {
  /** Minimum spacing between accepted requests, ms. Default: {@linkcode DEFAULT_SPACING_MS}. */
  spacingMs?: number;
  /** Safety margin added to the spacing, ms. Default: `750`. */
  marginMs?: number;
  /** Wait after a refusal before trying again, ms. Default: `5_000`. */
  refusalRetryMs?: number;
}

/** Options of {@linkcode Pacer}. */
export interface PacerOptions extends PacingOptions {
  /** Clock. Default: `Date.now`. */
  now?: () => number;
}

/** The result of {@linkcode Pacer.request}. */
export type PacedResult<T> =
  | { ok: true; value: T }
  | { ok: false; error: unknown; slotUsed: boolean };

/**
 * The earliest time (ms since the epoch) the next request may be sent, given
 * the persisted `state` and the time of the last refusal, kept in memory only.
 *
 * @example
 * ```ts
 * import { nextSlotAt } from "./pacer.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(nextSlotAt({ lastConsumedAt: null, inflightSince: null }, null), 0);
 * assert.equal(nextSlotAt({ lastConsumedAt: 1_000, inflightSince: null }, null), 64_250);
 * // A request that never got its answer may have used the slot.
 * assert.equal(nextSlotAt({ lastConsumedAt: 1_000, inflightSince: 70_000 }, null), 133_250);
 * // After a refusal, wait at least refusalRetryMs.
 * assert.equal(nextSlotAt({ lastConsumedAt: 1_000, inflightSince: null }, 64_300), 69_300);
 * ```
 */
export function nextSlotAt(
  state: PacerState,
  lastRefusedAt: number | null,
  options: PacingOptions = {},
): number {
  const spacing = (options.spacingMs ?? DEFAULT_SPACING_MS) + (options.marginMs ?? 750);
  const consumed = Math.max(state.lastConsumedAt ?? -Infinity, state.inflightSince ?? -Infinity);
  const refused = lastRefusedAt ?? -Infinity;
  return Math.max(0, consumed + spacing, refused + (options.refusalRetryMs ?? 5_000));
}

/**
 * Whether a failed request may have used a proxy slot: every one does but
 * those the proxy refused (503, or a refused connection) or whose size it
 * refused (413). `null`, an error nobody classified, counts as used.
 *
 * @example
 * ```ts
 * import { slotUsedBy } from "./pacer.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(slotUsedBy("refused"), false);
 * assert.equal(slotUsedBy("unknown"), true);
 * assert.equal(slotUsedBy(null), true);
 * ```
 */
export function slotUsedBy(outcome: RequestOutcome | null): boolean {
  return outcome !== "refused" && outcome !== "too_large";
}

/**
 * Times requests through a rate-limited proxy and keeps the shared pacing
 * state in its store true. The send time is written before a request leaves,
 * so a process that dies mid-request makes the next start treat the slot as
 * used.
 *
 * @example A refusal costs no slot, only a short retry wait
 * ```ts
 * import { Pacer, type PacerState } from "./pacer.ts";
 * import assert from "node:assert/strict";
 *
 * let state: PacerState = { lastConsumedAt: null, inflightSince: null };
 * const store = { pacer: () => Promise.resolve(state), setPacer: async (s: PacerState) => { state = s; } };
 * let now = 1_000;
 * const pacer = new Pacer(store, { now: () => now });
 * assert.deepEqual(await pacer.request(() => Promise.resolve("ok"), () => true), { ok: true, value: "ok" });
 * assert.equal(await pacer.nextSlot(), 64_250);
 * now = 64_250;
 * const refused = await pacer.request(() => Promise.reject(new Error("503")), () => false);
 * assert.equal(refused.ok, false);
 * assert.equal(await pacer.nextSlot(), 69_250);
 * ```
 */
export class Pacer {
  readonly #store: PacerStore;
  readonly #options: Required<PacingOptions>;
  readonly #now: () => number;
  #lastRefusedAt: number | null = null;

  /** A pacer keeping its state in `store`. */
  constructor(store: PacerStore, options: PacerOptions = {}) {
    this.#store = store;
    this.#now = options.now ?? Date.now;
    this.#options = {
      spacingMs: options.spacingMs ?? DEFAULT_SPACING_MS,
      marginMs: options.marginMs ?? 750,
      refusalRetryMs: options.refusalRetryMs ?? 5_000,
    };
  }

  /** Minimum spacing between accepted requests, ms. */
  get spacingMs(): number {
    return this.#options.spacingMs;
  }

  /** The earliest time (ms) the next request may be sent. */
  async nextSlot(): Promise<number> {
    return nextSlotAt(await this.#store.pacer(), this.#lastRefusedAt, this.#options);
  }

  /**
   * Counts the slot of a request that was on the wire when the process
   * stopped as used. Returns that request's send time, or `null` if none was.
   */
  async recover(): Promise<number | null> {
    const state = await this.#store.pacer();
    if (state.inflightSince === null) return null;
    await this.#store.setPacer({
      lastConsumedAt: Math.max(state.lastConsumedAt ?? 0, state.inflightSince),
      inflightSince: null,
    });
    return state.inflightSince;
  }

  /**
   * Sends `send` as the request of the current slot (the caller waits for
   * {@linkcode Pacer.nextSlot} first). `slotUsed` tells from a failure whether
   * the proxy let the request through; one it refused moves only the short
   * refusal wait. A failure is returned, not thrown.
   */
  async request<T>(
    send: () => Promise<T>,
    slotUsed: (error: unknown) => boolean,
  ): Promise<PacedResult<T>> {
    const before = await this.#store.pacer();
    const sentAt = this.#now();
    await this.#store.setPacer({ ...before, inflightSince: sentAt });
    let result: PacedResult<T>;
    try {
      result = { ok: true, value: await send() };
    } catch (error) {
      result = { ok: false, error, slotUsed: slotUsed(error) };
    }
    const used = result.ok || result.slotUsed;
    await this.#store.setPacer({
      lastConsumedAt: used ? sentAt : before.lastConsumedAt,
      inflightSince: null,
    });
    this.#lastRefusedAt = used ? null : this.#now();
    return result;
  }
}
