/**
 * The KV value holding queued rows: a chunk of one partition's rows of one
 * UTC day, or of rows returned from a batch.
 *
 * @module
 */
import type { HttpLogRow } from "../record/types.ts";
import { encodedRowLength, encodeRows } from "./_row_binary.ts";

/** Largest KV value anonymizer writes; Deno KV allows 64 KiB. */
export const MAX_VALUE_BYTES = 60_000;
/** Seconds in a UTC day: the rows of a chunk, and of a batch, share one. */
export const DAY_SECONDS = 86_400;

/** Rows of one partition and one UTC day, or rows returned from a batch. */
export interface Chunk {
  /** Kafka topic of every row. */
  topic: string;
  /** Source partition of every row, unless `partitions` is set. */
  partition: number;
  /** UTC day of every row (days since the epoch). */
  day: number;
  /** Source offset of each row. */
  offsets: BigInt64Array;
  /** Source partition per row, for rows returned from a batch (they mix partitions). */
  partitions?: Int32Array | undefined;
  /** The rows, RowBinary. */
  rows: Uint8Array;
  /** When the rows were queued (ms). */
  enqueuedAt: number;
  /** Set when the chunk holds one group of a bisected poison batch. */
  isolated?: string | undefined;
  /** Id of the batch a returned chunk came from. */
  from?: bigint | undefined;
}

/** Rows with their sources, as stored in one KV value of a sealed batch. */
export interface RowPart {
  /** The rows, RowBinary. */
  rows: Uint8Array;
  /** Source offset of each row. */
  offsets: BigInt64Array;
  /** Source partition of each row. */
  partitions: Int32Array;
}

/** Splits rows and their sources into parts that each fit one KV value. */
export function splitRows(
  rows: readonly HttpLogRow[],
  offsets: BigInt64Array,
  partitions: Int32Array,
): RowPart[] {
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
