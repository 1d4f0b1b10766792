/**
 * The slot grid that instances sharing one ch-proxy address agree on without
 * talking: slots `slotMs` apart, anchored at the Unix epoch, slot `k` owned by
 * member `k mod count` of the sorted member list.
 *
 * @module
 */

/** The member that owns the slot starting at `at`, a multiple of `slotMs`. */
export function slotOwner(at: number, count: number, slotMs: number): number {
  return ((Math.round(at / slotMs) % count) + count) % count;
}
