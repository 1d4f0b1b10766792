/**
 * Queue size figures from the counters, the sealed batch and the oldest chunk
 * of each partition, without reading the whole queue.
 *
 * @module
 */
import type { KvStore } from "./_kv_store.ts";
import { chunkBytes, type StoredChunk } from "./_chunk.ts";
import type { RowChunks } from "./_row_chunks.ts";
import type { SealedBatch } from "./_sealed_batch.ts";
import { chunkPartitionPrefix, counterKey } from "./keys.ts";
import type { QueueStats } from "./types.ts";

/** Reads {@linkcode QueueStats}; see {@linkcode KvQueue.stats}. */
export async function queueStats(
  store: KvStore,
  parts: { chunks: RowChunks; batch: SealedBatch; now: () => number },
): Promise<QueueStats> {
  const [queued, landed, batches] = await store.kv.getMany<Deno.KvU64[]>([
    counterKey("queued_rows"),
    counterKey("landed_rows"),
    counterKey("landed_batches"),
  ]);
  const batch = await parts.batch.batch();
  let oldest = batch?.oldestEnqueuedAt ?? Infinity;
  let queuedBytes = 0;
  for (const p of await parts.chunks.partitions()) {
    const prefix = chunkPartitionPrefix(p.topic, p.partition);
    for await (const c of store.kv.list<StoredChunk>({ prefix }, { limit: 1 })) {
      if (c.value.enqueuedAt < oldest) oldest = c.value.enqueuedAt;
      queuedBytes += chunkBytes(c.value);
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
    oldestAgeMs: oldest === Infinity ? 0 : Math.max(0, parts.now() - oldest),
  };
}
