/**
 * A full garbage collection where the service asks for one, when the run
 * task's `--expose-gc` made it possible, followed by a malloc trim.
 *
 * @module
 */
import { trimMalloc } from "./_malloc.ts";

/**
 * Runs V8's full garbage collection when `--expose-gc` is set, then gives
 * malloc's free pages back to the system ({@linkcode trimMalloc}); without
 * `--expose-gc` does nothing and returns `false`.
 *
 * A seal decodes tens of thousands of rows and reads and writes MB of KV
 * values, all dead once the batch is sealed. Left to itself V8 collects them
 * only as the heap nears its limit and keeps the buffers they hold until
 * then, so the service's RSS between slots carried the last seal
 * (docs/capacity.md). One collection per seal costs a few ms a minute.
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
  trimMalloc();
  return true;
}
