/**
 * Sealing owned rows into the one immutable batch, and unsealing a batch
 * ClickHouse certainly did not store by handing its rows back.
 *
 * @module
 */
import { QueueError } from "../errors.ts";
import type { HttpLogRow } from "../record/types.ts";
import type { KvStore } from "./_kv_store.ts";
import {
  chunkCount,
  type ChunkInfo,
  chunkLastOffset,
  type ChunkRows,
  DAY_SECONDS,
  type EncodedRows,
  MAX_VALUE_BYTES,
  type PackedChunk,
  packedChunk,
  packOne,
  packToFit,
  RETURNED_PACK_BYTES,
  type RowSources,
  type StoredChunk,
  unpackChunk,
} from "./_chunk.ts";
import { decodeRows, rowLengths } from "./_row_binary.ts";
import { MAX_CHUNKS_PER_COMMIT, type RowChunks } from "./_row_chunks.ts";
import type { SealedBatch } from "./_sealed_batch.ts";
import {
  batchKey,
  batchPartKey,
  batchRowsKey,
  chunkKey,
  chunkPartitionPrefix,
  parseChunkKey,
  parseReturnedKey,
  type ReturnedKey,
  returnedKey,
  returnedPrefix,
} from "./keys.ts";
import type { BatchMeta, PackResult } from "./types.ts";

/** Tries of a seal before it gives up on chunks that appends keep growing. */
const MAX_SEAL_ATTEMPTS = 5;
/**
 * Most RowBinary bytes one seal decodes: 16 MiB is three times what 40,000
 * stock rows take, and it bounds the V8 heap a seal needs under the service's
 * heap limit (tests/heap_limit_test.ts): rows at the 8 KiB URL limit would
 * otherwise fill every chunk a seal may take, tens of MB, of which a 1 MiB
 * body holds fewer than 200 rows.
 */
const MAX_SEAL_ROW_BYTES = 16 * 1_048_576;
/** Partitions one seal takes rows from: it checks one chunk of each, with one check to spare. */
const MAX_SEAL_PARTITIONS = 99;
/**
 * Chunks holding owned and pending rows one seal takes: it rewrites the
 * pending rows of each, and the commit must stay under 800 KiB.
 */
const MAX_SEAL_STRADDLING = 4;
/**
 * Owned chunks of another UTC day one seal reads past. Around midnight late
 * records interleave two days in every partition; stopping at the first chunk
 * of the other day would seal a few rows per proxy slot. Reads are streamed,
 * and the chunks of such interleaving are small.
 */
const MAX_SEAL_SKIPPED = 1_000;

/** Builds the body of a batch from a prefix of `rows`, putting `batchId` in every row. */
export type Packer = (rows: HttpLogRow[], batchId: bigint) => PackResult | Promise<PackResult>;

/** A chunk offered to the packer. */
interface Candidate {
  /** The chunk's key, as listed. */
  key: Deno.KvKey;
  /** The chunk. */
  value: StoredChunk;
  /**
   * For a chunk of a partition: its versionstamp, and the partition's
   * committed offset, below which its rows are owned and offered.
   */
  partition?: { versionstamp: string; committed: bigint };
  /** Values, with their keys, that keep the rows of the chunk the seal leaves. */
  rest(rows: EncodedRows, sources: RowSources): Array<readonly [Deno.KvKey, PackedChunk]>;
}

/** A candidate unpacked: all its rows, and how many from the front are offered. */
interface Unpacked {
  rows: HttpLogRow[];
  sources: ChunkRows;
  offered: number;
}

/** Seals and unseals batches. */
export class Sealing {
  readonly #store: KvStore;
  readonly #chunks: RowChunks;
  readonly #batch: SealedBatch;
  readonly #now: () => number;

  constructor(store: KvStore, chunks: RowChunks, batch: SealedBatch, now: () => number) {
    this.#store = store;
    this.#chunks = chunks;
    this.#batch = batch;
    this.#now = now;
  }

  /** See {@linkcode KvQueue.seal}. */
  async seal(pack: Packer, candidateRows: number): Promise<BatchMeta | null> {
    for (let attempt = 1;; attempt++) {
      const current = await this.#batch.batch();
      if (current !== null) return current;
      const sealed = await this.#sealOnce(pack, candidateRows);
      if (sealed !== "retry") return sealed;
      if (attempt === MAX_SEAL_ATTEMPTS) {
        throw new QueueError(
          `Cannot seal a batch as appends kept growing its chunks: ${attempt} tries`,
          { code: "kv_conflict", retriable: true },
        );
      }
    }
  }

  /** One try of {@linkcode Sealing.seal}; `"retry"` when an append changed a chunk it took. */
  async #sealOnce(pack: Packer, candidateRows: number): Promise<BatchMeta | null | "retry"> {
    const taken = await this.#candidates(candidateRows);
    if (taken.length === 0) return null;

    const offered: HttpLogRow[] = [];
    const unpacked: Unpacked[] = [];
    let rowBytes = 0;
    for (const c of taken) {
      if (rowBytes >= MAX_SEAL_ROW_BYTES) break;
      const sources = unpackChunk(c.value);
      rowBytes += sources.rows.byteLength;
      const rows = decodeRows(sources.rows);
      const committed = c.partition?.committed;
      // Offsets ascend within a partition's chunk; the rows from `committed` on are pending.
      const pending = committed === undefined
        ? -1
        : sources.offsets.findIndex((o) => o >= committed);
      const count = pending === -1 ? rows.length : pending;
      unpacked.push({ rows, sources, offered: count });
      for (let i = 0; i < count; i++) offered.push(rows[i]!);
    }
    // Chunks past the byte bound stay queued: the commit below touches only those decoded.
    taken.length = unpacked.length;
    if (offered.length === 0) return null;
    const id = randomBatchId();
    const packed = await pack(offered, id);
    if (packed.rowCount < 1 || packed.rowCount > offered.length) {
      throw new QueueError(
        `Cannot seal a batch as the packer took ${packed.rowCount} of ${offered.length} rows`,
        { code: "pack_invalid", retriable: false },
      );
    }
    const total = packed.rowCount;
    const offsets = new BigInt64Array(total);
    const partitions = new Int32Array(total);
    // The batch keeps the rows' RowBinary exactly as the chunks held it: a row
    // is encoded once for the queue, and decoded only to be packed.
    const slices: Uint8Array[] = [];
    const lengths: number[] = [];
    for (let i = 0, n = 0; n < total; i++) {
      const c = taken[i]!.value;
      const { sources, offered: count } = unpacked[i]!;
      const chunkLengths = rowLengths(sources.rows);
      let end = 0;
      for (let j = 0; j < count && n < total; j++, n++) {
        offsets[n] = sources.offsets[j]!;
        partitions[n] = sources.partitions?.[j] ?? c.partition;
        lengths.push(chunkLengths[j]!);
        end += chunkLengths[j]!;
      }
      slices.push(sources.rows.subarray(0, end));
    }
    const bytes = new Uint8Array(lengths.reduce((a, b) => a + b, 0));
    slices.reduce((at, part) => (bytes.set(part, at), at + part.byteLength), 0);
    const parts = splitBytes(packed.body);
    const rowParts = packToFit({ bytes, lengths }, { offsets, partitions });
    const written: Array<readonly [Deno.KvKey, Uint8Array]> = [
      ...parts.map((v, i) => [batchPartKey(id, i), v] as const),
      ...rowParts.map((v, i) => [batchRowsKey(id, i), v.data] as const),
    ];
    await this.#store.setAll(written, `write batch ${id}`);

    const op = this.#store.kv.atomic().check({ key: batchKey(), versionstamp: null });
    // Owned chunks change only when an append grows the last one of its
    // partition, which can only be the last one this seal takes from it.
    const lastOfPartition = new Map<string, Deno.AtomicCheck>();
    let remaining = packed.rowCount;
    let oldestEnqueuedAt = Infinity;
    for (let i = 0; i < taken.length && remaining > 0; i++) {
      const c = taken[i]!;
      const { rows: chunkRows, sources, offered: count } = unpacked[i]!;
      const used = Math.min(remaining, count);
      oldestEnqueuedAt = Math.min(oldestEnqueuedAt, c.value.enqueuedAt);
      if (c.partition !== undefined) {
        const { versionstamp } = c.partition;
        lastOfPartition.set(`${c.value.topic}\u0000${c.value.partition}`, {
          key: c.key,
          versionstamp,
        });
      }
      op.delete(c.key);
      if (used < chunkRows.length) {
        // What the seal leaves keeps its RowBinary too.
        const lengths = rowLengths(sources.rows);
        const start = lengths.slice(0, used).reduce((a, b) => a + b, 0);
        const left = { bytes: sources.rows.subarray(start), lengths: lengths.slice(used) };
        const rest = c.rest(left, {
          offsets: sources.offsets.slice(used),
          partitions: sources.partitions?.slice(used),
        });
        for (const [key, value] of rest) op.set(key, value);
      }
      remaining -= used;
    }
    for (const check of lastOfPartition.values()) op.check(check);
    let minTimestamp = Infinity;
    let maxTimestamp = -Infinity;
    for (let i = 0; i < total; i++) {
      const r = offered[i]!;
      if (r.timestamp < minTimestamp) minTimestamp = r.timestamp;
      if (r.timestamp > maxTimestamp) maxTimestamp = r.timestamp;
    }
    const meta: BatchMeta = {
      id,
      rows: total,
      bytes: packed.body.byteLength,
      parts: parts.length,
      rowParts: rowParts.length,
      topic: taken[0]!.value.topic,
      encoding: packed.encoding,
      query: packed.query,
      headers: packed.headers,
      minTimestamp,
      maxTimestamp,
      oldestEnqueuedAt,
      sealedAt: this.#now(),
      state: "sealed",
      attempts: 0,
      isolated: taken[0]!.value.isolated ?? false,
    };
    op.set(batchKey(), meta);
    const res = await this.#store.commit(op, `seal batch ${id}`);
    if (res.ok) return meta;
    // A concurrent seal won, or an append grew a chunk taken here: either
    // way this seal's parts are not the batch's.
    await this.#store.deleteAll(written.map(([key]) => key), `remove parts of batch ${id}`);
    return "retry";
  }

  /** Chunks to offer the packer: returned rows first, then owned rows, one UTC day. */
  async #candidates(candidateRows: number): Promise<Candidate[]> {
    const kv = this.#store.kv;
    const taken: Candidate[] = [];
    let rows = 0;
    let day: number | undefined;
    for await (const c of kv.list<StoredChunk>({ prefix: returnedPrefix() }, { batchSize: 20 })) {
      const first = taken[0]?.value;
      if (first !== undefined) {
        // An isolated group (a suspected poison half) is sent on its own, even
        // when it spans several chunks.
        if (c.value.day !== day || c.value.isolated !== first.isolated) break;
      }
      day ??= c.value.day;
      // A returned chunk keeps its place in line, whatever rows it keeps.
      const key = returnedKey(parseReturnedKey(c.key));
      const { value } = c;
      taken.push({
        key,
        value,
        rest: (
          left,
          sources,
        ) => [[key, packedChunk(value, sources.offsets, packOne(left, sources))]],
      });
      rows += chunkCount(value);
      if (rows >= candidateRows || taken.length >= MAX_CHUNKS_PER_COMMIT) return taken;
    }
    if (taken[0]?.value.isolated) return taken;

    // Per-partition FIFO iterators, merged by enqueue time so no partition starves.
    const heads: Array<{
      it: AsyncIterator<Deno.KvEntry<StoredChunk>>;
      head?: Deno.KvEntry<StoredChunk>;
      committed: bigint;
    }> = [];
    for (const p of await this.#chunks.partitions()) {
      const it = kv.list<StoredChunk>({ prefix: chunkPartitionPrefix(p.topic, p.partition) }, {
        batchSize: 50,
      })[Symbol.asyncIterator]();
      const first = await it.next();
      if (!first.done) heads.push({ it, head: first.value, committed: p.committed });
    }
    const fromPartitions = new Set<(typeof heads)[number]>();
    let straddling = 0;
    let skipped = 0;
    while (rows < candidateRows && taken.length < MAX_CHUNKS_PER_COMMIT) {
      // An owned chunk of the other day stays queued for a batch of its own
      // day; rows after a chunk holding pending rows are pending too, so a
      // partition stops there.
      for (const h of heads) {
        while (
          day !== undefined && h.head !== undefined && h.head.value.day !== day &&
          chunkLastOffset(h.head.value) < h.committed && skipped < MAX_SEAL_SKIPPED
        ) {
          skipped++;
          const n = await h.it.next();
          h.head = n.done ? undefined : n.value;
        }
      }
      let best: (typeof heads)[number] | undefined;
      for (const h of heads) {
        const c = h.head;
        if (c === undefined) continue;
        // A chunk holds owned rows when its first offset is below `committed`.
        if (parseChunkKey(c.key) >= h.committed) continue;
        if (day !== undefined && c.value.day !== day) continue;
        // The seal's commit rewrites the pending rows of each chunk holding both.
        const straddles = chunkLastOffset(c.value) >= h.committed;
        if (straddles && straddling >= MAX_SEAL_STRADDLING) continue;
        // The seal checks the last chunk taken from each partition, and Deno KV allows 100 checks.
        if (!fromPartitions.has(h) && fromPartitions.size >= MAX_SEAL_PARTITIONS) continue;
        if (best === undefined || c.value.enqueuedAt < best.head!.value.enqueuedAt) best = h;
      }
      if (best === undefined) break;
      fromPartitions.add(best);
      const { key, value, versionstamp } = best.head!;
      const straddles = chunkLastOffset(value) >= best.committed;
      if (straddles) straddling++;
      day ??= value.day;
      taken.push({
        key,
        value,
        partition: { versionstamp, committed: best.committed },
        rest: (left, sources) =>
          packToFit(left, sources).map(({ data, offsets }) => [
            chunkKey(value.topic, value.partition, offsets[0]!),
            packedChunk(value, offsets, data),
          ]),
      });
      rows += chunkCount(value);
      // Rows after a chunk holding pending rows are pending too.
      const n = straddles ? undefined : await best.it.next();
      best.head = n === undefined || n.done ? undefined : n.value;
    }
    return taken;
  }

  /** See {@linkcode KvQueue.unseal}. */
  async unseal(id: bigint, groupCount: number, isolate: boolean): Promise<void> {
    const kv = this.#store.kv;
    const entry = await kv.get<BatchMeta>(batchKey());
    if (entry.value === null || entry.value.id !== id) return;
    const meta = entry.value;
    const { rows, offsets, partitions } = await this.#batch.batchEntries(meta);
    // Rows an interrupted unseal of this batch returned already would go twice.
    await this.#store.deleteAll(
      await this.#batch.returnedFrom(id),
      `remove rows returned from batch ${id}`,
    );
    const groups = Math.max(1, Math.min(groupCount, rows.length));
    const size = Math.ceil(rows.length / groups);
    // After any rows still returned, even if the clock stalled or stepped back,
    // so no earlier returned chunk is overwritten or overtaken.
    let seqBase = BigInt(this.#now()) * 1_000_000n;
    const newest = kv.list({ prefix: returnedPrefix() }, { reverse: true, limit: 1 });
    for await (const { key } of newest) {
      const seq = parseReturnedKey(key);
      if (seq >= seqBase) seqBase = seq + 1n;
    }
    const chunks: Array<readonly [ReturnedKey, PackedChunk]> = [];
    for (let g = 0; g < groups; g++) {
      const from = g * size;
      const to = Math.min(rows.length, from + size);
      const info: ChunkInfo = {
        topic: meta.topic,
        partition: -1,
        day: Math.floor(meta.minTimestamp / DAY_SECONDS),
        enqueuedAt: meta.oldestEnqueuedAt,
        isolated: isolate ? `${id}:${g}` : undefined,
        from: id,
      };
      const packed = packToFit(rows.slice(from, to), {
        offsets: offsets.slice(from, to),
        partitions: partitions.slice(from, to),
      }, RETURNED_PACK_BYTES);
      for (const part of packed) {
        chunks.push([
          returnedKey(seqBase + BigInt(chunks.length)),
          packedChunk(info, part.offsets, part.data),
        ]);
      }
    }
    // The returned chunks are written before the batch goes; a crash in
    // between leaves both, and the batch (still sealed) wins: markLanded(),
    // discard() and a later unseal() remove the rows it returned.
    await this.#store.setAll(chunks, `return rows of batch ${id}`);
    const op = kv.atomic().check(entry).delete(batchKey());
    for (let i = 0; i < meta.parts; i++) op.delete(batchPartKey(id, i));
    for (let i = 0; i < meta.rowParts; i++) op.delete(batchRowsKey(id, i));
    const res = await this.#store.commit(op, `unseal batch ${id}`);
    if (!res.ok) {
      throw new QueueError(`Cannot unseal batch ${id} as another writer changed it`, {
        code: "kv_conflict",
        retriable: true,
      });
    }
  }
}

function splitBytes(bytes: Uint8Array): Uint8Array[] {
  const parts = [];
  for (let i = 0; i < bytes.byteLength || i === 0; i += MAX_VALUE_BYTES) {
    parts.push(bytes.slice(i, i + MAX_VALUE_BYTES));
  }
  return parts;
}

function randomBatchId(): bigint {
  const [a] = crypto.getRandomValues(new BigUint64Array(1));
  // 63 bits keep the id positive in every client that reads UInt64 as Int64.
  return (a! >> 1n) || 1n;
}
