/**
 * The queue's access to Deno KV: commits that fail with a {@linkcode QueueError}
 * naming the KV file, and writes, deletes and reads spread over as many
 * commits as Deno KV's limits need.
 *
 * @module
 */
import { QueueError } from "../errors.ts";

/** Values written per commit by {@linkcode KvStore.setAll}: 11 × 60,000 B stays under 800 KiB. */
const SET_PER_COMMIT = 11;
/** Keys deleted per commit; Deno KV allows 1000 mutations. */
const DELETE_PER_COMMIT = 500;
/** Keys read per `getMany`; Deno KV allows 10. */
const GET_PER_CALL = 10;

/** A Deno KV database and the path it was opened from. */
export class KvStore {
  /** The database. */
  readonly kv: Deno.Kv;
  /** Path of the KV file, for messages. */
  readonly path: string;

  constructor(kv: Deno.Kv, path: string) {
    this.kv = kv;
    this.path = path;
  }

  /** Commits `op`; a failure to write (not a failed check) throws, naming `what`. */
  async commit(
    op: Deno.AtomicOperation,
    what: string,
  ): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
    try {
      return await op.commit();
    } catch (cause) {
      const full = /full|ENOSPC|SQLITE_FULL|disk/i.test(String(cause));
      throw new QueueError(`Cannot ${what} in KV ${JSON.stringify(this.path)}: ${String(cause)}`, {
        code: full ? "disk_full" : "kv_write_failed",
        retriable: true,
        cause,
      });
    }
  }

  /** Writes every entry, a few values per commit: not atomic as a whole. */
  async setAll(
    entries: ReadonlyArray<readonly [Deno.KvKey, unknown]>,
    what: string,
  ): Promise<void> {
    for (let i = 0; i < entries.length; i += SET_PER_COMMIT) {
      const op = this.kv.atomic();
      for (const [key, value] of entries.slice(i, i + SET_PER_COMMIT)) op.set(key, value);
      await this.commit(op, what);
    }
  }

  /** Deletes every key, many per commit: not atomic as a whole. */
  async deleteAll(keys: readonly Deno.KvKey[], what: string): Promise<void> {
    for (let i = 0; i < keys.length; i += DELETE_PER_COMMIT) {
      const op = this.kv.atomic();
      for (const key of keys.slice(i, i + DELETE_PER_COMMIT)) op.delete(key);
      await this.commit(op, what);
    }
  }

  /** The values of `keys`, in order; a missing one throws `batch_corrupt`, naming `what`. */
  async getAll<T>(keys: readonly Deno.KvKey[], what: string): Promise<T[]> {
    const out: T[] = [];
    for (let i = 0; i < keys.length; i += GET_PER_CALL) {
      for (const e of await this.kv.getMany<T[]>(keys.slice(i, i + GET_PER_CALL))) {
        if (e.value === null) {
          throw new QueueError(
            `Cannot read ${what} as KV key ${JSON.stringify(e.key.map(String))} is missing`,
            { code: "batch_corrupt", retriable: false },
          );
        }
        out.push(e.value);
      }
    }
    return out;
  }
}
