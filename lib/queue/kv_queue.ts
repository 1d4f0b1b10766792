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
 * A chunk is one KV value of zstd-compressed RowBinary and offsets, grown by
 * later appends until it nears the 64 KiB value limit.
 *
 * {@linkcode KvQueue} composes the parts, each in its own file: row chunks
 * (append, promote, drop), sealing and unsealing, the sealed batch, and stats.
 *
 * @module
 */
import { QueueError } from "../errors.ts";
import { KvStore } from "./_kv_store.ts";
import { RowChunks } from "./_row_chunks.ts";
import { SealedBatch } from "./_sealed_batch.ts";
import { Sealing } from "./_sealing.ts";
import { queueStats } from "./_queue_stats.ts";
import {
  batchPartPrefix,
  batchRowsPrefix,
  instanceKey,
  pacerKey,
  parseBatchId,
  serverKey,
} from "./keys.ts";
import type { HttpLogRow } from "../record/types.ts";
import type { PacerState } from "../pacer.ts";
import type {
  BatchEntries,
  BatchMeta,
  BatchState,
  PackResult,
  PartitionState,
  QueueEntry,
  QueueStats,
  ServerFacts,
} from "./types.ts";

export type * from "./types.ts";

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
  const queue = new KvQueue(kv, path, options);
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
  readonly #store: KvStore;
  readonly #now: () => number;
  readonly #chunks: RowChunks;
  readonly #batch: SealedBatch;
  readonly #sealing: Sealing;
  #instanceId = "";
  /** Path of the KV file. */
  readonly path: string;

  /** Use {@linkcode openQueue}, which also runs {@linkcode KvQueue.init}. */
  constructor(kv: Deno.Kv, path: string, options: OpenQueueOptions = {}) {
    this.path = path;
    this.#now = options.now ?? Date.now;
    this.#store = new KvStore(kv, path);
    this.#chunks = new RowChunks(this.#store, this.#now);
    this.#batch = new SealedBatch(this.#store);
    this.#sealing = new Sealing(this.#store, this.#chunks, this.#batch, this.#now);
  }

  /** Persistent random id of this queue, used as Kafka commit metadata. */
  get instanceId(): string {
    return this.#instanceId;
  }

  /** Creates the instance id on first use and removes body parts of batches never sealed. */
  async init(): Promise<void> {
    const kv = this.#store.kv;
    const existing = await kv.get<string>(instanceKey());
    if (existing.value !== null) {
      this.#instanceId = existing.value;
    } else {
      const id = `anonymizer-${crypto.randomUUID()}`;
      const res = await kv.atomic().check(existing).set(instanceKey(), id).commit();
      this.#instanceId = res.ok ? id : (await kv.get<string>(instanceKey())).value!;
    }
    const batch = await this.#batch.batch();
    const orphans: Deno.KvKey[] = [];
    for (const prefix of [batchPartPrefix(), batchRowsPrefix()]) {
      for await (const entry of kv.list({ prefix })) {
        if (batch === null || parseBatchId(entry.key) !== batch.id) orphans.push(entry.key);
      }
    }
    await this.#store.deleteAll(orphans, "remove orphaned batch parts");
  }

  /** Queue progress of a partition, or `null` if it never had data here. */
  async partition(topic: string, partition: number): Promise<PartitionState | null> {
    return await this.#chunks.partition(topic, partition);
  }

  /** Every partition this queue has state for. */
  async partitions(): Promise<Array<{ topic: string; partition: number } & PartitionState>> {
    return await this.#chunks.partitions();
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
    return await this.#chunks.append(topic, partition, entries, options.next);
  }

  /** Marks offsets below `committed` as owned, after this instance's Kafka commit succeeded. */
  async promote(topic: string, partition: number, committed: bigint): Promise<void> {
    await this.#chunks.promote(topic, partition, committed);
  }

  /**
   * Deletes the pending rows of a partition because another consumer stored
   * them, and restarts the partition at `resumeAt`.
   *
   * @returns how many rows were dropped.
   */
  async dropPending(topic: string, partition: number, resumeAt: bigint): Promise<number> {
    return await this.#chunks.dropPending(topic, partition, resumeAt);
  }

  /** The sealed batch awaiting delivery, if any. */
  async batch(): Promise<BatchMeta | null> {
    return await this.#batch.batch();
  }

  /** The body of batch `meta`, byte-identical to what was sealed. */
  async body(meta: BatchMeta): Promise<Uint8Array> {
    return await this.#batch.body(meta);
  }

  /**
   * Seals the next batch from owned rows unless one is sealed already.
   * Rows handed back by {@linkcode KvQueue.unseal} go first; then owned rows,
   * oldest first across partitions. All rows of a batch share one UTC day: the
   * day of the oldest chunk, whose rows it takes from every partition, past
   * owned chunks of other days.
   * `pack` builds the body from a prefix of the offered rows and must put
   * `batchId` in every row.
   *
   * @returns the sealed batch, or `null` when no owned rows are queued.
   */
  async seal(
    pack: (rows: HttpLogRow[], batchId: bigint) => PackResult | Promise<PackResult>,
    options: {
      /** Rows to offer the packer, rounded up to whole chunks. Default: 40,000. */
      candidateRows?: number;
    } = {},
  ): Promise<BatchMeta | null> {
    return await this.#sealing.seal(pack, options.candidateRows ?? 40_000);
  }

  /**
   * Hands the rows of the sealed batch back to the queue, in `groups` equal
   * parts, and deletes the batch. Only for a batch ClickHouse certainly did
   * not store (the proxy refused its size, or ClickHouse rejected its data).
   * With `isolate`, each group is later sealed alone, to find a poison row.
   */
  async unseal(
    id: bigint,
    options: {
      /** Parts to hand the rows back in. Default: 1. */
      groups?: number;
      /** Whether each part is later sealed alone. Default: `false`. */
      isolate?: boolean;
    } = {},
  ): Promise<void> {
    await this.#sealing.unseal(id, options.groups ?? 1, options.isolate === true);
  }

  /** Records that an INSERT or check for the sealed batch is about to be sent. */
  async markSending(id: bigint): Promise<BatchMeta> {
    return await this.#batch.update(
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
    return await this.#batch.update(
      id,
      (b) => ({ ...b, state: "unknown", tooLarge: true, lastError }),
    );
  }

  /** Records the delivery state of the sealed batch. */
  async markState(id: bigint, state: BatchState, lastError?: string): Promise<BatchMeta> {
    return await this.#batch.markState(id, state, lastError);
  }

  /** The rows of batch `meta` with the Kafka partition and offset each came from. */
  async batchEntries(meta: BatchMeta): Promise<BatchEntries> {
    return await this.#batch.batchEntries(meta);
  }

  /**
   * Removes the sealed batch without storing it, after its rows were
   * dead-lettered elsewhere (a poison row ClickHouse will never accept).
   */
  async discard(id: bigint): Promise<void> {
    await this.#batch.remove(id, "dead_lettered_rows");
  }

  /** Removes the sealed batch after ClickHouse stored it, and counts it as landed. */
  async markLanded(id: bigint): Promise<void> {
    await this.#batch.remove(id, "landed_rows");
  }

  /** Pacing state shared by every process using this KV. */
  async pacer(): Promise<PacerState> {
    return (await this.#store.kv.get<PacerState>(pacerKey())).value ??
      { lastConsumedAt: null, inflightSince: null };
  }

  /** Replaces the pacing state. */
  async setPacer(state: PacerState): Promise<void> {
    await this.#store.commit(
      this.#store.kv.atomic().set(pacerKey(), state),
      "record request pacing",
    );
  }

  /** Cached facts about the ClickHouse server, e.g. its version. */
  async server(): Promise<ServerFacts | null> {
    return (await this.#store.kv.get<ServerFacts>(serverKey())).value;
  }

  /** Caches facts about the ClickHouse server. */
  async setServer(value: ServerFacts): Promise<void> {
    await this.#store.commit(
      this.#store.kv.atomic().set(serverKey(), value),
      "record server version",
    );
  }

  /** Queue size figures. Reads one chunk per partition, not the whole queue. */
  async stats(): Promise<QueueStats> {
    return await queueStats(this.#store, {
      chunks: this.#chunks,
      batch: this.#batch,
      now: this.#now,
    });
  }

  /** Closes the KV database. */
  close(): void {
    this.#store.kv.close();
  }

  /** Closes the KV database. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}
