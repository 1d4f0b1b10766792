/**
 * Assembles a {@linkcode StatusSnapshot} from the live parts of a service.
 *
 * @module
 */
import type { FlusherStatus } from "./flusher.ts";
import type { KvQueue } from "./queue/kv_queue.ts";
import type { SourceStatus } from "./source/kafka_source.ts";
import { serverProfile } from "./sink/clickhouse/server_version.ts";
import type { StatusSnapshot } from "./status.ts";
import type { StatusRecorder } from "./status_recorder.ts";

/** The parts of a running service a snapshot reads. */
export interface SnapshotParts {
  queue: KvQueue;
  source: () => SourceStatus;
  flusher: () => FlusherStatus;
  recorder: StatusRecorder;
  /** The `CLICKHOUSE_DEDUP` setting. */
  dedupSetting: "auto" | "check" | "token";
}

/** Takes a history sample (at most one per sample interval) from the queue's counters. */
export async function sampleHistory(parts: SnapshotParts): Promise<void> {
  const stats = await parts.queue.stats();
  parts.recorder.sample({
    queuedRows: stats.queuedRows + stats.sealedRows,
    landedRows: stats.landedRows,
  });
}

/** A snapshot of the service now; reads a few KV keys, never the whole queue. */
export async function takeSnapshot(parts: SnapshotParts): Promise<StatusSnapshot> {
  const [stats, batch, diskBytes] = await Promise.all([
    parts.queue.stats(),
    parts.queue.batch(),
    kvDiskBytes(parts.queue.path),
  ]);
  const at = Date.now();
  const source = parts.source();
  const flusher = parts.flusher();
  const queuedRows = stats.queuedRows + stats.sealedRows;
  return {
    at,
    instance: parts.queue.instanceId,
    kafka: {
      joined: source.joined,
      backpressure: source.backpressure,
      partitions: source.assigned.map((p) => ({ partition: p, lag: source.lag[p] ?? null })),
    },
    queue: {
      rows: queuedRows,
      sealedRows: stats.sealedRows,
      oldestAgeMs: stats.oldestAgeMs,
      diskBytes,
      landedRows: stats.landedRows,
      landedBatches: stats.landedBatches,
    },
    batch: batch === null ? null : {
      id: String(batch.id),
      rows: batch.rows,
      bytes: batch.bytes,
      state: batch.state,
      attempts: batch.attempts,
      sealedAt: batch.sealedAt,
      lastError: batch.lastError ?? null,
    },
    pacing: { nextSlotAt: flusher.nextSlotAt, inflight: flusher.inflight },
    flushes: parts.recorder.flushes(),
    refusals: { total: parts.recorder.refusals, inARow: flusher.refusalsInARow },
    deadLetters: parts.recorder.deadLetters(),
    clickhouse: {
      version: flusher.serverVersion,
      dedup: flusher.serverVersion === null
        ? null
        : dedupInUse(flusher.serverVersion, parts.dedupSetting),
      dedupSetting: parts.dedupSetting,
    },
    history: {
      sampleMs: parts.recorder.sampleMs,
      samples: [...parts.recorder.samples(), {
        at,
        queuedRows,
        landedRows: stats.landedRows,
      }],
    },
  };
}

/**
 * The flusher's choice for an unknown outcome: tokens need the deduplication
 * windows migrate sets on modern servers only, so older ones always check.
 */
function dedupInUse(version: string, setting: SnapshotParts["dedupSetting"]): string {
  if (!serverProfile(version).modern) return "check";
  return setting === "auto" ? "token" : setting;
}

async function kvDiskBytes(path: string): Promise<number> {
  let bytes = 0;
  for (const suffix of ["", "-wal", "-shm"]) {
    try {
      bytes += (await Deno.stat(path + suffix)).size;
    } catch {
      // The WAL and SHM files exist only while SQLite needs them.
    }
  }
  return bytes;
}
