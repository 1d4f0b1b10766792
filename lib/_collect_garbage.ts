/**
 * A full garbage collection where the service asks for one, when the run
 * task's `--expose-gc` made it possible.
 *
 * @module
 */

/**
 * Runs V8's full garbage collection when `--expose-gc` is set; otherwise does
 * nothing and returns `false`.
 *
 * A seal decodes tens of thousands of rows and reads and writes MB of KV
 * values, all dead once the batch is sealed. Left to itself V8 collects them
 * only as the heap nears its limit, and it keeps the small buffers' memory
 * until then: in bench:backlog's drain, 25 MB or more on top of the next
 * seal (docs/capacity.md). One collection per seal costs a few ms a minute.
 *
 * @example
 * ```ts
 * import { collectGarbage } from "./_collect_garbage.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(collectGarbage(), "gc" in globalThis);
 * ```
 */
export function collectGarbage(): boolean {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) return false;
  gc();
  return true;
}
