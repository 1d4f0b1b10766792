/**
 * The one sealed batch: reading its body and rows, recording its delivery
 * state, and removing it once stored or dead-lettered.
 *
 * @module
 */
import { QueueError } from "../errors.ts";
import type { KvStore } from "./_kv_store.ts";
import { type StoredChunk, type StoredRowPart, unpackRowPart } from "./_chunk.ts";
import { decodeRows } from "./_row_binary.ts";
import {
  batchKey,
  batchPartKey,
  batchRowsKey,
  counterKey,
  parseReturnedKey,
  type ReturnedKey,
  returnedKey,
  returnedPrefix,
} from "./keys.ts";
import type { BatchEntries, BatchMeta, BatchState } from "./types.ts";

/** Reads and updates the sealed batch. */
export class SealedBatch {
  readonly #store: KvStore;

  constructor(store: KvStore) {
    this.#store = store;
  }

  /** See {@linkcode KvQueue.batch}. */
  async batch(): Promise<BatchMeta | null> {
    return (await this.#store.kv.get<BatchMeta>(batchKey())).value;
  }

  /** See {@linkcode KvQueue.body}. */
  async body(meta: BatchMeta): Promise<Uint8Array> {
    const keys = Array.from({ length: meta.parts }, (_, i) => batchPartKey(meta.id, i));
    const parts = await this.#store.getAll<Uint8Array>(keys, `the body of batch ${meta.id}`);
    const out = new Uint8Array(parts.reduce((n, c) => n + c.byteLength, 0));
    let pos = 0;
    for (const c of parts) {
      out.set(c, pos);
      pos += c.byteLength;
    }
    return out;
  }

  /** See {@linkcode KvQueue.batchEntries}. */
  async batchEntries(meta: BatchMeta): Promise<BatchEntries> {
    const keys = Array.from({ length: meta.rowParts }, (_, i) => batchRowsKey(meta.id, i));
    const stored = await this.#store.getAll<StoredRowPart>(keys, `the rows of batch ${meta.id}`);
    const parts = stored.map(unpackRowPart);
    const rows = parts.flatMap((p) => decodeRows(p.rows));
    const offsets = new BigInt64Array(rows.length);
    const partitions = new Int32Array(rows.length);
    let n = 0;
    for (const p of parts) {
      offsets.set(p.offsets, n);
      partitions.set(p.partitions, n);
      n += p.offsets.length;
    }
    return { rows, offsets, partitions };
  }

  /** Applies `f` to the sealed batch, which must be batch `id`. */
  async update(id: bigint, f: (b: BatchMeta) => BatchMeta): Promise<BatchMeta> {
    for (;;) {
      const entry = await this.#store.kv.get<BatchMeta>(batchKey());
      if (entry.value === null || entry.value.id !== id) {
        throw new QueueError(`Cannot update batch ${id} as it is not the sealed batch`, {
          code: "batch_missing",
          retriable: false,
        });
      }
      const next = f(entry.value);
      const res = await this.#store.commit(
        this.#store.kv.atomic().check(entry).set(batchKey(), next),
        `update batch ${id}`,
      );
      if (res.ok) return next;
    }
  }

  /** See {@linkcode KvQueue.markState}. */
  async markState(id: bigint, state: BatchState, lastError?: string): Promise<BatchMeta> {
    return await this.update(id, (b) => ({ ...b, state, lastError }));
  }

  /** Keys of returned chunks that came from batch `id`. */
  async returnedFrom(id: bigint): Promise<ReturnedKey[]> {
    const keys: ReturnedKey[] = [];
    for await (const c of this.#store.kv.list<StoredChunk>({ prefix: returnedPrefix() })) {
      if (c.value.from === id) keys.push(returnedKey(parseReturnedKey(c.key)));
    }
    return keys;
  }

  /** Deletes batch `id` with its parts and returned rows, moving its rows from queued to `counter`. */
  async remove(id: bigint, counter: "landed_rows" | "dead_lettered_rows"): Promise<void> {
    const what = counter === "landed_rows" ? `remove landed batch ${id}` : `discard batch ${id}`;
    for (;;) {
      const entry = await this.#store.kv.get<BatchMeta>(batchKey());
      if (entry.value === null || entry.value.id !== id) return;
      const op = this.#store.kv.atomic().check(entry).delete(batchKey());
      for (let i = 0; i < entry.value.parts; i++) op.delete(batchPartKey(id, i));
      for (let i = 0; i < entry.value.rowParts; i++) op.delete(batchRowsKey(id, i));
      for (const key of await this.returnedFrom(id)) op.delete(key);
      op.sum(counterKey(counter), BigInt(entry.value.rows))
        .sum(counterKey("queued_rows"), 2n ** 64n - BigInt(entry.value.rows));
      if (counter === "landed_rows") op.sum(counterKey("landed_batches"), 1n);
      if ((await this.#store.commit(op, what)).ok) return;
    }
  }
}
