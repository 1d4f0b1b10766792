/**
 * The two compressed envelopes a packed body travels in: a plain zstd frame
 * (HTTP `Content-Encoding: zstd`) and a ClickHouse native compressed block
 * (URL parameter `decompress=1`), which ClickHouse 18.16 also reads.
 *
 * @module
 */

import { constants, zstdCompressSync } from "node:zlib";
import { cityHash128 } from "./_cityhash128.ts";

/** Method byte of a ClickHouse compressed block holding a zstd frame. */
const METHOD_ZSTD = 0x90;
/** Method byte, compressed size and uncompressed size. */
const BLOCK_HEADER_BYTES = 9;
const CHECKSUM_BYTES = 16;

/**
 * Bytes a ClickHouse compressed block adds around its zstd frame.
 *
 * @example
 * ```ts
 * import { CLICKHOUSE_BLOCK_OVERHEAD } from "./_compress.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(CLICKHOUSE_BLOCK_OVERHEAD, 25);
 * ```
 */
export const CLICKHOUSE_BLOCK_OVERHEAD = CHECKSUM_BYTES + BLOCK_HEADER_BYTES;

/**
 * Shortest match zstd looks for. Its default at levels 13–19 is 3, which on
 * Native blocks buys short matches in random integer bytes that cost more
 * than the literals they replace: 6 made stock bodies 1–2% smaller.
 */
const MIN_MATCH = 6;
/**
 * From this level on, zstd's match-finder tables get 2^19 entries instead of
 * 2^22: a 1 MiB body's block is about 2.5 MB. On stock planes blocks at level
 * 16, 2^20 took 30% less CPU than 2^22 for bodies 0.1% larger; 2^19 took
 * another 28% less CPU and 4 MB less memory per compression for 0.2% fewer
 * rows per request (docs/wire.md).
 */
const SMALL_TABLES_FROM_LEVEL = 16;
const TABLE_LOG = 19;

/**
 * Compresses `data` into one zstd frame with a content checksum and matches of
 * at least 6 bytes; from level 16 on with 2^19-entry match tables.
 * Single-threaded, so the same input and level always give the same bytes
 * with the same zstd library. The frame spans a buffer of its own.
 *
 * @example
 * ```ts
 * import { zstdFrame } from "./_compress.ts";
 * import { zstdDecompressSync } from "node:zlib";
 * import assert from "node:assert/strict";
 *
 * const data = new TextEncoder().encode("GET GET GET GET");
 * assert.deepEqual(new Uint8Array(zstdDecompressSync(zstdFrame(data, 3))), data);
 * ```
 */
export function zstdFrame(data: Uint8Array, level: number): Uint8Array<ArrayBuffer> {
  // The content checksum lets the server refuse a frame corrupted on the way
  // (code 561): without it a flipped byte can decode to other valid rows.
  const params: Record<number, number> = {
    [constants.ZSTD_c_compressionLevel]: level,
    [constants.ZSTD_c_minMatch]: MIN_MATCH,
    [constants.ZSTD_c_checksumFlag]: 1,
  };
  if (level >= SMALL_TABLES_FROM_LEVEL) {
    params[constants.ZSTD_c_hashLog] = TABLE_LOG;
    params[constants.ZSTD_c_chainLog] = TABLE_LOG;
  }
  const out = zstdCompressSync(data, { params });
  // A small Buffer may sit in a pool shared with other Buffers; the frame gets
  // a buffer of its own, so a caller may release it (binary/_release.ts).
  if (out.byteOffset !== 0 || out.byteLength !== out.buffer.byteLength) return new Uint8Array(out);
  // A Buffer from node:zlib never sits on a SharedArrayBuffer.
  return new Uint8Array(out.buffer as ArrayBuffer);
}

/**
 * Wraps a zstd frame of `uncompressedSize` bytes into a ClickHouse compressed
 * block: CityHash128 checksum, method byte 0x90, UInt32 size of the block
 * without checksum, UInt32 uncompressed size, frame.
 *
 * @example
 * ```ts
 * import { clickHouseBlock, zstdFrame } from "./_compress.ts";
 * import assert from "node:assert/strict";
 *
 * const data = new TextEncoder().encode("HIT HIT HIT");
 * const frame = zstdFrame(data, 3);
 * const block = clickHouseBlock(frame, data.length);
 * assert.equal(block[16], 0x90);
 * assert.equal(block.length, frame.length + 25);
 * ```
 */
export function clickHouseBlock(
  frame: Uint8Array,
  uncompressedSize: number,
): Uint8Array<ArrayBuffer> {
  const block = new Uint8Array(CLICKHOUSE_BLOCK_OVERHEAD + frame.length);
  const view = new DataView(block.buffer);
  block[CHECKSUM_BYTES] = METHOD_ZSTD;
  view.setUint32(CHECKSUM_BYTES + 1, BLOCK_HEADER_BYTES + frame.length, true);
  view.setUint32(CHECKSUM_BYTES + 5, uncompressedSize, true);
  block.set(frame, CLICKHOUSE_BLOCK_OVERHEAD);
  block.set(cityHash128(block.subarray(CHECKSUM_BYTES)), 0);
  return block;
}
