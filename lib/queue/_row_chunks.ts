/**
 * Rows on their way in: appending a Kafka batch as pending chunks, promoting
 * them to owned once the Kafka commit succeeded, and dropping them when
 * another consumer stored them.
 *
 * @module
 */
import { QueueError } from "../errors.ts";
import type { KvStore } from "./_kv_store.ts";
import {
  chunkCount,
  DAY_SECONDS,
  MAX_VALUE_BYTES,
  type PackedChunk,
  packToFit,
  type StoredChunk,
} from "./_chunk.ts";
import { encodedRowLength } from "./_row_binary.ts";
import {
  chunkKey,
  chunkPartitionPrefix,
  counterKey,
  parsePartitionKey,
  partitionKey,
  partitionPrefix,
} from "./_keys.ts";
import type { PartitionState, QueueEntry } from "./types.ts";

/** Largest atomic commit anonymizer writes; Deno KV allows 800 KiB. */
const MAX_COMMIT_BYTES = 700_000;
/** Most chunks one commit deletes; Deno KV allows 1000 mutations per commit. */
export const MAX_CHUNKS_PER_COMMIT = 900;

/** A partition's queue progress with its name. */
export type NamedPartitionState = { topic: string; partition: number } & PartitionState;

/** The appending side of the queue. */
export class RowChunks {
  readonly #store: KvStore;
  readonly #now: () => number;

  constructor(store: KvStore, now: () => number) {
    this.#store = store;
    this.#now = now;
  }

  /** Queue progress of a partition, or `null` if it never had data here. */
  async partition(topic: string, partition: number): Promise<PartitionState | null> {
    return (await this.#store.kv.get<PartitionState>(partitionKey(topic, partition))).value;
  }

  /** Every partition this queue has state for. */
  async partitions(): Promise<NamedPartitionState[]> {
    const out = [];
    for await (const e of this.#store.kv.list<PartitionState>({ prefix: partitionPrefix() })) {
      out.push({ ...parsePartitionKey(e.key), ...e.value });
    }
    return out;
  }

  /** See {@linkcode KvQueue.append}. */
  async append(
    topic: string,
    partition: number,
    entries: readonly QueueEntry[],
    next: bigint,
  ): Promise<number> {
    const kv = this.#store.kv;
    const stateEntry = await kv.get<PartitionState>(partitionKey(topic, partition));
    const firstOffset = entries[0]?.offset ?? next;
    const state: PartitionState = stateEntry.value ?? { next: firstOffset, committed: firstOffset };
    if (next <= state.next) return 0;
    if (state.next === state.committed && firstOffset > state.next) {
      // Offsets in between were handled by another consumer; nothing of ours is pending.
      state.next = state.committed = firstOffset;
    }
    const fresh = entries.filter((e) => e.offset >= state.next);
    // Several commits may be needed for a large Kafka batch. Each one holds a
    // run of consecutive offsets, whatever their UTC days, so the `next` it
    // records parts rows written from rows not yet written, and a crash in
    // between neither loses nor doubles a row.
    const runs: QueueEntry[][] = [];
    let runBytes = 0;
    for (const e of fresh) {
      const size = encodedRowLength(e.row) + 8;
      if (runs.length === 0 || runBytes + size > MAX_COMMIT_BYTES) {
        runs.push([]);
        runBytes = 0;
      }
      runs.at(-1)!.push(e);
      runBytes += size;
    }
    // Built before the first commit so a row too large leaves nothing written.
    const planned = runs.map((run) => this.#buildChunks(topic, partition, run));
    let versionstamp = stateEntry.versionstamp;
    let op = kv.atomic();
    let rows = 0;
    const flush = async (upTo: bigint) => {
      op.check({ key: partitionKey(topic, partition), versionstamp })
        .set(partitionKey(topic, partition), { ...state, next: upTo })
        .sum(counterKey("queued_rows"), BigInt(rows));
      const res = await this.#store.commit(op, `append to partition ${partition} of ${topic}`);
      if (!res.ok) {
        throw new QueueError(
          `Cannot append to partition ${partition} of ${topic} as another writer changed it`,
          { code: "kv_conflict", retriable: true },
        );
      }
      versionstamp = res.versionstamp;
      state.next = upTo;
      op = kv.atomic();
      rows = 0;
    };
    for (let i = 0; i < planned.length; i++) {
      for (const { first, chunk } of planned[i]!) {
        op.set(chunkKey(topic, partition, first), chunk);
        rows += chunk.count;
      }
      if (i + 1 < runs.length) await flush(runs[i + 1]![0]!.offset);
    }
    await flush(next);
    return fresh.length;
  }

  #buildChunks(
    topic: string,
    partition: number,
    entries: readonly QueueEntry[],
  ): Array<{ first: bigint; chunk: PackedChunk }> {
    const byDay = new Map<number, QueueEntry[]>();
    for (const e of entries) {
      const rowSize = encodedRowLength(e.row) + 8;
      if (rowSize > MAX_VALUE_BYTES) {
        throw new QueueError(
          `Cannot queue the row at offset ${e.offset} of partition ${partition} as it ` +
            `takes ${rowSize} bytes: the limit is ${MAX_VALUE_BYTES}`,
          { code: "row_too_large", retriable: false },
        );
      }
      const day = Math.floor(e.row.timestamp / DAY_SECONDS);
      let list = byDay.get(day);
      if (list === undefined) byDay.set(day, list = []);
      list.push(e);
    }
    const chunks: Array<{ first: bigint; chunk: PackedChunk }> = [];
    const enqueuedAt = this.#now();
    for (const [day, list] of byDay) {
      const rows = list.map((e) => e.row);
      const offsets = BigInt64Array.from(list, (e) => e.offset);
      for (const { data, offsets: packed } of packToFit(rows, { offsets })) {
        chunks.push({
          first: packed[0]!,
          chunk: {
            topic,
            partition,
            day,
            enqueuedAt,
            count: packed.length,
            lastOffset: packed[packed.length - 1]!,
            data,
          },
        });
      }
    }
    return chunks;
  }

  /** See {@linkcode KvQueue.promote}. */
  async promote(topic: string, partition: number, committed: bigint): Promise<void> {
    for (;;) {
      const entry = await this.#store.kv.get<PartitionState>(partitionKey(topic, partition));
      if (entry.value === null || committed <= entry.value.committed) return;
      const next = entry.value.next > committed ? entry.value.next : committed;
      const res = await this.#store.commit(
        this.#store.kv.atomic().check(entry).set(partitionKey(topic, partition), {
          next,
          committed,
        }),
        `promote partition ${partition} of ${topic}`,
      );
      if (res.ok) return;
    }
  }

  /** See {@linkcode KvQueue.dropPending}. */
  async dropPending(topic: string, partition: number, resumeAt: bigint): Promise<number> {
    const kv = this.#store.kv;
    const entry = await kv.get<PartitionState>(partitionKey(topic, partition));
    if (entry.value === null) return 0;
    const { committed } = entry.value;
    const doomed: Array<Deno.KvEntry<StoredChunk>> = [];
    for await (
      const c of kv.list<StoredChunk>({
        prefix: chunkPartitionPrefix(topic, partition),
        start: chunkKey(topic, partition, committed),
      })
    ) doomed.push(c);
    if (doomed.length > MAX_CHUNKS_PER_COMMIT) {
      throw new QueueError(
        `Cannot drop ${doomed.length} pending chunks of partition ${partition} in one commit`,
        { code: "too_many_pending", retriable: false },
      );
    }
    // The partition check suffices: every writer of pending chunks changes the
    // partition state, and Deno KV allows only 100 checks per commit.
    const op = kv.atomic().check(entry);
    let dropped = 0;
    for (const c of doomed) {
      op.delete(c.key);
      dropped += chunkCount(c.value);
    }
    op.set(partitionKey(topic, partition), { next: resumeAt, committed: resumeAt });
    // Subtracting 0 as 2^64 does not fit a KvU64.
    if (dropped > 0) op.sum(counterKey("queued_rows"), 2n ** 64n - BigInt(dropped));
    const res = await this.#store.commit(op, `drop pending rows of partition ${partition}`);
    if (!res.ok) {
      throw new QueueError(
        `Cannot drop pending rows of partition ${partition} of ${topic} as another writer changed it`,
        { code: "kv_conflict", retriable: true },
      );
    }
    return dropped;
  }
}
