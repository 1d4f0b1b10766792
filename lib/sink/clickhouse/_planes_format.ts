/**
 * The "planes" layout of a Native block, for servers that run
 * `INSERT ... SELECT ... FROM input(...)` (23.3 and later here): every integer
 * column travels as one `UInt8` column per byte, least significant first, and
 * an IPv4 /24 address as three bytes. A compressor codes a byte column of
 * random bytes at 8 bits a row and a column of zeros at almost nothing, where
 * the same values interleaved in a UInt64 column cost it more than their
 * entropy. The SELECT reassembles the table's values, so the rows that land
 * are the same as with the plain layout.
 *
 * @module
 */

import type { HttpLogRow } from "../../record/types.ts";
import { ByteWriter } from "../../binary/byte_writer.ts";
import { LowCardinalityColumn, NATIVE_COLUMNS, type NativeColumn } from "./_native_format.ts";

/** Integer columns sent as byte planes, with their width in bytes. */
const PLANED: readonly (readonly [name: string, width: number])[] = [
  ["resource_id", 8],
  ["bytes_sent", 8],
  ["request_time_milli", 8],
  ["response_status", 2],
];
/** `remote_addr_kind` of an address sent as three bytes; any other is sent as text. */
const KIND_IPV4 = 1;

/**
 * The columns of a planes block, in wire order: the structure `input()` reads.
 *
 * @example
 * ```ts
 * import { PLANES_COLUMNS } from "./_planes_format.ts";
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(PLANES_COLUMNS[1], { name: "resource_id_0", type: "UInt8" });
 * ```
 */
export const PLANES_COLUMNS: readonly NativeColumn[] = [
  { name: "timestamp", type: "DateTime" },
  ...PLANED.flatMap(([name, width]) =>
    Array.from({ length: width }, (_, j) => ({ name: `${name}_${j}`, type: "UInt8" }))
  ),
  { name: "cache_status", type: "LowCardinality(String)" },
  { name: "method", type: "LowCardinality(String)" },
  { name: "remote_addr_kind", type: "UInt8" },
  { name: "remote_addr_0", type: "UInt8" },
  { name: "remote_addr_1", type: "UInt8" },
  { name: "remote_addr_2", type: "UInt8" },
  { name: "remote_addr_text", type: "String" },
  { name: "url", type: "String" },
  { name: "batch_id", type: "UInt64" },
];

/**
 * The INSERT of a planes block into `target` (`database.table`): a SELECT
 * from `input()` that rebuilds the columns of {@linkcode NATIVE_COLUMNS}.
 *
 * @example
 * ```ts
 * import { planesStatement } from "./_planes_format.ts";
 * import assert from "node:assert/strict";
 *
 * const sql = planesStatement("default.http_log");
 * assert.match(sql, /^INSERT INTO default\.http_log \(timestamp, .*\) SELECT timestamp, /);
 * assert.match(sql, / FROM input\('timestamp DateTime, resource_id_0 UInt8, .*'\) FORMAT Native$/);
 * ```
 */
export function planesStatement(target: string): string {
  const planes = new Map(PLANED);
  const select = NATIVE_COLUMNS.map(({ name, type }) => {
    const width = planes.get(name);
    if (width !== undefined) {
      const parts = Array.from(
        { length: width },
        (_, j) =>
          j === 0 ? `to${type}(${name}_0)` : `bitShiftLeft(to${type}(${name}_${j}), ${8 * j})`,
      );
      return `to${type}(${parts.join(" + ")})`;
    }
    if (name === "remote_addr") {
      const bytes = [0, 1, 2].map((j) => `toString(remote_addr_${j})`).join(", '.', ");
      return `if(remote_addr_kind = ${KIND_IPV4}, concat(${bytes}, '.X'), remote_addr_text)`;
    }
    return name;
  });
  const structure = PLANES_COLUMNS.map((c) => `${c.name} ${c.type}`).join(", ");
  const columns = NATIVE_COLUMNS.map((c) => c.name).join(", ");
  return `INSERT INTO ${target} (${columns}) SELECT ${
    select.join(", ")
  } FROM input('${structure}') FORMAT Native`;
}

/** Options of {@linkcode encodePlanes}. */
export interface EncodePlanesOptions {
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
 * {@linkcode PLANES_COLUMNS}. Rows must already be validated: values outside
 * their column type wrap silently.
 *
 * @example
 * ```ts
 * import { encodePlanes, PLANES_COLUMNS } from "./_planes_format.ts";
 * import assert from "node:assert/strict";
 *
 * const row = {
 *   timestamp: 1_700_000_000,
 *   resourceId: 258n,
 *   bytesSent: 100n,
 *   requestTimeMilli: 5n,
 *   responseStatus: 200,
 *   cacheStatus: "HIT",
 *   method: "GET",
 *   remoteAddr: "1.2.3.X",
 *   url: "/a",
 * };
 * const block = encodePlanes([row], { batchId: 7n });
 * assert.deepEqual([...block.subarray(0, 2)], [PLANES_COLUMNS.length, 1]);
 * ```
 */
export function encodePlanes(
  rows: readonly HttpLogRow[],
  options: EncodePlanesOptions,
): Uint8Array {
  const n = rows.length;
  const rank = new Uint32Array(n);
  for (let i = 0; i < n; i++) rank[options.order === undefined ? i : options.order[i]!] = i;

  const timestamps = new Uint32Array(n);
  // Little-endian values side by side; plane j of a column is every 8th byte from j.
  const wide = [new Uint8Array(8 * n), new Uint8Array(8 * n), new Uint8Array(8 * n)] as const;
  const views = wide.map((w) => new DataView(w.buffer));
  const status = new Uint16Array(n);
  const cache = new LowCardinalityColumn(n);
  const method = new LowCardinalityColumn(n);
  const kind = new Uint8Array(n);
  const address = [new Uint8Array(n), new Uint8Array(n), new Uint8Array(n)] as const;
  const addressText = new Array<string>(n).fill("");
  const urls = new Array<string>(n);
  let textUnits = 0;
  for (let i = 0; i < n; i++) {
    const row = rows[i]!;
    const r = rank[i]!;
    timestamps[r] = row.timestamp;
    views[0]!.setBigUint64(8 * r, row.resourceId, true);
    views[1]!.setBigUint64(8 * r, row.bytesSent, true);
    views[2]!.setBigUint64(8 * r, row.requestTimeMilli, true);
    status[r] = row.responseStatus;
    cache.set(r, row.cacheStatus);
    method.set(r, row.method);
    const prefix = ipv4Prefix(row.remoteAddr);
    if (prefix < 0) {
      addressText[r] = row.remoteAddr;
      textUnits += row.remoteAddr.length;
    } else {
      kind[r] = KIND_IPV4;
      address[0][r] = prefix >>> 16;
      address[1][r] = (prefix >>> 8) & 0xff;
      address[2][r] = prefix & 0xff;
    }
    urls[r] = row.url;
    textUnits += row.url.length + row.cacheStatus.length + row.method.length;
  }

  const w = new ByteWriter({ capacity: 40 * n + textUnits + 2048 });
  let column = 0;
  const header = () => {
    const { name, type } = PLANES_COLUMNS[column++]!;
    w.string(name);
    w.string(type);
  };
  const bytes = (values: Uint8Array) => {
    header();
    w.reserve(n);
    w.buf.set(values, w.pos);
    w.pos += n;
  };
  w.varUInt(PLANES_COLUMNS.length);
  w.varUInt(n);
  header();
  w.reserve(4 * n);
  for (let i = 0; i < n; i++, w.pos += 4) w.view.setUint32(w.pos, timestamps[i]!, true);
  const plane = new Uint8Array(n);
  for (const values of wide) {
    for (let j = 0; j < 8; j++) {
      for (let i = 0; i < n; i++) plane[i] = values[8 * i + j]!;
      bytes(plane);
    }
  }
  for (let i = 0; i < n; i++) plane[i] = status[i]! & 0xff;
  bytes(plane);
  for (let i = 0; i < n; i++) plane[i] = status[i]! >>> 8;
  bytes(plane);
  header();
  cache.write(w);
  header();
  method.write(w);
  bytes(kind);
  for (const values of address) bytes(values);
  header();
  for (let i = 0; i < n; i++) w.string(addressText[i]!);
  header();
  for (let i = 0; i < n; i++) w.string(urls[i]!);
  header();
  w.reserve(8 * n);
  for (let i = 0; i < n; i++, w.pos += 8) w.view.setBigUint64(w.pos, options.batchId, true);
  return w.buf.subarray(0, w.pos);
}

/**
 * `a · 2^16 + b · 2^8 + c` for an address `a.b.c.X` written as the anonymizer
 * writes it (decimal bytes, no leading zeros), so that the SELECT rebuilds the
 * same text; −1 for any other string.
 */
function ipv4Prefix(s: string): number {
  if (s.length < 7 || s.length > 13 || !s.endsWith(".X")) return -1;
  let value = 0, part = 0, digits = 0, dots = 0;
  for (let i = 0; i < s.length - 2; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2e) {
      if (digits === 0 || dots === 2) return -1;
      value = value * 256 + part;
      dots++;
      part = 0;
      digits = 0;
    } else {
      if (c < 0x30 || c > 0x39 || (digits === 1 && part === 0)) return -1;
      part = part * 10 + c - 0x30;
      digits++;
      if (part > 255) return -1;
    }
  }
  return digits === 0 || dots !== 2 ? -1 : value * 256 + part;
}
