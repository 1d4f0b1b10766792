/**
 * How queued rows are stored: a chunk holds the rows of one partition and one
 * UTC day (or rows returned from a batch) in one KV value, their RowBinary and
 * source offsets compressed together with zstd.
 *
 * A compressed value starts with a format tag byte, so a later format can be
 * told apart, and a value of a format this code does not know is refused with
 * a {@linkcode QueueError} (code `queue_format_unknown`) instead of misread.
 * Chunks and batch row parts written before the tag existed, uncompressed
 * objects with `rows` and `offsets`, are still read, so a queue survives the
 * upgrade; everything written since is tagged.
 *
 * @module
 */
import { constants, zstdCompressSync, zstdDecompressSync } from "node:zlib";
import { QueueError } from "../errors.ts";
import type { HttpLogRow } from "../record/types.ts";
import { encodedRowLength, encodeRows } from "./_row_binary.ts";

/** Largest KV value anonymizer writes; Deno KV allows 64 KiB. */
export const MAX_VALUE_BYTES = 60_000;
/** Seconds in a UTC day: the rows of a chunk, and of a batch, share one. */
export const DAY_SECONDS = 86_400;
/** Format tag of a zstd frame of count, partitions flag, offsets, partitions and RowBinary rows. */
const FORMAT_ZSTD_ROW_BINARY = 1;
/**
 * Uncompressed bytes packed into one value. Stock rows compress to about 0.56
 * of their size, so this fills about 90% of {@linkcode MAX_VALUE_BYTES};
 * rows that compress worse are halved until they fit.
 */
const PACK_TARGET_BYTES = 96_000;
/**
 * Uncompressed bytes packed into one value of rows returned from a batch. Even
 * incompressible, what is left of such a chunk after a seal took its first rows
 * packs into one value, which keeps its place in line.
 */
export const RETURNED_PACK_BYTES = 59_000;
/**
 * zstd level. bench:queue, appends of 300 rows, chunks grown to the cap:
 * level 3 stores stock rows in 73.4 B/row of KV file, the bench taking 10.0
 * CPU-s per million rows; level 5 in 71.5 B/row for 12.5 CPU-s, as every
 * append recompresses the chunk it grows. Levels below 3 store about 8% more.
 */
const ZSTD_LEVEL = 3;
/** Count (u32) and the partitions flag (u8). */
const PAYLOAD_HEADER_BYTES = 5;

/** Rows with the source of each, uncompressed. */
export interface ChunkRows {
  /** The rows, RowBinary. */
  rows: Uint8Array;
  /** Source offset of each row. */
  offsets: BigInt64Array;
  /** Source partition of each row; absent when all come from the chunk's partition. */
  partitions?: Int32Array | undefined;
}

/** What a chunk says about its rows, readable without unpacking them. */
export interface ChunkInfo {
  /** Kafka topic of every row. */
  topic: string;
  /** Source partition of every row; -1 for rows returned from a batch. */
  partition: number;
  /** UTC day of every row (days since the epoch). */
  day: number;
  /** When the rows were queued (ms). */
  enqueuedAt: number;
  /** Set when the chunk holds one group of a bisected poison batch. */
  isolated?: string | undefined;
  /** Id of the batch a returned chunk came from. */
  from?: bigint | undefined;
}

/** A chunk as stored now: {@linkcode ChunkInfo} and its rows packed. */
export interface PackedChunk extends ChunkInfo {
  /** Rows in `data`. */
  count: number;
  /** Offset of the last row, to tell owned chunks without unpacking. */
  lastOffset: bigint;
  /** Format tag byte, then the rows with their sources. */
  data: Uint8Array;
}

/** A chunk as stored before the format tag: uncompressed. Read, never written. */
interface LegacyChunk extends ChunkInfo, ChunkRows {}

/** A chunk value of either format. */
export type StoredChunk = PackedChunk | LegacyChunk;

/** A batch row part as stored: packed, or uncompressed before the format tag (read only). */
export type StoredRowPart = Uint8Array | Required<ChunkRows>;

/** A chunk with the fields of `info`, holding `data` packed from rows from `offsets`. */
export function packedChunk(
  info: ChunkInfo,
  offsets: BigInt64Array,
  data: Uint8Array,
): PackedChunk {
  // Field by field, so a legacy chunk's uncompressed rows are not carried over.
  return {
    topic: info.topic,
    partition: info.partition,
    day: info.day,
    enqueuedAt: info.enqueuedAt,
    isolated: info.isolated,
    from: info.from,
    count: offsets.length,
    lastOffset: offsets[offsets.length - 1]!,
    data,
  };
}

/** Rows in chunk `c`. */
export function chunkCount(c: StoredChunk): number {
  return "data" in c ? c.count : c.offsets.length;
}

/** Offset of the last row of chunk `c`. */
export function chunkLastOffset(c: StoredChunk): bigint {
  return "data" in c ? c.lastOffset : c.offsets[c.offsets.length - 1]!;
}

/** KV bytes the rows of chunk `c` take. */
export function chunkBytes(c: StoredChunk): number {
  return "data" in c ? c.data.byteLength : c.rows.byteLength;
}

/** The rows of chunk `c` with their sources. */
export function unpackChunk(c: StoredChunk): ChunkRows {
  return "data" in c ? unpackRows(c.data) : c;
}

/** The rows of a batch row part, which must carry a partition per row. */
export function unpackRowPart(value: StoredRowPart): Required<ChunkRows> {
  const part = value instanceof Uint8Array ? unpackRows(value) : value;
  if (part.partitions === undefined) {
    throw new QueueError(
      `Cannot read a batch row part as it has no partitions: current value is ` +
        `${part.offsets.length} rows`,
      { code: "batch_corrupt", retriable: false },
    );
  }
  return { rows: part.rows, offsets: part.offsets, partitions: part.partitions };
}

/** Source offsets of rows to pack, and partitions when they mix partitions. */
export interface RowSources {
  /** Source offset of each row. */
  offsets: BigInt64Array;
  /** Source partition of each row. Default: not stored. */
  partitions?: Int32Array | undefined;
}

/** Rows already in RowBinary, with the byte length of each. */
export interface EncodedRows {
  /** The rows, RowBinary. */
  bytes: Uint8Array;
  /** Byte length of each row, in order. */
  lengths: readonly number[];
}

/**
 * Packs `rows` with their sources into values of at most
 * {@linkcode MAX_VALUE_BYTES}, in order, each of about `targetBytes`
 * uncompressed. A value that compressed too little is halved until it fits;
 * a single row too large for one value is packed alone, zstd's few bytes of
 * framing over: callers refuse rows that could not fit 64 KiB.
 */
export function packToFit(
  rows: readonly HttpLogRow[] | EncodedRows,
  sources: RowSources,
  targetBytes: number = PACK_TARGET_BYTES,
): Array<{ data: Uint8Array; offsets: BigInt64Array }> {
  const { bytes, lengths } = "bytes" in rows
    ? rows
    : { bytes: encodeRows(rows), lengths: rows.map(encodedRowLength) };
  // Byte offset of each row, and of the end.
  const starts = new Array<number>(lengths.length + 1);
  starts[0] = 0;
  for (let i = 0; i < lengths.length; i++) starts[i + 1] = starts[i]! + lengths[i]!;
  const out: Array<{ data: Uint8Array; offsets: BigInt64Array }> = [];
  const pack = (from: number, to: number): void => {
    const offsets = sources.offsets.slice(from, to);
    const data = packRows({
      rows: bytes.subarray(starts[from]!, starts[to]!),
      offsets,
      partitions: sources.partitions?.slice(from, to),
    });
    if (data.byteLength <= MAX_VALUE_BYTES || to - from === 1) {
      out.push({ data, offsets });
      return;
    }
    const middle = from + Math.floor((to - from) / 2);
    pack(from, middle);
    pack(middle, to);
  };
  let start = 0;
  let size = 0;
  for (let i = 0; i < lengths.length; i++) {
    // Besides the row, 8 bytes of offset and 4 of partition.
    const n = lengths[i]! + 12;
    if (i > start && size + n > targetBytes) {
      pack(start, i);
      start = i;
      size = 0;
    }
    size += n;
  }
  if (start < lengths.length || out.length === 0) pack(start, lengths.length);
  return out;
}

/**
 * Packs `rows` with their sources into one value, however large: for what is
 * left of a returned chunk, which was packed from at most
 * {@linkcode RETURNED_PACK_BYTES}.
 */
export function packOne(
  rows: readonly HttpLogRow[] | EncodedRows,
  sources: RowSources,
): Uint8Array {
  return packRows({
    offsets: sources.offsets,
    partitions: sources.partitions,
    rows: "bytes" in rows ? rows.bytes : encodeRows(rows),
  });
}

/** Tag byte, then one zstd frame of the rows and their sources (offsets as deltas). */
function packRows(c: ChunkRows): Uint8Array {
  const n = c.offsets.length;
  const partitionBytes = c.partitions === undefined ? 0 : 4 * n;
  const payload = new Uint8Array(PAYLOAD_HEADER_BYTES + 8 * n + partitionBytes + c.rows.byteLength);
  const view = new DataView(payload.buffer);
  view.setUint32(0, n, true);
  view.setUint8(4, c.partitions === undefined ? 0 : 1);
  let pos = PAYLOAD_HEADER_BYTES;
  // Deltas of consecutive offsets repeat, which zstd stores in almost nothing.
  let previous = 0n;
  for (const offset of c.offsets) {
    view.setBigInt64(pos, offset - previous, true);
    previous = offset;
    pos += 8;
  }
  for (const partition of c.partitions ?? []) {
    view.setInt32(pos, partition, true);
    pos += 4;
  }
  payload.set(c.rows, pos);
  const frame = zstdCompressSync(payload, {
    params: { [constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL },
  });
  const out = new Uint8Array(1 + frame.byteLength);
  out[0] = FORMAT_ZSTD_ROW_BINARY;
  out.set(frame, 1);
  return out;
}

function unpackRows(data: Uint8Array): ChunkRows {
  if (data[0] !== FORMAT_ZSTD_ROW_BINARY) {
    throw new QueueError(
      `Cannot read queued rows as their format is unknown to this version: current value is ` +
        `tag ${data[0] ?? "none"}`,
      { code: "queue_format_unknown", retriable: false },
    );
  }
  let payload: Uint8Array;
  try {
    payload = zstdDecompressSync(data.subarray(1));
  } catch (cause) {
    throw new QueueError(
      `Cannot read queued rows as their zstd frame is corrupt: current value is ` +
        `${data.byteLength} bytes`,
      { code: "batch_corrupt", retriable: false, cause },
    );
  }
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const n = view.getUint32(0, true);
  const hasPartitions = view.getUint8(4) === 1;
  let pos = PAYLOAD_HEADER_BYTES;
  const offsets = new BigInt64Array(n);
  let previous = 0n;
  for (let i = 0; i < n; i++, pos += 8) offsets[i] = previous += view.getBigInt64(pos, true);
  let partitions: Int32Array | undefined;
  if (hasPartitions) {
    partitions = new Int32Array(n);
    for (let i = 0; i < n; i++, pos += 4) partitions[i] = view.getInt32(pos, true);
  }
  return { rows: payload.slice(pos), offsets, partitions };
}
