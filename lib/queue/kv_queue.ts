/**
 * The durable batch queue in Deno KV.
 *
 * Rows move through three states:
 *
 * 1. **pending**: appended from Kafka, but the Kafka offset commit that hands
 *    them to this instance is not confirmed yet;
 * 2. **owned**: the commit succeeded with this instance's id as metadata, so
 *    no other consumer will store these offsets;
 * 3. **sealed**: packed into the one immutable batch body awaiting delivery,
 *    byte-identical on every retry.
 *
 * Chunks hold the rows of one partition and one UTC day, so a sealed batch
 * lands in exactly one ClickHouse partition and an INSERT is all-or-nothing.
 *
 * @module
 */
import { QueueError } from "../errors.ts";
import type { HttpLogRow } from "../record/types.ts";
import type { PacerState } from "../pacer.ts";
import { decodeRows, encodedRowLength, encodeRows } from "./_row_binary.ts";
import {
  batchKey,
  batchPartKey,
  batchPartPrefix,
  batchRowsKey,
  batchRowsPrefix,
  chunkKey,
  chunkPartitionPrefix,
  counterKey,
  instanceKey,
  pacerKey,
  partitionKey,
  partitionPrefix,
  returnedKey,
  returnedPrefix,
  serverKey,
} from "./_keys.ts";

/** Largest KV value anonymizer writes; Deno KV allows 64 KiB. */
const MAX_VALUE_BYTES = 60_000;
/** Largest atomic commit anonymizer writes; Deno KV allows 800 KiB. */
const MAX_COMMIT_BYTES = 700_000;
/** Most chunks one seal consumes; each is a delete, and Deno KV allows 1000 mutations per commit. */
const MAX_SEAL_CHUNKS = 900;
/**
 * Most RowBinary bytes one seal decodes: 16 MiB is three times what 40,000
 * stock rows take, and it bounds the V8 heap a seal needs (rows at the 8 KiB
 * URL limit would otherwise fill 900 chunks, 54 MB, of which a 1 MiB body
 * holds under 200 rows), so the service's heap limit holds for any input.
 */
const MAX_SEAL_ROW_BYTES = 16 * 1_048_576;
const DAY_SECONDS = 86_400;

/** One row with the Kafka offset it came from. */
export interface QueueEntry {
  /** Offset of the source message. */
  offset: bigint;
  /** The anonymized row. */
  row: HttpLogRow;
}

/** Queue progress of one Kafka partition. */
export interface PartitionState {
  /** Next offset not yet handled; every offset below is queued, dead-lettered or stored. */
  next: bigint;
  /** Offsets below this are owned by this instance (its Kafka commit succeeded). */
  committed: bigint;
}

interface Chunk {
  topic: string;
  /** Source partition of every row, unless `partitions` is set. */
  partition: number;
  day: number;
  offsets: BigInt64Array;
  /** Source partition per row, for rows returned from a batch (they mix partitions). */
  partitions?: Int32Array | undefined;
  rows: Uint8Array;
  enqueuedAt: number;
  isolated?: string | undefined;
  /** Id of the batch a returned chunk came from. */
  from?: bigint | undefined;
}

/** The body of a sealed batch and how to send it. */
export interface PackResult {
  /** The request body. */
  body: Uint8Array;
  /** How many of the offered rows, from the front, the body holds. */
  rowCount: number;
  /** Encoding name, e.g. `"native_zstd"`. */
  encoding: string;
  /** URL parameters for the INSERT (including `query`). */
  query: Record<string, string>;
  /** HTTP headers for the INSERT. */
  headers: Record<string, string>;
}

/** Delivery state of the sealed batch. */
export type BatchState = "sealed" | "sending" | "unknown";

/** A sealed batch. Its body never changes once written. */
export interface BatchMeta {
  /** Random 63-bit id, stored in column `batch_id` of every row. */
  id: bigint;
  /** Rows in the body. */
  rows: number;
  /** Body bytes. */
  bytes: number;
  /** Number of KV parts holding the body. */
  parts: number;
  /** Number of KV parts holding the rows and their sources, to re-split the batch. */
  rowParts: number;
  /** Kafka topic the rows came from. */
  topic: string;
  /** Set when the batch holds one group of a bisected poison batch. */
  isolated: string | false;
  /** Encoding name. */
  encoding: string;
  /** URL parameters for the INSERT. */
  query: Record<string, string>;
  /** HTTP headers for the INSERT. */
  headers: Record<string, string>;
  /** Smallest and largest row timestamp (seconds), for a cheap existence check. */
  minTimestamp: number;
  /** Largest row timestamp (seconds). */
  maxTimestamp: number;
  /** When the oldest row in the batch was queued (ms). */
  oldestEnqueuedAt: number;
  /** When the batch was sealed (ms). */
  sealedAt: number;
  /** Delivery state. */
  state: BatchState;
  /** INSERT attempts so far. */
  attempts: number;
  /** Last error, without payload. */
  lastError?: string;
  /**
   * Set when ch-proxy answered 413 to a resend whose earlier attempt has an
   * unknown outcome: the outcome is resolved by a check before any split.
   */
  tooLarge?: true;
}

/** Queue size figures for metrics and progress. */
export interface QueueStats {
  /** Rows appended and not yet sealed (pending and owned). */
  queuedRows: number;
  /** RowBinary bytes of the oldest chunk of each partition: a cheap sample, not the total. */
  queuedBytes: number;
  /** Rows in the sealed batch. */
  sealedRows: number;
  /** Rows stored in ClickHouse by this instance, ever. */
  landedRows: number;
  /** Batches stored in ClickHouse by this instance, ever. */
  landedBatches: number;
  /** Age of the oldest queued or sealed row (ms), 0 when empty. */
  oldestAgeMs: number;
}

/** Options of {@linkcode openQueue}. */
export interface OpenQueueOptions {
  /** Clock, for tests. Default: `Date.now`. */
  now?: () => number;
}

/**
 * Opens the queue stored at `path` (a file; created if missing).
 *
 * @example Append, own, seal and land one row
 * ```ts
 * import { openQueue } from "./kv_queue.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await using queue = await openQueue(`${dir}/queue.sqlite3`);
 * const row = {
 *   timestamp: 1_700_000_000, resourceId: 1n, bytesSent: 2n, requestTimeMilli: 3n,
 *   responseStatus: 200, cacheStatus: "HIT", method: "GET", remoteAddr: "1.2.3.X", url: "/a",
 * };
 * await queue.append("http_log", 0, [{ offset: 5n, row }], { next: 6n });
 * await queue.promote("http_log", 0, 6n);
 * const batch = await queue.seal((rows) => ({
 *   body: new TextEncoder().encode(JSON.stringify(rows.length)), rowCount: rows.length,
 *   encoding: "test", query: {}, headers: {},
 * }));
 * assert.equal(batch?.rows, 1);
 * await queue.markLanded(batch!.id);
 * assert.equal((await queue.stats()).landedRows, 1);
 * ```
 */
export async function openQueue(path: string, options: OpenQueueOptions = {}): Promise<KvQueue> {
  let kv: Deno.Kv;
  try {
    kv = await Deno.openKv(path);
  } catch (cause) {
    throw new QueueError(`Cannot open the KV queue: path ${JSON.stringify(path)}`, {
      code: "kv_open_failed",
      retriable: false,
      cause,
    });
  }
  const queue = new KvQueue(kv, path, options.now ?? Date.now);
  await queue.init();
  return queue;
}

/**
 * The durable queue. Create it with {@linkcode openQueue}.
 *
 * @example Rows stay pending until promoted
 * ```ts
 * import { openQueue } from "./kv_queue.ts";
 * import assert from "node:assert/strict";
 *
 * await using queue = await openQueue(`${await Deno.makeTempDir()}/q.kv`);
 * const row = {
 *   timestamp: 1_700_000_000, resourceId: 1n, bytesSent: 2n, requestTimeMilli: 3n,
 *   responseStatus: 200, cacheStatus: "HIT", method: "GET", remoteAddr: "1.2.3.X", url: "/",
 * };
 * await queue.append("http_log", 0, [{ offset: 0n, row }], { next: 1n });
 * assert.deepEqual(await queue.partition("http_log", 0), { next: 1n, committed: 0n });
 * ```
 */
export class KvQueue implements AsyncDisposable {
  readonly #kv: Deno.Kv;
  readonly #now: () => number;
  #instanceId = "";
  /** Path of the KV file. */
  readonly path: string;

  /** Use {@linkcode openQueue}. */
  constructor(kv: Deno.Kv, path: string, now: () => number) {
    this.#kv = kv;
    this.path = path;
    this.#now = now;
  }

  /** Persistent random id of this queue, used as Kafka commit metadata. */
  get instanceId(): string {
    return this.#instanceId;
  }

  /** Creates the instance id on first use and removes body parts of batches never sealed. */
  async init(): Promise<void> {
    const existing = await this.#kv.get<string>(instanceKey());
    if (existing.value !== null) {
      this.#instanceId = existing.value;
    } else {
      const id = `anonymizer-${crypto.randomUUID()}`;
      const res = await this.#kv.atomic().check(existing).set(instanceKey(), id).commit();
      this.#instanceId = res.ok ? id : (await this.#kv.get<string>(instanceKey())).value!;
    }
    const batch = (await this.#kv.get<BatchMeta>(batchKey())).value;
    const orphans: Deno.KvKey[] = [];
    for (const prefix of [batchPartPrefix(), batchRowsPrefix()]) {
      for await (const entry of this.#kv.list({ prefix })) {
        if (batch === null || entry.key[2] !== batch.id) orphans.push(entry.key);
      }
    }
    for (let i = 0; i < orphans.length; i += 500) {
      const op = this.#kv.atomic();
      for (const key of orphans.slice(i, i + 500)) op.delete(key);
      await this.#commit(op, "remove orphaned batch parts");
    }
  }

  /** Queue progress of a partition, or `null` if it never had data here. */
  async partition(topic: string, partition: number): Promise<PartitionState | null> {
    return (await this.#kv.get<PartitionState>(partitionKey(topic, partition))).value;
  }

  /** Every partition this queue has state for. */
  async partitions(): Promise<Array<{ topic: string; partition: number } & PartitionState>> {
    const out = [];
    for await (const e of this.#kv.list<PartitionState>({ prefix: partitionPrefix() })) {
      out.push({ topic: e.key[2] as string, partition: e.key[3] as number, ...e.value });
    }
    return out;
  }

  /**
   * Appends rows from one Kafka batch as pending and advances the partition's
   * `next` offset to `options.next`. Entries below the stored `next` are
   * already queued (Kafka redelivered them) and are skipped.
   *
   * @returns how many rows were appended.
   */
  async append(
    topic: string,
    partition: number,
    entries: readonly QueueEntry[],
    options: { next: bigint },
  ): Promise<number> {
    const stateEntry = await this.#kv.get<PartitionState>(partitionKey(topic, partition));
    const firstOffset = entries[0]?.offset ?? options.next;
    const state: PartitionState = stateEntry.value ?? { next: firstOffset, committed: firstOffset };
    if (options.next <= state.next) return 0;
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
    let op = this.#kv.atomic();
    let rows = 0;
    const flush = async (next: bigint) => {
      op.check({ key: partitionKey(topic, partition), versionstamp })
        .set(partitionKey(topic, partition), { ...state, next })
        .sum(counterKey("queued_rows"), BigInt(rows));
      const res = await this.#commit(op, `append to partition ${partition} of ${topic}`);
      if (!res.ok) {
        throw new QueueError(
          `Cannot append to partition ${partition} of ${topic} as another writer changed it`,
          { code: "kv_conflict", retriable: true },
        );
      }
      versionstamp = res.versionstamp;
      state.next = next;
      op = this.#kv.atomic();
      rows = 0;
    };
    for (let i = 0; i < planned.length; i++) {
      for (const chunk of planned[i]!) {
        op.set(chunkKey(topic, partition, BigInt(chunk.offsets[0]!)), chunk);
        rows += chunk.offsets.length;
      }
      if (i + 1 < runs.length) await flush(runs[i + 1]![0]!.offset);
    }
    await flush(options.next);
    return fresh.length;
  }

  #buildChunks(topic: string, partition: number, entries: readonly QueueEntry[]): Chunk[] {
    const byDay = new Map<number, QueueEntry[]>();
    for (const e of entries) {
      const day = Math.floor(e.row.timestamp / DAY_SECONDS);
      let list = byDay.get(day);
      if (list === undefined) byDay.set(day, list = []);
      list.push(e);
    }
    const chunks: Chunk[] = [];
    const enqueuedAt = this.#now();
    for (const [day, list] of byDay) {
      let start = 0;
      let size = 0;
      const cut = (end: number) => {
        const part = list.slice(start, end);
        chunks.push({
          topic,
          partition,
          day,
          offsets: BigInt64Array.from(part, (e) => e.offset),
          rows: encodeRows(part.map((e) => e.row)),
          enqueuedAt,
        });
        start = end;
        size = 0;
      };
      for (let i = 0; i < list.length; i++) {
        const rowSize = encodedRowLength(list[i]!.row) + 8;
        if (rowSize > MAX_VALUE_BYTES) {
          throw new QueueError(
            `Cannot queue the row at offset ${list[i]!.offset} of partition ${partition} as it ` +
              `takes ${rowSize} bytes: the limit is ${MAX_VALUE_BYTES}`,
            { code: "row_too_large", retriable: false },
          );
        }
        if (size + rowSize > MAX_VALUE_BYTES) cut(i);
        size += rowSize;
      }
      if (start < list.length) cut(list.length);
    }
    return chunks;
  }

  /** Marks offsets below `committed` as owned, after this instance's Kafka commit succeeded. */
  async promote(topic: string, partition: number, committed: bigint): Promise<void> {
    for (;;) {
      const entry = await this.#kv.get<PartitionState>(partitionKey(topic, partition));
      if (entry.value === null || committed <= entry.value.committed) return;
      const next = entry.value.next > committed ? entry.value.next : committed;
      const res = await this.#commit(
        this.#kv.atomic().check(entry).set(partitionKey(topic, partition), { next, committed }),
        `promote partition ${partition} of ${topic}`,
      );
      if (res.ok) return;
    }
  }

  /**
   * Deletes the pending rows of a partition because another consumer stored
   * them, and restarts the partition at `resumeAt`.
   *
   * @returns how many rows were dropped.
   */
  async dropPending(topic: string, partition: number, resumeAt: bigint): Promise<number> {
    const entry = await this.#kv.get<PartitionState>(partitionKey(topic, partition));
    if (entry.value === null) return 0;
    const { committed } = entry.value;
    const doomed: Array<Deno.KvEntry<Chunk>> = [];
    for await (
      const c of this.#kv.list<Chunk>({
        prefix: chunkPartitionPrefix(topic, partition),
        start: chunkKey(topic, partition, committed),
      })
    ) doomed.push(c);
    if (doomed.length > MAX_SEAL_CHUNKS) {
      throw new QueueError(
        `Cannot drop ${doomed.length} pending chunks of partition ${partition} in one commit`,
        { code: "too_many_pending", retriable: false },
      );
    }
    // The partition check suffices: every writer of pending chunks changes the
    // partition state, and Deno KV allows only 100 checks per commit.
    const op = this.#kv.atomic().check(entry);
    let dropped = 0;
    for (const c of doomed) {
      op.delete(c.key);
      dropped += c.value.offsets.length;
    }
    op.set(partitionKey(topic, partition), { next: resumeAt, committed: resumeAt });
    // Subtracting 0 as 2^64 does not fit a KvU64.
    if (dropped > 0) op.sum(counterKey("queued_rows"), 2n ** 64n - BigInt(dropped));
    const res = await this.#commit(op, `drop pending rows of partition ${partition}`);
    if (!res.ok) {
      throw new QueueError(
        `Cannot drop pending rows of partition ${partition} of ${topic} as another writer changed it`,
        { code: "kv_conflict", retriable: true },
      );
    }
    return dropped;
  }

  /** The sealed batch awaiting delivery, if any. */
  async batch(): Promise<BatchMeta | null> {
    return (await this.#kv.get<BatchMeta>(batchKey())).value;
  }

  /** The body of batch `meta`, byte-identical to what was sealed. */
  async body(meta: BatchMeta): Promise<Uint8Array> {
    return await this.#readParts(meta.parts, (i) => batchPartKey(meta.id, i));
  }

  /**
   * Seals the next batch from owned rows unless one is sealed already.
   * Rows handed back by {@linkcode KvQueue.unseal} go first; then owned rows,
   * oldest first across partitions. All rows of a batch share one UTC day.
   * `pack` builds the body from a prefix of the offered rows and must put
   * `batchId` in every row.
   *
   * @returns the sealed batch, or `null` when no owned rows are queued.
   */
  async seal(
    pack: (rows: HttpLogRow[], batchId: bigint) => PackResult | Promise<PackResult>,
    options: { candidateRows?: number } = {},
  ): Promise<BatchMeta | null> {
    const current = await this.batch();
    if (current !== null) return current;
    const taken = await this.#candidates(options.candidateRows ?? 40_000);
    if (taken.length === 0) return null;

    const offered: HttpLogRow[] = [];
    const perChunk: HttpLogRow[][] = [];
    for (const c of taken) {
      const r = decodeRows(c.value.rows);
      perChunk.push(r);
      for (const row of r) offered.push(row);
    }
    const id = randomBatchId();
    const packed = await pack(offered, id);
    if (packed.rowCount < 1 || packed.rowCount > offered.length) {
      throw new QueueError(
        `Cannot seal a batch as the packer took ${packed.rowCount} of ${offered.length} rows`,
        { code: "pack_invalid", retriable: false },
      );
    }
    const rows = offered.slice(0, packed.rowCount);
    const offsets = new BigInt64Array(rows.length);
    const partitions = new Int32Array(rows.length);
    for (let i = 0, n = 0; n < rows.length; i++) {
      const c = taken[i]!.value;
      for (let j = 0; j < c.offsets.length && n < rows.length; j++, n++) {
        offsets[n] = c.offsets[j]!;
        partitions[n] = c.partitions?.[j] ?? c.partition;
      }
    }
    const parts = splitBytes(packed.body);
    const rowParts = splitRows(rows, offsets, partitions);
    await this.#writeParts([
      ...parts.map((v, i) => [batchPartKey(id, i), v] as const),
      ...rowParts.map((v, i) => [batchRowsKey(id, i), v] as const),
    ], `write batch ${id}`);

    const op = this.#kv.atomic().check({ key: batchKey(), versionstamp: null });
    let remaining = packed.rowCount;
    let oldestEnqueuedAt = Infinity;
    for (let i = 0; i < taken.length && remaining > 0; i++) {
      const c = taken[i]!;
      const chunkRows = perChunk[i]!;
      const used = Math.min(remaining, chunkRows.length);
      oldestEnqueuedAt = Math.min(oldestEnqueuedAt, c.value.enqueuedAt);
      // No check on the chunk: owned chunks never change, and only the flusher deletes them.
      op.delete(c.key);
      if (used < chunkRows.length) {
        const rest: Chunk = {
          ...c.value,
          offsets: c.value.offsets.slice(used),
          partitions: c.value.partitions?.slice(used),
          rows: encodeRows(chunkRows.slice(used)),
        };
        const key = c.key[1] === "returned"
          ? c.key
          : chunkKey(c.value.topic, c.value.partition, BigInt(rest.offsets[0]!));
        op.set(key, rest);
      }
      remaining -= used;
    }
    let minTimestamp = Infinity;
    let maxTimestamp = -Infinity;
    for (const r of rows) {
      if (r.timestamp < minTimestamp) minTimestamp = r.timestamp;
      if (r.timestamp > maxTimestamp) maxTimestamp = r.timestamp;
    }
    const meta: BatchMeta = {
      id,
      rows: rows.length,
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
    const res = await this.#commit(op, `seal batch ${id}`);
    if (!res.ok) {
      // A concurrent seal won; our parts are orphans and go at the next start.
      return await this.batch();
    }
    return meta;
  }

  /** Chunks to offer the packer: returned rows first, then owned rows, one UTC day. */
  async #candidates(candidateRows: number): Promise<Array<Deno.KvEntry<Chunk>>> {
    const taken: Array<Deno.KvEntry<Chunk>> = [];
    let rows = 0;
    let bytes = 0;
    let day: number | undefined;
    for await (const c of this.#kv.list<Chunk>({ prefix: returnedPrefix() }, { batchSize: 20 })) {
      const first = taken[0]?.value;
      if (first !== undefined) {
        // An isolated group (a suspected poison half) is sent on its own, even
        // when it spans several chunks.
        if (c.value.day !== day || c.value.isolated !== first.isolated) break;
      }
      day ??= c.value.day;
      taken.push(c);
      rows += c.value.offsets.length;
      bytes += c.value.rows.byteLength;
      if (rows >= candidateRows || taken.length >= MAX_SEAL_CHUNKS) return taken;
      if (bytes >= MAX_SEAL_ROW_BYTES) return taken;
    }
    if (taken[0]?.value.isolated) return taken;

    const committed = new Map<string, bigint>();
    for (const p of await this.partitions()) {
      committed.set(`${p.topic}\u0000${p.partition}`, p.committed);
    }
    // Per-partition FIFO iterators, merged by enqueue time so no partition starves.
    const heads: Array<{ it: AsyncIterator<Deno.KvEntry<Chunk>>; head?: Deno.KvEntry<Chunk> }> = [];
    for (const p of await this.partitions()) {
      const it = this.#kv.list<Chunk>({ prefix: chunkPartitionPrefix(p.topic, p.partition) }, {
        batchSize: 50,
      })[Symbol.asyncIterator]();
      const first = await it.next();
      if (!first.done) heads.push({ it, head: first.value });
    }
    while (
      rows < candidateRows && taken.length < MAX_SEAL_CHUNKS && bytes < MAX_SEAL_ROW_BYTES
    ) {
      let best: (typeof heads)[number] | undefined;
      for (const h of heads) {
        const c = h.head;
        if (c === undefined) continue;
        const owned = committed.get(`${c.value.topic}\u0000${c.value.partition}`) ?? 0n;
        if (c.value.offsets[c.value.offsets.length - 1]! >= owned) continue;
        if (day !== undefined && c.value.day !== day) continue;
        if (best === undefined || c.value.enqueuedAt < best.head!.value.enqueuedAt) best = h;
      }
      if (best === undefined) break;
      const chunk = best.head!;
      day ??= chunk.value.day;
      taken.push(chunk);
      rows += chunk.value.offsets.length;
      bytes += chunk.value.rows.byteLength;
      const n = await best.it.next();
      best.head = n.done ? undefined : n.value;
    }
    return taken;
  }

  /**
   * Hands the rows of the sealed batch back to the queue, in `groups` equal
   * parts, and deletes the batch. Only for a batch ClickHouse certainly did
   * not store (the proxy refused its size, or ClickHouse rejected its data).
   * With `isolate`, each group is later sealed alone, to find a poison row.
   */
  async unseal(id: bigint, options: { groups?: number; isolate?: boolean } = {}): Promise<void> {
    const entry = await this.#kv.get<BatchMeta>(batchKey());
    if (entry.value === null || entry.value.id !== id) return;
    const meta = entry.value;
    const { rows, offsets, partitions } = await this.batchEntries(meta);
    // Rows an interrupted unseal of this batch returned already would go twice.
    await this.#deleteKeys(await this.#returnedFrom(id), `remove rows returned from batch ${id}`);
    const groups = Math.max(1, Math.min(options.groups ?? 1, rows.length));
    const size = Math.ceil(rows.length / groups);
    // After any rows still returned, even if the clock stalled or stepped back,
    // so no earlier returned chunk is overwritten or overtaken.
    let seqBase = BigInt(this.#now()) * 1_000_000n;
    const newest = this.#kv.list({ prefix: returnedPrefix() }, { reverse: true, limit: 1 });
    for await (const { key } of newest) {
      const seq = key[2] as bigint;
      if (seq >= seqBase) seqBase = seq + 1n;
    }
    const chunks: Array<readonly [Deno.KvKey, Chunk]> = [];
    for (let g = 0; g < groups; g++) {
      const from = g * size;
      const to = Math.min(rows.length, from + size);
      const groupParts = splitRows(
        rows.slice(from, to),
        offsets.slice(from, to),
        partitions.slice(from, to),
      );
      for (const part of groupParts) {
        chunks.push([returnedKey(seqBase + BigInt(chunks.length)), {
          ...part,
          topic: meta.topic,
          partition: -1,
          day: Math.floor(meta.minTimestamp / DAY_SECONDS),
          enqueuedAt: meta.oldestEnqueuedAt,
          isolated: options.isolate === true ? `${id}:${g}` : undefined,
          from: id,
        }]);
      }
    }
    // The returned chunks are written before the batch goes; a crash in
    // between leaves both, and the batch (still sealed) wins: markLanded(),
    // discard() and a later unseal() remove the rows it returned.
    await this.#writeParts(chunks, `return rows of batch ${id}`);
    const op = this.#kv.atomic().check(entry).delete(batchKey());
    for (let i = 0; i < meta.parts; i++) op.delete(batchPartKey(id, i));
    for (let i = 0; i < meta.rowParts; i++) op.delete(batchRowsKey(id, i));
    const res = await this.#commit(op, `unseal batch ${id}`);
    if (!res.ok) {
      throw new QueueError(`Cannot unseal batch ${id} as another writer changed it`, {
        code: "kv_conflict",
        retriable: true,
      });
    }
  }

  async #writeParts(
    entries: ReadonlyArray<readonly [Deno.KvKey, unknown]>,
    what: string,
  ): Promise<void> {
    let op = this.#kv.atomic();
    let n = 0;
    for (const [key, value] of entries) {
      op.set(key, value);
      if (++n === 11) {
        await this.#commit(op, what);
        op = this.#kv.atomic();
        n = 0;
      }
    }
    if (n > 0) await this.#commit(op, what);
  }

  /** Keys of returned chunks that came from batch `id`. */
  async #returnedFrom(id: bigint): Promise<Deno.KvKey[]> {
    const keys: Deno.KvKey[] = [];
    for await (const c of this.#kv.list<Chunk>({ prefix: returnedPrefix() })) {
      if (c.value.from === id) keys.push(c.key);
    }
    return keys;
  }

  async #deleteKeys(keys: readonly Deno.KvKey[], what: string): Promise<void> {
    for (let i = 0; i < keys.length; i += 500) {
      const op = this.#kv.atomic();
      for (const key of keys.slice(i, i + 500)) op.delete(key);
      await this.#commit(op, what);
    }
  }

  async #readParts(count: number, key: (i: number) => Deno.KvKey): Promise<Uint8Array> {
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < count; i += 10) {
      const keys = [];
      for (let j = i; j < Math.min(count, i + 10); j++) keys.push(key(j));
      for (const e of await this.#kv.getMany<Uint8Array[]>(keys)) {
        if (e.value === null) {
          throw new QueueError(
            `Cannot read KV key ${JSON.stringify(e.key.map(String))} as it is missing`,
            {
              code: "batch_corrupt",
              retriable: false,
            },
          );
        }
        chunks.push(e.value);
      }
    }
    const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
    let pos = 0;
    for (const c of chunks) {
      out.set(c, pos);
      pos += c.byteLength;
    }
    return out;
  }

  /** Records that an INSERT or check for the sealed batch is about to be sent. */
  async markSending(id: bigint): Promise<BatchMeta> {
    return await this.#updateBatch(
      id,
      (b) => ({ ...b, state: "sending", attempts: b.attempts + 1 }),
    );
  }

  /**
   * Records that ch-proxy refused a resend of the sealed batch as too large
   * while an earlier attempt's outcome is unknown: state `"unknown"`,
   * `tooLarge` set.
   */
  async markTooLarge(id: bigint, lastError: string): Promise<BatchMeta> {
    return await this.#updateBatch(
      id,
      (b) => ({ ...b, state: "unknown", tooLarge: true, lastError }),
    );
  }

  /** Records the delivery state of the sealed batch. */
  async markState(id: bigint, state: BatchState, lastError?: string): Promise<BatchMeta> {
    return await this.#updateBatch(id, (b) => ({ ...b, state, lastError }));
  }

  async #updateBatch(id: bigint, f: (b: BatchMeta) => BatchMeta): Promise<BatchMeta> {
    for (;;) {
      const entry = await this.#kv.get<BatchMeta>(batchKey());
      if (entry.value === null || entry.value.id !== id) {
        throw new QueueError(`Cannot update batch ${id} as it is not the sealed batch`, {
          code: "batch_missing",
          retriable: false,
        });
      }
      const next = f(entry.value);
      const res = await this.#commit(
        this.#kv.atomic().check(entry).set(batchKey(), next),
        `update batch ${id}`,
      );
      if (res.ok) return next;
    }
  }

  /** The rows of batch `meta`, in body order. */
  async batchRows(meta: BatchMeta): Promise<HttpLogRow[]> {
    return (await this.batchEntries(meta)).rows;
  }

  /** The rows of batch `meta` with the Kafka partition and offset each came from. */
  async batchEntries(
    meta: BatchMeta,
  ): Promise<{ rows: HttpLogRow[]; offsets: BigInt64Array; partitions: Int32Array }> {
    const parts: RowPart[] = [];
    for (let i = 0; i < meta.rowParts; i += 10) {
      const keys = [];
      for (let j = i; j < Math.min(meta.rowParts, i + 10); j++) keys.push(batchRowsKey(meta.id, j));
      for (const e of await this.#kv.getMany<RowPart[]>(keys)) {
        if (e.value === null) {
          throw new QueueError(
            `Cannot read the rows of batch ${meta.id} as part ${String(e.key[3])} is missing`,
            {
              code: "batch_corrupt",
              retriable: false,
            },
          );
        }
        parts.push(e.value);
      }
    }
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

  /**
   * Removes the sealed batch without storing it, after its rows were
   * dead-lettered elsewhere (a poison row ClickHouse will never accept).
   */
  async discard(id: bigint): Promise<void> {
    await this.#removeBatch(id, "dead_lettered_rows", `discard batch ${id}`);
  }

  /** Removes the sealed batch after ClickHouse stored it, and counts it as landed. */
  async markLanded(id: bigint): Promise<void> {
    await this.#removeBatch(id, "landed_rows", `remove landed batch ${id}`);
  }

  /** Deletes batch `id` with its parts and returned rows, moving its rows from queued to `counter`. */
  async #removeBatch(
    id: bigint,
    counter: "landed_rows" | "dead_lettered_rows",
    what: string,
  ): Promise<void> {
    for (;;) {
      const entry = await this.#kv.get<BatchMeta>(batchKey());
      if (entry.value === null || entry.value.id !== id) return;
      const op = this.#kv.atomic().check(entry).delete(batchKey());
      for (let i = 0; i < entry.value.parts; i++) op.delete(batchPartKey(id, i));
      for (let i = 0; i < entry.value.rowParts; i++) op.delete(batchRowsKey(id, i));
      for (const key of await this.#returnedFrom(id)) op.delete(key);
      op.sum(counterKey(counter), BigInt(entry.value.rows))
        .sum(counterKey("queued_rows"), 2n ** 64n - BigInt(entry.value.rows));
      if (counter === "landed_rows") op.sum(counterKey("landed_batches"), 1n);
      if ((await this.#commit(op, what)).ok) return;
    }
  }

  /** Pacing state shared by every process using this KV. */
  async pacer(): Promise<PacerState> {
    return (await this.#kv.get<PacerState>(pacerKey())).value ??
      { lastConsumedAt: null, inflightSince: null };
  }

  /** Replaces the pacing state. */
  async setPacer(state: PacerState): Promise<void> {
    await this.#commit(this.#kv.atomic().set(pacerKey(), state), "record request pacing");
  }

  /** Cached facts about the ClickHouse server, e.g. its version. */
  async server(): Promise<{ version: string; checkedAt: number } | null> {
    return (await this.#kv.get<{ version: string; checkedAt: number }>(serverKey())).value;
  }

  /** Caches facts about the ClickHouse server. */
  async setServer(value: { version: string; checkedAt: number }): Promise<void> {
    await this.#commit(this.#kv.atomic().set(serverKey(), value), "record server version");
  }

  /** Queue size figures. Reads one chunk per partition, not the whole queue. */
  async stats(): Promise<QueueStats> {
    const [queued, landed, batches] = await this.#kv.getMany<Deno.KvU64[]>([
      counterKey("queued_rows"),
      counterKey("landed_rows"),
      counterKey("landed_batches"),
    ]);
    const batch = await this.batch();
    let oldest = batch?.oldestEnqueuedAt ?? Infinity;
    let queuedBytes = 0;
    for (const p of await this.partitions()) {
      for await (
        const c of this.#kv.list<Chunk>({ prefix: chunkPartitionPrefix(p.topic, p.partition) }, {
          limit: 1,
        })
      ) {
        if (c.value.enqueuedAt < oldest) oldest = c.value.enqueuedAt;
        queuedBytes += c.value.rows.byteLength;
      }
    }
    const sealedRows = batch?.rows ?? 0;
    const u64 = (e: Deno.KvEntryMaybe<Deno.KvU64> | undefined) => Number(e?.value?.value ?? 0n);
    return {
      queuedRows: u64(queued) - sealedRows,
      queuedBytes,
      sealedRows,
      landedRows: u64(landed),
      landedBatches: u64(batches),
      oldestAgeMs: oldest === Infinity ? 0 : Math.max(0, this.#now() - oldest),
    };
  }

  async #commit(
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

  /** Closes the KV database. */
  close(): void {
    this.#kv.close();
  }

  /** Closes the KV database. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}

function splitBytes(bytes: Uint8Array): Uint8Array[] {
  const parts = [];
  for (let i = 0; i < bytes.byteLength || i === 0; i += MAX_VALUE_BYTES) {
    parts.push(bytes.slice(i, i + MAX_VALUE_BYTES));
  }
  return parts;
}

/** Rows with their sources, as stored in one KV value. */
interface RowPart {
  rows: Uint8Array;
  offsets: BigInt64Array;
  partitions: Int32Array;
}

/** Splits rows and their sources into parts that each fit one KV value. */
function splitRows(rows: HttpLogRow[], offsets: BigInt64Array, partitions: Int32Array): RowPart[] {
  const out: RowPart[] = [];
  let start = 0;
  let size = 0;
  const cut = (end: number) => {
    out.push({
      rows: encodeRows(rows.slice(start, end)),
      offsets: offsets.slice(start, end),
      partitions: partitions.slice(start, end),
    });
    start = end;
    size = 0;
  };
  for (let i = 0; i < rows.length; i++) {
    // Besides the row, 8 bytes of offset and 4 of partition.
    const n = encodedRowLength(rows[i]!) + 12;
    if (i > start && size + n > MAX_VALUE_BYTES) cut(i);
    size += n;
  }
  if (start < rows.length || out.length === 0) cut(rows.length);
  return out;
}

function randomBatchId(): bigint {
  const [a] = crypto.getRandomValues(new BigUint64Array(1));
  // 63 bits keep the id positive in every client that reads UInt64 as Int64.
  return (a! >> 1n) || 1n;
}
