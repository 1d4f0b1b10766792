/**
 * Time-division of one ch-proxy address among the members of a consumer group.
 *
 * @module
 */

/**
 * The first slot start at or after `earliest` that belongs to member
 * `index` of `count`. Slots are a grid anchored at the Unix epoch, `slotMs`
 * apart, and slot `k` belongs to member `k mod count`: every member computes
 * the same owner from its own clock, so no message is needed per slot.
 */
export function sharedSlotAt(
  earliest: number,
  index: number,
  count: number,
  slotMs: number,
): number {
  const k = Math.ceil(earliest / slotMs);
  const ahead = (((index - k) % count) + count) % count;
  return (k + ahead) * slotMs;
}

/** The member that owns the slot starting at `at` (a value from {@linkcode sharedSlotAt}). */
export function slotOwner(at: number, count: number, slotMs: number): number {
  return ((Math.round(at / slotMs) % count) + count) % count;
}
