/**
 * ClickHouse `Native` format encoding of `http_log` rows: one block, column
 * after column, which is what lets a general-purpose compressor find the
 * repetition inside each column.
 *
 * @module
 */

import type { HttpLogRow } from "../../record/types.ts";
import { ByteWriter } from "../../binary/byte_writer.ts";

/** One column of the INSERT: its name in `http_log` and the type sent on the wire. */
export interface NativeColumn {
  /** Column name in table `http_log`. */
  readonly name: string;
  /** ClickHouse type named in the Native block header. */
  readonly type: string;
}

/**
 * The columns of a packed block, in wire order, with exactly the types of
 * table `http_log`: ClickHouse 18.16 converts no type on Native input (a
 * `String` block for a `LowCardinality(String)` column fails with "Bad cast",
 * whatever `low_cardinality_allow_in_native_format` says).
 *
 * @example
 * ```ts
 * import { NATIVE_COLUMNS } from "./_native_format.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(NATIVE_COLUMNS.at(-1)?.name, "batch_id");
 * ```
 */
export const NATIVE_COLUMNS: readonly NativeColumn[] = [
  { name: "timestamp", type: "DateTime" },
  { name: "resource_id", type: "UInt64" },
  { name: "bytes_sent", type: "UInt64" },
  { name: "request_time_milli", type: "UInt64" },
  { name: "response_status", type: "UInt16" },
  { name: "cache_status", type: "LowCardinality(String)" },
  { name: "method", type: "LowCardinality(String)" },
  { name: "remote_addr", type: "String" },
  { name: "url", type: "String" },
  { name: "batch_id", type: "UInt64" },
];

/** Options of {@linkcode encodeNative}. */
export interface EncodeNativeOptions {
  /** Value of column `batch_id` in every row. Required. */
  batchId: bigint;
  /**
   * A permutation of the indexes of `rows`: row `i` of the block is
   * `rows[order[i]]`. Default: the rows in their given order.
   */
  order?: ArrayLike<number>;
}

/**
 * Encodes `rows` as one Native block with the columns of
 * {@linkcode NATIVE_COLUMNS}. Rows must already be validated: values outside
 * their column type wrap silently.
 *
 * @example Encode two rows
 * ```ts
 * import { encodeNative } from "./_native_format.ts";
 * import assert from "node:assert/strict";
 *
 * const row = {
 *   timestamp: 1_700_000_000,
 *   resourceId: 1n,
 *   bytesSent: 100n,
 *   requestTimeMilli: 5n,
 *   responseStatus: 200,
 *   cacheStatus: "HIT",
 *   method: "GET",
 *   remoteAddr: "1.2.3.X",
 *   url: "/a",
 * };
 * const block = encodeNative([row, { ...row, url: "/b" }], { batchId: 7n, order: [1, 0] });
 * assert.deepEqual([...block.subarray(0, 2)], [10, 2]); // 10 columns, 2 rows
 * ```
 */
export function encodeNative(
  rows: readonly HttpLogRow[],
  options: EncodeNativeOptions,
): Uint8Array {
  const n = rows.length;
  const rank = new Uint32Array(n);
  for (let i = 0; i < n; i++) rank[options.order === undefined ? i : options.order[i]!] = i;

  const widths = [4, 8, 8, 8, 2];
  const offsets: number[] = [];
  let end = 1 + ByteWriter.varUIntSize(n);
  for (let c = 0; c < widths.length; c++) {
    offsets.push(end + headerBytes(c));
    end = offsets[c]! + widths[c]! * n;
  }
  const fixedEnd = end;
  // ASCII text takes one byte per UTF-16 unit, so only non-ASCII text can
  // make the buffer grow; the slack covers the worst case of the last string.
  let textUnits = 0, longest = 0;
  for (let i = 0; i < n; i++) {
    const row = rows[i]!;
    textUnits += row.cacheStatus.length + row.method.length + row.remoteAddr.length +
      row.url.length;
    longest = Math.max(longest, row.url.length, row.remoteAddr.length);
  }
  const w = new ByteWriter({ capacity: fixedEnd + textUnits + 40 * n + 3 * longest + 512 });
  const view = w.view;
  const cache = new LowCardinalityColumn(n);
  const method = new LowCardinalityColumn(n);
  const remoteAddrs = new Array<string>(n);
  const urls = new Array<string>(n);
  const tsAt = offsets[0]!, ridAt = offsets[1]!, bytesAt = offsets[2]!, timeAt = offsets[3]!;
  const statusAt = offsets[4]!;
  // One pass over the rows in input order, where they sit in memory, writing
  // each value to its sorted position: reading them in sorted order instead
  // missed the cache on every field and made encoding twice as slow.
  for (let i = 0; i < n; i++) {
    const row = rows[i]!;
    const r = rank[i]!;
    view.setUint32(tsAt + 4 * r, row.timestamp, true);
    view.setBigUint64(ridAt + 8 * r, row.resourceId, true);
    view.setBigUint64(bytesAt + 8 * r, row.bytesSent, true);
    view.setBigUint64(timeAt + 8 * r, row.requestTimeMilli, true);
    view.setUint16(statusAt + 2 * r, row.responseStatus, true);
    cache.set(r, row.cacheStatus);
    method.set(r, row.method);
    remoteAddrs[r] = row.remoteAddr;
    urls[r] = row.url;
  }

  w.varUInt(NATIVE_COLUMNS.length);
  w.varUInt(n);
  for (let c = 0; c < widths.length; c++) {
    header(w, c);
    w.pos += widths[c]! * n;
  }
  header(w, 5);
  cache.write(w);
  header(w, 6);
  method.write(w);
  header(w, 7);
  for (let i = 0; i < n; i++) w.string(remoteAddrs[i]!);
  header(w, 8);
  for (let i = 0; i < n; i++) w.string(urls[i]!);
  header(w, 9);
  w.reserve(8 * n);
  for (let i = 0; i < n; i++, w.pos += 8) w.view.setBigUint64(w.pos, options.batchId, true);
  return w.buf.subarray(0, w.pos);
}

/** Bytes of the name and type of column `c` in the block header. */
function headerBytes(c: number): number {
  const { name, type } = NATIVE_COLUMNS[c]!;
  return 1 + name.length + 1 + type.length;
}

function header(w: ByteWriter, c: number): void {
  const column = NATIVE_COLUMNS[c]!;
  w.string(column.name);
  w.string(column.type);
}

/** Version of the LowCardinality key stream: dictionaries shared between granules, plus additional keys. */
const LC_KEYS_VERSION = 1n;
/** Index stream flags: keys travel with the granule ("additional keys"), none from a global dictionary. */
const LC_HAS_ADDITIONAL_KEYS = 1n << 9n;
const LC_NEED_UPDATE_DICTIONARY = 1n << 10n;

/**
 * A `LowCardinality(String)` column as the Native format lays it out: key
 * stream version, index type and flags, the distinct values in order of first
 * appearance in the input, then one index per row in the narrowest unsigned
 * width.
 */
export class LowCardinalityColumn {
  readonly #ids = new Map<string, number>();
  readonly #keys: string[] = [];
  readonly #indexes: Uint32Array;

  constructor(n: number) {
    this.#indexes = new Uint32Array(n);
  }

  set(position: number, value: string): void {
    let id = this.#ids.get(value);
    if (id === undefined) {
      id = this.#keys.length;
      this.#ids.set(value, id);
      this.#keys.push(value);
    }
    this.#indexes[position] = id;
  }

  write(w: ByteWriter): void {
    const n = this.#indexes.length;
    const keys = this.#keys;
    const width = keys.length <= 0x100 ? 0 : keys.length <= 0x10000 ? 1 : 2;
    w.reserve(24);
    w.view.setBigUint64(w.pos, LC_KEYS_VERSION, true);
    const flags = BigInt(width) | LC_HAS_ADDITIONAL_KEYS | LC_NEED_UPDATE_DICTIONARY;
    w.view.setBigUint64(w.pos + 8, flags, true);
    w.view.setBigUint64(w.pos + 16, BigInt(keys.length), true);
    w.pos += 24;
    for (const key of keys) w.string(key);
    w.reserve(8 + n * 4);
    w.view.setBigUint64(w.pos, BigInt(n), true);
    w.pos += 8;
    const indexes = this.#indexes;
    if (width === 0) {
      w.buf.set(indexes, w.pos);
      w.pos += n;
    } else if (width === 1) {
      for (let i = 0; i < n; i++, w.pos += 2) w.view.setUint16(w.pos, indexes[i]!, true);
    } else {
      for (let i = 0; i < n; i++, w.pos += 4) w.view.setUint32(w.pos, indexes[i]!, true);
    }
  }
}
