/**
 * Freeing a large scratch buffer as soon as it is dead, instead of at V8's
 * next garbage collection.
 *
 * @module
 */

/**
 * Frees the memory of `buffer` now by transferring it to an empty buffer,
 * which detaches it: every view of it then reads as empty. Does nothing to a
 * buffer already detached or shared.
 *
 * V8 frees an ArrayBuffer's memory only when a garbage collection finds it
 * dead, and it lets such external memory grow by tens of MB before it
 * collects for it. A seal encodes and compresses a body up to nine times, a
 * few MB each, so without this the service's RSS carried several seals'
 * garbage (docs/capacity.md). Call it only on a buffer nothing else uses.
 *
 * @example
 * ```ts
 * import { releaseBuffer } from "./_release.ts";
 * import assert from "node:assert/strict";
 *
 * const scratch = new Uint8Array(1_000_000);
 * releaseBuffer(scratch.buffer);
 * assert.equal(scratch.buffer.detached, true);
 * assert.equal(scratch.length, 0);
 * ```
 */
export function releaseBuffer(buffer: ArrayBufferLike): void {
  if (buffer instanceof ArrayBuffer && !buffer.detached) buffer.transfer(0);
}
