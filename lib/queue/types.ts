/**
 * The values the queue stores and returns: its entries, partition progress,
 * sealed batches and figures.
 *
 * @module
 */
import type { HttpLogRow } from "../record/types.ts";

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

/** The rows of a sealed batch with the Kafka partition and offset each came from. */
export interface BatchEntries {
  /** The rows, in body order. */
  rows: HttpLogRow[];
  /** Source offset of each row. */
  offsets: BigInt64Array;
  /** Source partition of each row. */
  partitions: Int32Array;
}

/** What is known about the ClickHouse server. */
export interface ServerFacts {
  /** Server version, e.g. `"18.16.1"`. */
  version: string;
  /** When the version was read (ms). */
  checkedAt: number;
}

/** Queue size figures for metrics and progress. */
export interface QueueStats {
  /** Rows appended and not yet sealed (pending and owned). */
  queuedRows: number;
  /** KV bytes of the rows of the oldest chunk of each partition: a cheap sample, not the total. */
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
