/**
 * ClickHouse `Native` format encoding of `http_log` rows: one block, column
 * after column, which is what lets a general-purpose compressor find the
 * repetition inside each column.
 *
 * @module
 */

import type { HttpLogRow } from "./types.ts";

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
  /** Indexes into `rows` to encode, in this order. Default: every row, in order. */
  order?: ArrayLike<number>;
}

const encoder = new TextEncoder();

/** Growable output buffer; strings are the only part whose size is not known up front. */
class Writer {
  buf: Uint8Array;
  view: DataView;
  pos = 0;

  constructor(capacity: number) {
    this.buf = new Uint8Array(capacity);
    this.view = new DataView(this.buf.buffer);
  }

  reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n));
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  varUInt(n: number): void {
    this.reserve(10);
    while (n >= 0x80) {
      this.buf[this.pos++] = (n & 0x7f) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.pos++] = n;
  }

  string(s: string): void {
    // n UTF-16 units encode to between n and 3n bytes. Leave room for the
    // length prefix of the ASCII case and shift the bytes only when non-ASCII
    // text needs a longer prefix.
    this.reserve(s.length * 3 + 10);
    const prefix = varUIntSize(s.length);
    const { written } = encoder.encodeInto(s, this.buf.subarray(this.pos + prefix));
    const need = varUIntSize(written);
    if (need !== prefix) {
      this.buf.copyWithin(this.pos + need, this.pos + prefix, this.pos + prefix + written);
    }
    this.varUInt(written);
    this.pos += written;
  }
}

function varUIntSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

/**
 * Encodes `rows` (or the ones `options.order` picks) as one Native block with
 * the columns of {@linkcode NATIVE_COLUMNS}. Rows must already be validated:
 * values outside their column type wrap silently.
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
 * const block = encodeNative([row, row], { batchId: 7n });
 * assert.deepEqual([...block.subarray(0, 2)], [10, 2]); // 10 columns, 2 rows
 * ```
 */
export function encodeNative(
  rows: readonly HttpLogRow[],
  options: EncodeNativeOptions,
): Uint8Array {
  const order = options.order ?? Array.from(rows.keys());
  const n = order.length;
  const w = new Writer(n * 128 + 512);
  w.varUInt(NATIVE_COLUMNS.length);
  w.varUInt(n);
  const header = (i: number) => {
    const column = NATIVE_COLUMNS[i]!;
    w.string(column.name);
    w.string(column.type);
  };

  header(0);
  w.reserve(4 * n);
  for (let i = 0; i < n; i++, w.pos += 4) w.view.setUint32(w.pos, rows[order[i]!]!.timestamp, true);
  const uint64 = (column: number, get: (row: HttpLogRow) => bigint) => {
    header(column);
    w.reserve(8 * n);
    for (let i = 0; i < n; i++, w.pos += 8) w.view.setBigUint64(w.pos, get(rows[order[i]!]!), true);
  };
  uint64(1, (r) => r.resourceId);
  uint64(2, (r) => r.bytesSent);
  uint64(3, (r) => r.requestTimeMilli);
  header(4);
  w.reserve(2 * n);
  for (let i = 0; i < n; i++, w.pos += 2) {
    w.view.setUint16(w.pos, rows[order[i]!]!.responseStatus, true);
  }
  header(5);
  lowCardinality(w, rows, order, (r) => r.cacheStatus);
  header(6);
  lowCardinality(w, rows, order, (r) => r.method);
  header(7);
  for (let i = 0; i < n; i++) w.string(rows[order[i]!]!.remoteAddr);
  header(8);
  for (let i = 0; i < n; i++) w.string(rows[order[i]!]!.url);
  header(9);
  w.reserve(8 * n);
  for (let i = 0; i < n; i++, w.pos += 8) w.view.setBigUint64(w.pos, options.batchId, true);
  return w.buf.subarray(0, w.pos);
}

/** Version of the LowCardinality key stream: dictionaries shared between granules, plus additional keys. */
const LC_KEYS_VERSION = 1n;
/** Index stream flags: keys travel with the granule ("additional keys"), none from a global dictionary. */
const LC_HAS_ADDITIONAL_KEYS = 1n << 9n;
const LC_NEED_UPDATE_DICTIONARY = 1n << 10n;

/**
 * Writes a `LowCardinality(String)` column as the Native format lays it out:
 * key stream version, index type and flags, the distinct values in order of
 * first appearance, then one index per row in the narrowest unsigned width.
 */
function lowCardinality(
  w: Writer,
  rows: readonly HttpLogRow[],
  order: ArrayLike<number>,
  get: (row: HttpLogRow) => string,
): void {
  const n = order.length;
  const ids = new Map<string, number>();
  const keys: string[] = [];
  const indexes = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const s = get(rows[order[i]!]!);
    let id = ids.get(s);
    if (id === undefined) {
      id = keys.length;
      ids.set(s, id);
      keys.push(s);
    }
    indexes[i] = id;
  }
  const width = keys.length <= 0x100 ? 0 : keys.length <= 0x10000 ? 1 : 2;
  w.reserve(16);
  w.view.setBigUint64(w.pos, LC_KEYS_VERSION, true);
  w.view.setBigUint64(
    w.pos + 8,
    BigInt(width) | LC_HAS_ADDITIONAL_KEYS | LC_NEED_UPDATE_DICTIONARY,
    true,
  );
  w.pos += 16;
  w.reserve(8);
  w.view.setBigUint64(w.pos, BigInt(keys.length), true);
  w.pos += 8;
  for (const key of keys) w.string(key);
  w.reserve(8 + n * 4);
  w.view.setBigUint64(w.pos, BigInt(n), true);
  w.pos += 8;
  if (width === 0) {
    for (let i = 0; i < n; i++) w.buf[w.pos++] = indexes[i]!;
  } else if (width === 1) {
    for (let i = 0; i < n; i++, w.pos += 2) w.view.setUint16(w.pos, indexes[i]!, true);
  } else {
    for (let i = 0; i < n; i++, w.pos += 4) w.view.setUint32(w.pos, indexes[i]!, true);
  }
}
