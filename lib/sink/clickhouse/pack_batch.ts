/**
 * Packs as many `http_log` rows as fit into one INSERT request body of at most
 * `bodyLimit` bytes. ch-proxy accepts one request per 62.5 s of at most 1 MiB,
 * so rows per body is the product's throughput ceiling. docs/wire.md gives the
 * encodings, the rule choosing one per server version and measured figures.
 *
 * @module
 */

import type { PackResult } from "../../queue/kv_queue.ts";
import { AnonymizerError } from "../../errors.ts";
import type { HttpLogRow } from "../../record/types.ts";
import { encodeNative, NATIVE_COLUMNS } from "./_native_format.ts";
import { encodePlanes, planesStatement } from "./_planes_format.ts";
import { CLICKHOUSE_BLOCK_OVERHEAD, clickHouseBlock, zstdFrame } from "./_compress.ts";
import { serverProfile } from "./server_version.ts";
import { releaseBuffer } from "../../binary/_release.ts";

/**
 * How a body is encoded. Each carries one `Native` block, rows sorted by
 * timestamp.
 *
 * - `"native_clickhouse_zstd"`: the table's column types, in one ClickHouse
 *   compressed block (CityHash128 v1.0.2 checksum, method 0x90 ZSTD), sent
 *   with URL parameter `decompress=1`. Works on 18.16 and on current servers.
 * - `"native_zstd"`: the table's column types in one zstd frame, sent with
 *   `Content-Encoding: zstd`. Needs a server that decodes zstd request
 *   bodies; 18.16 refuses it.
 * - `"native_planes_zstd"`: integer columns split into one `UInt8` column per
 *   byte and IPv4 /24 addresses into three bytes, in one zstd frame, sent
 *   with `Content-Encoding: zstd` and an `INSERT ... SELECT ... FROM input()`
 *   that rebuilds the table's values: about 7% smaller than `native_zstd`.
 *   Needs 23.3 or later.
 */
export type WireEncoding = "native_clickhouse_zstd" | "native_zstd" | "native_planes_zstd";

const ENCODINGS: readonly WireEncoding[] = [
  "native_clickhouse_zstd",
  "native_zstd",
  "native_planes_zstd",
];

/** Options of {@linkcode packBatch}. */
export interface PackBatchOptions {
  /** Value of column `batch_id` in every row. Required: there is no default. */
  batchId: bigint;
  /** Largest body, in bytes, the proxy accepts. Default: `1_048_576`. */
  bodyLimit?: number;
  /** Encoding to use. Default: `defaultEncoding(serverVersion)`. */
  encoding?: WireEncoding;
  /**
   * Version of the ClickHouse server, as `SELECT version()` prints it, e.g.
   * `"18.16.1"` or `"24.8.1.2684"`. Only picks the default `encoding`.
   * Default: `"18.16.1"`, whose encoding every supported server reads.
   */
  serverVersion?: string;
  /** Database holding the table. Default: `"default"`. */
  database?: string;
  /** Table to insert into. Default: `"http_log"`. */
  table?: string;
  /**
   * zstd compression level, 1–19, always with matches of at least 6 bytes,
   * for a body that cannot take every offered row at level 1; one that can is
   * sent as that level-1 frame, as a smaller body would carry no more rows.
   * Default: `16` for `"native_planes_zstd"`, the lowest level of zstd's
   * optimal parser, which that layout needs for 20,000 stock rows per MiB;
   * `8` for the others, where level 16 gains only 1.5% more rows for ten
   * times the CPU. Not a service setting: the first-guess ratios below are
   * measured at these levels (docs/wire.md).
   */
  zstdLevel?: number;
}

/**
 * One INSERT request, ready to send: the queue's {@linkcode PackResult},
 * with the ClickHouse encoding and the statement spelled out.
 */
export interface PackedBatch extends PackResult {
  /** Request body. At most `bodyLimit` bytes. */
  body: Uint8Array<ArrayBuffer>;
  /** The encoding of `body`. */
  encoding: WireEncoding;
  /** URL parameters of the request: the INSERT statement as `query`, plus settings. */
  query: { query: string; [setting: string]: string };
}

/** Options of {@linkcode insertStatement}. */
export interface InsertStatementOptions {
  /** Database holding the table. Default: `"default"`. */
  database?: string;
  /** Table to insert into. Default: `"http_log"`. */
  table?: string;
}

const DEFAULT_BODY_LIMIT = 1_048_576;
const DEFAULT_SERVER_VERSION = "18.16.1";
const DEFAULT_ZSTD_LEVEL = { table: 8, planes: 16 };
/** Smallest accepted fill when more rows are offered than fit. */
const MIN_FILL = 0.97;
/**
 * Fill the search aims at. On the stock distribution the first estimate lands
 * within ±0.3% of it, so one compression at the target level usually suffices.
 */
const AIM_FILL = 0.993;
/**
 * Size at the default level over size at level 1 per block layout, measured
 * on the stock distribution; it turns the cheap level-1 probe into a first
 * guess. A wrong value only costs one more compression.
 */
const LEVEL1_TO_DEFAULT = { table: 0.957, planes: 0.945 };
/** The probe takes rows up to this many times the body limit in raw bytes, about what fits. */
const PROBE_RAW_RATIO = 2.5;
/**
 * Rows per body at most: ClickHouse's `max_insert_block_size`, so one body is
 * one insert block. Also keeps the sort key (timestamp · 2^21 + index) exact.
 */
const MAX_ROWS = 1_048_576;
const MAX_SEARCH_STEPS = 8;
const INDEX_SPAN = 2 ** 21;
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * The encoding {@linkcode packBatch} uses by default for a server version:
 * `"native_planes_zstd"` from 23.3 on (the "modern" servers of the schema
 * templates, which decode zstd request bodies and run `input()`),
 * `"native_clickhouse_zstd"` before.
 * Throws {@linkcode AnonymizerError} with code `"invalid_option"` when the
 * version is not 18.16 or later in `major.minor` form.
 *
 * @example
 * ```ts
 * import { defaultEncoding } from "./pack_batch.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(defaultEncoding("18.16.1"), "native_clickhouse_zstd");
 * assert.equal(defaultEncoding("24.8.1.2684"), "native_planes_zstd");
 * ```
 */
export function defaultEncoding(serverVersion: string): WireEncoding {
  let modern: boolean;
  try {
    modern = serverProfile(serverVersion).modern;
  } catch (cause) {
    throw invalidOption("serverVersion", serverVersion, "must be 18.16 or later as major.minor", {
      cause,
    });
  }
  return modern ? "native_planes_zstd" : "native_clickhouse_zstd";
}

/**
 * The encoding to use for a server version when the body of the last batch,
 * in `avoid`, could not be read: the other encoding if the server reads both
 * (23.3 and later), otherwise {@linkcode defaultEncoding}. Without `avoid`,
 * the default.
 *
 * @example
 * ```ts
 * import { readableEncoding } from "./pack_batch.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(readableEncoding("26.9.2.1", "native_planes_zstd"), "native_clickhouse_zstd");
 * assert.equal(readableEncoding("26.9.2.1", "native_clickhouse_zstd"), "native_planes_zstd");
 * assert.equal(readableEncoding("18.16.1", "native_clickhouse_zstd"), "native_clickhouse_zstd");
 * assert.equal(readableEncoding("26.9.2.1"), "native_planes_zstd");
 * ```
 */
export function readableEncoding(serverVersion: string, avoid?: string): WireEncoding {
  const preferred = defaultEncoding(serverVersion);
  if (avoid !== preferred || preferred === "native_clickhouse_zstd") return preferred;
  return "native_clickhouse_zstd";
}

/**
 * The INSERT statement a body in the table's column types pairs with, naming
 * the columns in wire order. Throws {@linkcode AnonymizerError} with code `"invalid_option"`
 * when `database` or `table` is not a plain identifier.
 *
 * @example
 * ```ts
 * import { insertStatement } from "./pack_batch.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(
 *   insertStatement({ database: "logs" }),
 *   "INSERT INTO logs.http_log (timestamp, resource_id, bytes_sent, request_time_milli, " +
 *     "response_status, cache_status, method, remote_addr, url, batch_id) FORMAT Native",
 * );
 * ```
 */
export function insertStatement(options: InsertStatementOptions = {}): string {
  const columns = NATIVE_COLUMNS.map((c) => c.name).join(", ");
  return `INSERT INTO ${insertTarget(options)} (${columns}) FORMAT Native`;
}

/** `database.table`, each checked to be a plain identifier. */
function insertTarget(options: InsertStatementOptions): string {
  const database = options.database ?? "default";
  const table = options.table ?? "http_log";
  if (!IDENTIFIER.test(database)) invalidOptionThrow("database", database, "must be an identifier");
  if (!IDENTIFIER.test(table)) invalidOptionThrow("table", table, "must be an identifier");
  return `${database}.${table}`;
}

/**
 * Packs the longest prefix of `rows` whose body fits `bodyLimit`: when more
 * rows are offered than fit, the body fills at least 97% of the limit. When
 * every offered row fits at zstd level 1, the body is compressed at level 1,
 * otherwise at `zstdLevel`. The
 * rows of a body are sorted by timestamp, which compresses best. The same rows
 * and options always give the same bytes (with the same zstd library), so a
 * batch can be packed again for a retry. Rows must already be validated.
 *
 * Throws {@linkcode AnonymizerError} with code `"invalid_option"` for an
 * invalid option or an empty `rows`, and `"row_too_large"` when not even the
 * first row fits.
 *
 * @example Pack rows for ClickHouse 18.16
 * ```ts
 * import { packBatch } from "./pack_batch.ts";
 * import assert from "node:assert/strict";
 *
 * const rows = [1, 2, 3].map((i) => ({
 *   timestamp: 1_700_000_000 - i,
 *   resourceId: BigInt(i),
 *   bytesSent: 100n,
 *   requestTimeMilli: 5n,
 *   responseStatus: 200,
 *   cacheStatus: "HIT",
 *   method: "GET",
 *   remoteAddr: "1.2.3.X",
 *   url: `/img/${i}.png`,
 * }));
 * const packed = packBatch(rows, { batchId: 7n, serverVersion: "18.16.1" });
 * assert.equal(packed.rowCount, 3);
 * assert.equal(packed.encoding, "native_clickhouse_zstd");
 * assert.equal(packed.query.decompress, "1");
 * assert.ok(packed.query.query.startsWith("INSERT INTO default.http_log ("));
 * assert.deepEqual(packBatch(rows, { batchId: 7n }).body, packed.body);
 * ```
 */
export function packBatch(rows: readonly HttpLogRow[], options: PackBatchOptions): PackedBatch {
  const bodyLimit = options.bodyLimit ?? DEFAULT_BODY_LIMIT;
  const encoding = options.encoding ??
    defaultEncoding(options.serverVersion ?? DEFAULT_SERVER_VERSION);
  const layout = encoding === "native_planes_zstd" ? "planes" : "table";
  const level = options.zstdLevel ?? DEFAULT_ZSTD_LEVEL[layout];
  const planes = layout === "planes";
  const statement = planes ? planesStatement(insertTarget(options)) : insertStatement(options);
  if (!Number.isSafeInteger(bodyLimit) || bodyLimit < 64) {
    invalidOptionThrow("bodyLimit", bodyLimit, "must be an integer of at least 64");
  }
  if (!ENCODINGS.includes(encoding)) {
    invalidOptionThrow("encoding", encoding, `must be one of ${ENCODINGS.join(", ")}`);
  }
  if (!Number.isInteger(level) || level < 1 || level > 19) {
    invalidOptionThrow("zstdLevel", level, "must be an integer in 1–19");
  }
  if (rows.length === 0) invalidOptionThrow("rows", 0, "must hold at least one row");

  const overhead = encoding === "native_clickhouse_zstd" ? CLICKHOUSE_BLOCK_OVERHEAD : 0;
  const frameLimit = bodyLimit - overhead;
  const offered = Math.min(rows.length, MAX_ROWS);
  // Candidates are prefixes of one probe-sized prefix, so its sort serves them
  // all; only a candidate beyond it sorts again.
  let sorted = sortByTimestamp(
    rows,
    rowsWithinRawBytes(rows, offered, PROBE_RAW_RATIO * frameLimit),
  );
  const nativeOf = (n: number) => {
    if (n > sorted.length) sorted = sortByTimestamp(rows, n);
    const encode = planes ? encodePlanes : encodeNative;
    return encode(rows.slice(0, n), { batchId: options.batchId, order: prefixOrder(sorted, n) });
  };

  // The first guess comes from a level-1 probe, about five times cheaper than
  // the target level; every later guess from the last real size.
  const probeRows = sorted.length;
  const probeNative = nativeOf(probeRows);
  const probe = zstdFrame(probeNative, 1);
  // Each try's Native block and each frame not kept are a few MB that V8
  // would hold until its next collection; freed now, a seal's RSS stays that
  // of one try.
  const probeNativeLength = probeNative.length;
  releaseBuffer(probeNative.buffer);
  // Below the proxy's ceiling every queued row fits at level 1, and the target
  // level would only shrink a body no limit asks to shrink, at tens of times
  // the CPU (docs/capacity.md). The level pays only when rows are left over.
  const fitsAtLevel1 = probeRows === offered && probe.length <= frameLimit;
  let best: { n: number; nativeLength: number; frame: Uint8Array<ArrayBuffer> } | undefined =
    fitsAtLevel1 ? { n: offered, nativeLength: probeNativeLength, frame: probe } : undefined;
  let n = Math.min(
    offered,
    Math.max(
      1,
      Math.floor((probeRows * AIM_FILL * frameLimit) / (probe.length * LEVEL1_TO_DEFAULT[layout])),
    ),
  );

  let tooMany = offered + 1;
  for (let step = 0; !fitsAtLevel1 && step < MAX_SEARCH_STEPS; step++) {
    const native = nativeOf(n);
    const frame = zstdFrame(native, level);
    const nativeLength = native.length;
    const frameLength = frame.length;
    releaseBuffer(native.buffer);
    if (frameLength <= frameLimit) {
      if (best !== undefined && best.frame !== probe) releaseBuffer(best.frame.buffer);
      best = { n, nativeLength, frame };
      if (n === offered || frameLength + overhead >= MIN_FILL * bodyLimit) break;
    } else {
      tooMany = n;
      releaseBuffer(frame.buffer);
    }
    const low = best?.n ?? 0;
    if (tooMany - low <= 1) break;
    const next = Math.floor((n * AIM_FILL * frameLimit) / frameLength);
    n = Math.min(tooMany - 1, Math.max(low + 1, next));
  }
  if (best === undefined) {
    throw new AnonymizerError(
      `Cannot pack batch ${options.batchId} as its first row alone exceeds the body limit: limit is ${bodyLimit} bytes`,
      { code: "row_too_large" },
    );
  }

  if (best.frame !== probe) releaseBuffer(probe.buffer);
  if (encoding === "native_clickhouse_zstd") {
    const body = clickHouseBlock(best.frame, best.nativeLength);
    releaseBuffer(best.frame.buffer);
    return {
      body,
      rowCount: best.n,
      encoding,
      query: { query: statement, decompress: "1" },
      headers: {},
    };
  }
  return {
    body: best.frame,
    rowCount: best.n,
    encoding,
    query: { query: statement },
    headers: { "Content-Encoding": "zstd" },
  };
}

/**
 * Sort keys of `rows[0, n)`, ascending: timestamp · 2^21 + index. As timestamp
 * < 2^32 and index < 2^21 the key is an exact double, and a typed-array sort is
 * several times faster than sorting objects with a comparator.
 */
function sortByTimestamp(rows: readonly HttpLogRow[], n: number): Float64Array {
  const keys = new Float64Array(n);
  for (let i = 0; i < n; i++) keys[i] = rows[i]!.timestamp * INDEX_SPAN + i;
  return keys.sort();
}

/** Indexes of `rows[0, n)` by ascending timestamp, ties in input order, from keys of a longer prefix. */
function prefixOrder(sorted: Float64Array, n: number): Uint32Array {
  const order = new Uint32Array(n);
  let j = 0;
  for (let i = 0; j < n; i++) {
    const index = sorted[i]! % INDEX_SPAN;
    if (index < n) order[j++] = index;
  }
  return order;
}

/** How many rows from the front take at most `limit` bytes uncompressed (at least one). */
function rowsWithinRawBytes(rows: readonly HttpLogRow[], offered: number, limit: number): number {
  // Fixed-width columns, two one-byte LowCardinality indexes and two length prefixes.
  const fixed = 4 + 8 + 8 + 8 + 2 + 1 + 1 + 8 + 2;
  let total = 0;
  for (let i = 0; i < offered; i++) {
    const row = rows[i]!;
    total += fixed + row.remoteAddr.length + row.url.length;
    if (total > limit) return Math.max(1, i);
  }
  return offered;
}

function invalidOption(
  name: string,
  value: unknown,
  rule: string,
  options: { cause?: unknown } = {},
): AnonymizerError {
  return new AnonymizerError(
    `Cannot pack a batch as option ${name} ${rule}: current value is ${
      JSON.stringify(String(value))
    }`,
    { code: "invalid_option", cause: options.cause },
  );
}

function invalidOptionThrow(name: string, value: unknown, rule: string): never {
  throw invalidOption(name, value, rule);
}
