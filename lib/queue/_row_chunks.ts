/**
 * Rows on their way in: appending a Kafka batch as pending chunks, promoting
 * them to owned once the Kafka commit succeeded, and dropping them when
 * another consumer stored them.
 *
 * An append grows the partition's last chunk while it is small and of the
 * same UTC day, so chunks end up near the value cap even when each Kafka
 * batch brings a few hundred rows. A grown chunk can hold owned rows followed
 * by pending ones: seals take its owned rows only, dropPending keeps them, and
 * an append and a seal that meet on it are told apart by its versionstamp.
 *
 * @module
 */
import { QueueError } from "../errors.ts";
import type { KvStore } from "./_kv_store.ts";
import type { HttpLogRow } from "../record/types.ts";
import {
  chunkBytes,
  chunkCount,
  chunkLastOffset,
  DAY_SECONDS,
  type EncodedRows,
  MAX_VALUE_BYTES,
  type PackedChunk,
  packedChunk,
  packToFit,
  type StoredChunk,
  unpackChunk,
} from "./_chunk.ts";
import { encodedRowLength, encodeRows, rowLengths } from "./_row_binary.ts";
import {
  chunkKey,
  chunkPartitionPrefix,
  counterKey,
  parsePartitionKey,
  partitionKey,
  partitionPrefix,
} from "./keys.ts";
import type { PartitionState, QueueEntry } from "./types.ts";

/** Largest atomic commit anonymizer writes; Deno KV allows 800 KiB. */
const MAX_COMMIT_BYTES = 700_000;
/** Most chunks one commit deletes; Deno KV allows 1000 mutations per commit. */
export const MAX_CHUNKS_PER_COMMIT = 900;

/** Chunks smaller than this take the rows of later appends of their day. */
const MERGE_BELOW_BYTES = 45_000;
/**
 * Tries of an append or a drop that a seal's commit beat. An append stops
 * growing the last chunk after these; a drop then fails with `kv_conflict`.
 */
const MAX_TRIES = 5;

/** The last chunk of a partition, which an append grows. */
interface Tail {
  /** The chunk as read, for the commit's check. */
  entry: Deno.KvEntry<StoredChunk>;
  /** Its rows, RowBinary, left encoded: growing a chunk decodes none of them. */
  rows: EncodedRows;
  /** Their offsets. */
  offsets: BigInt64Array;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}

/** UTC day of a row: days since the epoch. */
function utcDay(row: HttpLogRow): number {
  return Math.floor(row.timestamp / DAY_SECONDS);
}

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
    for (let attempt = 1;; attempt++) {
      const merge = attempt < MAX_TRIES;
      const appended = await this.#appendOnce(topic, partition, entries, next, merge);
      if (appended !== null) return appended;
    }
  }

  /**
   * One try of {@linkcode RowChunks.append}; `null` when nothing was written
   * because a seal took or cut the chunk it grew. With `merge`, rows of the
   * partition's last chunk's day go into it while it is small, so chunks stay
   * near the value cap however few rows each Kafka batch brings.
   */
  async #appendOnce(
    topic: string,
    partition: number,
    entries: readonly QueueEntry[],
    next: bigint,
    merge: boolean,
  ): Promise<number | null> {
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
    const tail = merge && runs[0] !== undefined
      ? await this.#tail(topic, partition, runs[0])
      : null;
    // Built before the first commit so a row too large leaves nothing written.
    const planned = runs.map((run, i) =>
      this.#buildChunks(topic, partition, run, i === 0 ? tail : null)
    );
    let versionstamp = stateEntry.versionstamp;
    // A batch with no new rows still records its `next`.
    for (let i = 0; i < Math.max(1, runs.length); i++) {
      const op = kv.atomic().check({ key: partitionKey(topic, partition), versionstamp });
      // The seal that deletes or cuts the grown chunk changes it, failing this check.
      if (i === 0 && tail !== null) op.check(tail.entry);
      for (const { first, chunk } of planned[i] ?? []) {
        op.set(chunkKey(topic, partition, first), chunk);
      }
      const upTo = i + 1 < runs.length ? runs[i + 1]![0]!.offset : next;
      op.set(partitionKey(topic, partition), { ...state, next: upTo })
        .sum(counterKey("queued_rows"), BigInt(runs[i]?.length ?? 0));
      const res = await this.#store.commit(op, `append to partition ${partition} of ${topic}`);
      if (!res.ok) {
        const now = await kv.get<PartitionState>(partitionKey(topic, partition));
        if (i === 0 && tail !== null && now.versionstamp === versionstamp) return null;
        throw new QueueError(
          `Cannot append to partition ${partition} of ${topic} as another writer changed it`,
          { code: "kv_conflict", retriable: true },
        );
      }
      versionstamp = res.versionstamp;
      state.next = upTo;
    }
    return fresh.length;
  }

  /** The partition's last chunk, unpacked, when the rows of `run` may go into it. */
  async #tail(topic: string, partition: number, run: readonly QueueEntry[]): Promise<Tail | null> {
    const day = utcDay(run[0]!.row);
    if (!run.every((e) => utcDay(e.row) === day)) return null;
    const last = this.#store.kv.list<StoredChunk>(
      { prefix: chunkPartitionPrefix(topic, partition) },
      { reverse: true, limit: 1 },
    );
    for await (const entry of last) {
      const c = entry.value;
      if (c.day !== day || chunkBytes(c) >= MERGE_BELOW_BYTES) return null;
      if (chunkLastOffset(c) >= run[0]!.offset) return null;
      const { rows, offsets } = unpackChunk(c);
      return { entry, rows: { bytes: rows, lengths: rowLengths(rows) }, offsets };
    }
    return null;
  }

  /** Packs `entries`, after the rows of `tail` when given, into chunks per UTC day. */
  #buildChunks(
    topic: string,
    partition: number,
    entries: readonly QueueEntry[],
    tail: Tail | null,
  ): Array<{ first: bigint; chunk: PackedChunk }> {
    const byDay = new Map<number, { rows: HttpLogRow[]; offsets: bigint[] }>();
    for (const e of entries) {
      const rowSize = encodedRowLength(e.row) + 8;
      if (rowSize > MAX_VALUE_BYTES) {
        throw new QueueError(
          `Cannot queue the row at offset ${e.offset} of partition ${partition} as it ` +
            `takes ${rowSize} bytes: the limit is ${MAX_VALUE_BYTES}`,
          { code: "row_too_large", retriable: false },
        );
      }
      const day = utcDay(e.row);
      let group = byDay.get(day);
      if (group === undefined) byDay.set(day, group = { rows: [], offsets: [] });
      group.rows.push(e.row);
      group.offsets.push(e.offset);
    }
    const chunks: Array<{ first: bigint; chunk: PackedChunk }> = [];
    // A grown chunk keeps the time its first rows were queued.
    const enqueuedAt = tail?.entry.value.enqueuedAt ?? this.#now();
    for (const [day, group] of byDay) {
      let rows: EncodedRows = {
        bytes: encodeRows(group.rows),
        lengths: group.rows.map(encodedRowLength),
      };
      let offsets = BigInt64Array.from(group.offsets);
      if (tail !== null && tail.entry.value.day === day) {
        rows = {
          bytes: concat(tail.rows.bytes, rows.bytes),
          lengths: [...tail.rows.lengths, ...rows.lengths],
        };
        const all = new BigInt64Array(tail.offsets.length + offsets.length);
        all.set(tail.offsets);
        all.set(offsets, tail.offsets.length);
        offsets = all;
      }
      for (const { data, offsets: packed } of packToFit(rows, { offsets })) {
        chunks.push({
          first: packed[0]!,
          chunk: packedChunk({ topic, partition, day, enqueuedAt }, packed, data),
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
    for (let attempt = 1;; attempt++) {
      const dropped = await this.#dropPendingOnce(topic, partition, resumeAt, attempt);
      if (dropped !== null) return dropped;
    }
  }

  /**
   * One try of {@linkcode RowChunks.dropPending}; `null` when nothing was
   * written because a seal took the owned rows of the chunk it cut.
   */
  async #dropPendingOnce(
    topic: string,
    partition: number,
    resumeAt: bigint,
    attempt: number,
  ): Promise<number | null> {
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
    // The partition check covers the pending chunks: every writer of them
    // changes the partition state, and Deno KV allows only 100 checks per commit.
    const op = kv.atomic().check(entry);
    let dropped = 0;
    for (const c of doomed) {
      op.delete(c.key);
      dropped += chunkCount(c.value);
    }
    // A chunk an append grew may hold owned rows first and pending ones after.
    // A seal that takes its owned rows writes the pending ones under a new
    // key, which this check catches.
    let straddling: Deno.KvEntry<StoredChunk> | undefined;
    const before = kv.list<StoredChunk>({
      prefix: chunkPartitionPrefix(topic, partition),
      end: chunkKey(topic, partition, committed),
    }, { reverse: true, limit: 1 });
    for await (const c of before) {
      if (chunkLastOffset(c.value) < committed) break;
      straddling = c;
      op.check(c);
      const { rows, offsets } = unpackChunk(c.value);
      const kept = offsets.findIndex((o) => o >= committed);
      const lengths = rowLengths(rows).slice(0, kept);
      const owned = packToFit({ bytes: rows, lengths }, { offsets: offsets.slice(0, kept) });
      for (const part of owned) {
        op.set(
          chunkKey(topic, partition, part.offsets[0]!),
          packedChunk(c.value, part.offsets, part.data),
        );
      }
      dropped += offsets.length - kept;
    }
    op.set(partitionKey(topic, partition), { next: resumeAt, committed: resumeAt });
    // Subtracting 0 as 2^64 does not fit a KvU64.
    if (dropped > 0) op.sum(counterKey("queued_rows"), 2n ** 64n - BigInt(dropped));
    const res = await this.#store.commit(op, `drop pending rows of partition ${partition}`);
    if (res.ok) return dropped;
    const now = await kv.get<PartitionState>(partitionKey(topic, partition));
    if (
      straddling !== undefined && now.versionstamp === entry.versionstamp && attempt < MAX_TRIES
    ) {
      return null;
    }
    throw new QueueError(
      `Cannot drop pending rows of partition ${partition} of ${topic} as another writer changed it`,
      { code: "kv_conflict", retriable: true },
    );
  }
}
