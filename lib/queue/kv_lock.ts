/**
 * One process per queue: an exclusive OS lock on `<KV_PATH>.lock`, held by
 * the open file. The kernel drops it when the process dies, however it dies,
 * so a crashed holder never blocks a restart.
 *
 * @module
 */
import { QueueError } from "../errors.ts";

/** A held lock; releasing it twice is harmless. */
export interface KvLock extends Disposable {
  /** Path of the lock file. */
  readonly path: string;
  /** Releases the lock and closes the file. */
  release(): void;
}

/**
 * Takes the lock of the queue at `kvPath`, or throws a {@linkcode QueueError}
 * (code `kv_locked`) naming `KV_PATH` and the holder's pid.
 *
 * @example
 * ```ts
 * import { lockKvPath } from "./kv_lock.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * using lock = await lockKvPath(`${dir}/q.kv`);
 * assert.equal(lock.path, `${dir}/q.kv.lock`);
 * ```
 */
export async function lockKvPath(kvPath: string): Promise<KvLock> {
  const path = `${kvPath}.lock`;
  const file = await Deno.open(path, { read: true, write: true, create: true });
  let locked: boolean;
  try {
    locked = await file.tryLock(true);
  } catch (err) {
    file.close();
    throw err;
  }
  if (!locked) {
    const holder = (await Deno.readTextFile(path).catch(() => "")).trim() || "unknown";
    file.close();
    throw new QueueError(
      `Cannot start as KV_PATH is in use by another process (pid ${holder}): ` +
        `current value is ${JSON.stringify(kvPath)}`,
      { code: "kv_locked", retriable: false },
    );
  }
  await file.truncate(0);
  await file.write(new TextEncoder().encode(`${Deno.pid}\n`));
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    file.close();
  };
  return { path, release, [Symbol.dispose]: release };
}
