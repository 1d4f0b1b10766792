/**
 * Turns a decoded {@linkcode HttpLogRecord} into a row that is safe to store,
 * or into a rejection to dead-letter. The decision for every case is in
 * docs/validation.md.
 *
 * @module
 */
import { anonymizeAddress } from "./anonymize.ts";
import { AnonymizerError, type ErrorCode } from "../errors.ts";
import type { HttpLogRecord, HttpLogRow } from "./types.ts";
import { CACHE_STATUSES } from "./vocabulary.ts";

/** Options of {@linkcode toRow}. */
export interface ToRowOptions {
  /** Current time, milliseconds since the Unix epoch. Default: `Date.now()`. */
  now?: number;
  /**
   * How far ahead of `now` a timestamp may be before the record is rejected,
   * in milliseconds. Default: `86_400_000` (1 day).
   */
  maxFutureSkewMs?: number;
  /**
   * How far behind `now` a timestamp may be before the record is rejected, in
   * milliseconds. Keeps the days one batch touches (one ClickHouse partition
   * each) under `max_partitions_per_insert_block`. Default: `2_592_000_000` (30 days).
   */
  maxPastAgeMs?: number;
  /**
   * Longest stored URL in UTF-8 bytes, the truncation marker included; at
   * least 64. Default: `8192`.
   */
  maxUrlBytes?: number;
}

/**
 * What {@linkcode toRow} made of a record: a row to store, or the reason to
 * dead-letter it.
 */
export type RowResult =
  | {
    ok: true;
    /** The row to insert; `remoteAddr` is masked. */
    row: HttpLogRow;
  }
  | {
    ok: false;
    /** Machine-readable reason, e.g. `"status_out_of_range"`. */
    code: ErrorCode;
    /** One line naming the field and the rule; holds no address or payload text. */
    message: string;
  };

/**
 * Appended to a URL cut to `maxUrlBytes`, so a stored URL shows it is
 * incomplete. Brackets are not valid unencoded in a request path.
 *
 * @example
 * ```ts
 * import { toRow, URL_TRUNCATED_MARKER } from "./validate.ts";
 * import assert from "node:assert/strict";
 *
 * const result = toRow({
 *   timestampEpochMilli: 1_700_000_000_000n,
 *   resourceId: 1n,
 *   bytesSent: 0n,
 *   requestTimeMilli: 0n,
 *   responseStatus: 200,
 *   cacheStatus: "",
 *   method: "GET",
 *   remoteAddr: "1.2.3.4",
 *   url: "/" + "a".repeat(100_000),
 * }, { now: 1_700_000_000_000 });
 * assert.ok(result.ok);
 * assert.ok(result.row.url.endsWith(URL_TRUNCATED_MARKER));
 * assert.equal(result.row.url.length, 8192);
 * ```
 */
export const URL_TRUNCATED_MARKER = "[truncated]";

const DEFAULT_MAX_FUTURE_SKEW_MS = 86_400_000;
const DEFAULT_MAX_PAST_AGE_MS = 2_592_000_000;
const DEFAULT_MAX_URL_BYTES = 8192;
const MIN_MAX_URL_BYTES = 64;

// ClickHouse DateTime ends at 2106-02-07 06:28:15 UTC; any millisecond of that
// second still floors into range.
const MAX_TIMESTAMP_MS = 4_294_967_295_999n;
const MAX_UINT64 = 0xffff_ffff_ffff_ffffn;
const UINT64_FIELDS = [
  ["resourceId", "resource_id_out_of_range"],
  ["bytesSent", "bytes_sent_out_of_range"],
  ["requestTimeMilli", "request_time_out_of_range"],
] as const;

const METHODS: ReadonlySet<string> = new Set([
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "DELETE",
  "PATCH",
  "OPTIONS",
  "CONNECT",
  "TRACE",
]);
// nginx's $upstream_cache_status values; empty means no cache was involved.
const KNOWN_CACHE_STATUSES: ReadonlySet<string> = new Set(["", ...CACHE_STATUSES]);
// Neither set has a member longer than this, so longer input skips case folding.
const MAX_KNOWN_TOKEN_LENGTH = 11;

const encoder = new TextEncoder();
const MARKER_BYTES = encoder.encode(URL_TRUNCATED_MARKER).length;

/**
 * Validates, normalizes and anonymizes one record.
 *
 * Rejects (for the dead-letter queue) what cannot be stored truthfully: a
 * timestamp that is 0, outside ClickHouse `DateTime`, more than
 * `maxFutureSkewMs` ahead of or `maxPastAgeMs` behind `now`; a status outside
 * 100–599; a number outside `UInt64`. Stores everything else, normalized:
 * unknown methods and cache statuses become `"OTHER"` (an empty method
 * `"UNKNOWN"`) so the LowCardinality columns stay bounded, URLs are cut to
 * `maxUrlBytes` and have control characters percent-encoded, and an
 * unparsable address is stored as `INVALID_ADDRESS` (see {@linkcode anonymizeAddress}).
 *
 * @param record A decoded record; its `remoteAddr` never reaches the result.
 * @param options Clock and limits.
 * @returns The row, or the rejection.
 * @throws {AnonymizerError} `invalid_option` if an option is out of range.
 *
 * @example Store a record and reject another
 * ```ts
 * import { toRow } from "./validate.ts";
 * import assert from "node:assert/strict";
 *
 * const record = {
 *   timestampEpochMilli: 1_700_000_000_999n,
 *   resourceId: 7n,
 *   bytesSent: 512n,
 *   requestTimeMilli: 3n,
 *   responseStatus: 200,
 *   cacheStatus: "HIT",
 *   method: "get",
 *   remoteAddr: "1.2.3.4",
 *   url: "/index.html",
 * };
 * const stored = toRow(record, { now: 1_700_000_000_000 });
 * assert.ok(stored.ok);
 * assert.equal(stored.row.timestamp, 1_700_000_000);
 * assert.equal(stored.row.method, "GET");
 * assert.equal(stored.row.remoteAddr, "1.2.3.X");
 *
 * const rejected = toRow({ ...record, responseStatus: 42 }, { now: 1_700_000_000_000 });
 * assert.ok(!rejected.ok);
 * assert.equal(rejected.code, "status_out_of_range");
 * assert.match(rejected.message, /^Cannot store record as responseStatus /);
 * ```
 */
export function toRow(record: HttpLogRecord, options: ToRowOptions = {}): RowResult {
  const now = options.now ?? Date.now();
  const maxFutureSkewMs = options.maxFutureSkewMs ?? DEFAULT_MAX_FUTURE_SKEW_MS;
  const maxPastAgeMs = options.maxPastAgeMs ?? DEFAULT_MAX_PAST_AGE_MS;
  const maxUrlBytes = options.maxUrlBytes ?? DEFAULT_MAX_URL_BYTES;
  checkOption("now", now, Number.isFinite(now), "must be a finite number");
  checkOption("maxFutureSkewMs", maxFutureSkewMs, maxFutureSkewMs >= 0, "must be at least 0");
  checkOption("maxPastAgeMs", maxPastAgeMs, maxPastAgeMs >= 0, "must be at least 0");
  checkOption(
    "maxUrlBytes",
    maxUrlBytes,
    Number.isSafeInteger(maxUrlBytes) && maxUrlBytes >= MIN_MAX_URL_BYTES,
    `must be an integer of at least ${MIN_MAX_URL_BYTES}`,
  );

  const ts = record.timestampEpochMilli;
  if (ts === 0n) {
    return reject("timestamp_zero", "timestampEpochMilli", "must be set", ts);
  }
  if (ts < 0n || ts > MAX_TIMESTAMP_MS) {
    return reject(
      "timestamp_out_of_range",
      "timestampEpochMilli",
      "must fall within ClickHouse DateTime (1970-01-01 to 2106-02-07 06:28:15 UTC)",
      ts,
    );
  }
  // Exact: the range check above keeps ts below 2^53.
  const tsMs = Number(ts);
  if (tsMs > now + maxFutureSkewMs) {
    return reject(
      "timestamp_future",
      "timestampEpochMilli",
      `must be at most ${maxFutureSkewMs} ms ahead of now (${now})`,
      ts,
    );
  }
  if (tsMs < now - maxPastAgeMs) {
    return reject(
      "timestamp_too_old",
      "timestampEpochMilli",
      `must be at most ${maxPastAgeMs} ms behind now (${now})`,
      ts,
    );
  }

  const status = record.responseStatus;
  if (!Number.isInteger(status) || status < 100 || status > 599) {
    return reject("status_out_of_range", "responseStatus", "must be 100–599", status);
  }

  // A value outside UInt64 would be wrapped by the RowBinary writer or refused
  // by ClickHouse for the whole batch, so it is stopped here.
  for (const [field, code] of UINT64_FIELDS) {
    const value = record[field];
    if (value < 0n || value > MAX_UINT64) return reject(code, field, "must fit in UInt64", value);
  }

  return {
    ok: true,
    row: {
      timestamp: Number(ts / 1000n),
      resourceId: record.resourceId,
      bytesSent: record.bytesSent,
      requestTimeMilli: record.requestTimeMilli,
      responseStatus: status,
      cacheStatus: normalizeToken(record.cacheStatus, KNOWN_CACHE_STATUSES),
      method: normalizeToken(record.method, METHODS),
      remoteAddr: anonymizeAddress(record.remoteAddr),
      url: normalizeUrl(record.url, maxUrlBytes),
    },
  };
}

function checkOption(name: string, value: number, ok: boolean, rule: string): void {
  if (ok) return;
  throw new AnonymizerError(
    `Cannot validate record as option ${name} ${rule}: current value is ${value}`,
    { code: "invalid_option" },
  );
}

function reject(
  code: ErrorCode,
  field: string,
  rule: string,
  value: bigint | number,
): RowResult {
  return {
    ok: false,
    code,
    message: `Cannot store record as ${field} ${rule}: current value is ${value}`,
  };
}

/**
 * Maps `value` onto `known` after ASCII upper-casing. Unicode case mapping is
 * avoided on purpose: it turns "poſt" into "POST".
 */
function normalizeToken(value: string, known: ReadonlySet<string>): string {
  if (known.has(value)) return value;
  if (value === "") return "UNKNOWN";
  if (value.length <= MAX_KNOWN_TOKEN_LENGTH) {
    let upper = "";
    for (let i = 0; i < value.length; i++) {
      const c = value.charCodeAt(i);
      upper += String.fromCharCode(c >= 0x61 && c <= 0x7a ? c - 0x20 : c);
    }
    if (known.has(upper)) return upper;
  }
  return "OTHER";
}

function isControl(c: number): boolean {
  return c < 0x20 || (c >= 0x7f && c <= 0x9f);
}

function isSurrogate(c: number): boolean {
  return c >= 0xd800 && c <= 0xdfff;
}

function isHighSurrogate(c: number): boolean {
  return c >= 0xd800 && c <= 0xdbff;
}

function normalizeUrl(url: string, maxBytes: number): string {
  // Every UTF-16 code unit takes at least one UTF-8 byte, so at most maxBytes
  // units can survive; cutting first bounds the work for a huge URL. A pair
  // split by the cut would look like a lone surrogate, so the cut avoids it.
  const cut = url.length > maxBytes;
  let out = cut
    ? url.slice(0, isHighSurrogate(url.charCodeAt(maxBytes - 1)) ? maxBytes - 1 : maxBytes)
    : url;
  let clean = true;
  for (let i = 0; i < out.length; i++) {
    const c = out.charCodeAt(i);
    if (isControl(c) || isSurrogate(c)) {
      clean = false;
      break;
    }
  }
  if (!clean) {
    // Lone surrogates would silently become U+FFFD on the way to UTF-8.
    if (!out.isWellFormed()) out = out.toWellFormed();
    let encoded = "";
    let from = 0;
    for (let i = 0; i < out.length; i++) {
      const c = out.charCodeAt(i);
      if (!isControl(c)) continue;
      encoded += out.slice(from, i) + encodeURIComponent(out[i]!);
      from = i + 1;
    }
    if (from > 0) out = encoded + out.slice(from);
  }
  if (!cut) {
    // A UTF-16 code unit takes at most 3 UTF-8 bytes, which settles most URLs
    // without counting.
    if (out.length * 3 <= maxBytes) return out;
    if (out.length <= maxBytes && utf8Length(out) <= maxBytes) return out;
  }
  const room = new Uint8Array(maxBytes - MARKER_BYTES);
  // encodeInto never splits a character, so `read` ends on a boundary.
  const { read } = encoder.encodeInto(out, room);
  return out.slice(0, read) + URL_TRUNCATED_MARKER;
}

function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (isHighSurrogate(c)) {
      // Well-formed by now, so a high surrogate starts a 4-byte pair.
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}
