/**
 * A queue in a temp dir of its own, for unit tests that need a real KV:
 * disposing of it closes the queue and removes the dir.
 *
 * @module
 */
import { type KvQueue, openQueue, type OpenQueueOptions } from "../lib/queue/kv_queue.ts";

/** What {@linkcode openTempQueue} resolves to. */
export interface TempQueue extends AsyncDisposable {
  /** The open queue. */
  queue: KvQueue;
  /** The KV file's path, for a second connection or a reopen. */
  path: string;
}

/** Options of {@linkcode openTempQueue}. */
export interface TempQueueOptions extends OpenQueueOptions {
  /** Prefix of the temp dir's name. Default: `"anonymizer-test-"`. */
  prefix?: string;
}

/**
 * Opens a fresh queue in a new temp dir.
 *
 * @example
 * ```ts
 * import { openTempQueue } from "./temp_queue.ts";
 * import assert from "node:assert/strict";
 *
 * await using tmp = await openTempQueue({ now: () => 0 });
 * assert.equal((await tmp.queue.stats()).queuedRows, 0);
 * ```
 */
export async function openTempQueue(options: TempQueueOptions = {}): Promise<TempQueue> {
  const { prefix = "anonymizer-test-", ...open } = options;
  const dir = await Deno.makeTempDir({ prefix });
  const path = `${dir}/queue.kv`;
  const queue = await openQueue(path, open);
  return {
    queue,
    path,
    async [Symbol.asyncDispose]() {
      queue.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}
