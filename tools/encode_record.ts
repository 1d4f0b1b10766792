/**
 * Encoding of an {@linkcode HttpLogRecord} the way the edge producers write it
 * to Kafka.
 *
 * @module
 */

import { Message } from "capnp-es";
import { HttpLogRecord as CapnpHttpLogRecord } from "../schema/http_log.ts";
import { AnonymizerError } from "../lib/errors.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";

const UINT64_MAX = (1n << 64n) - 1n;
const UINT64_FIELDS = [
  "timestampEpochMilli",
  "resourceId",
  "bytesSent",
  "requestTimeMilli",
] as const;
const TEXT_FIELDS = ["cacheStatus", "method", "remoteAddr", "url"] as const;

/**
 * Encodes `record` as one plain (unpacked) Cap'n Proto message with the
 * standard stream framing (segment table), as `capnp decode` reads it.
 *
 * Throws {@linkcode AnonymizerError} with code `"encode_invalid"` when a value
 * does not fit its field, instead of letting capnp-es wrap it silently: a
 * UInt64 outside [0, 2^64), a `responseStatus` that is not an integer in
 * [0, 65535], or a string with a lone surrogate (not encodable as UTF-8).
 *
 * @example Encode a record and check its framing
 * ```ts
 * import { encodeRecord } from "./encode_record.ts";
 * import assert from "node:assert/strict";
 *
 * const bytes = encodeRecord({
 *   timestampEpochMilli: 1_700_000_000_000n,
 *   resourceId: 123_456_789n,
 *   bytesSent: 1024n,
 *   requestTimeMilli: 12n,
 *   responseStatus: 200,
 *   cacheStatus: "HIT",
 *   method: "GET",
 *   remoteAddr: "192.0.2.1",
 *   url: "/static/logo.png",
 * });
 * const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
 * assert.equal(view.getUint32(0, true), 0); // one segment
 * assert.equal(8 + view.getUint32(4, true) * 8, bytes.length);
 * ```
 */
export function encodeRecord(record: HttpLogRecord): Uint8Array {
  for (const field of UINT64_FIELDS) {
    const value = record[field];
    if (value < 0n || value > UINT64_MAX) {
      throw invalid(field, String(value), "must be a UInt64 in [0, 2^64)");
    }
  }
  const status = record.responseStatus;
  if (!Number.isInteger(status) || status < 0 || status > 0xffff) {
    throw invalid("responseStatus", String(status), "must be a UInt16 in [0, 65535]");
  }
  for (const field of TEXT_FIELDS) {
    if (!record[field].isWellFormed()) {
      // The value is not shown: remoteAddr and url are client data.
      throw invalid(
        field,
        `${record[field].length} UTF-16 units`,
        "must not hold a lone surrogate",
      );
    }
  }
  const message = new Message();
  const root = message.initRoot(CapnpHttpLogRecord);
  root.timestampEpochMilli = record.timestampEpochMilli;
  root.resourceId = record.resourceId;
  root.bytesSent = record.bytesSent;
  root.requestTimeMilli = record.requestTimeMilli;
  root.responseStatus = status;
  root.cacheStatus = record.cacheStatus;
  root.method = record.method;
  root.remoteAddr = record.remoteAddr;
  root.url = record.url;
  return new Uint8Array(message.toArrayBuffer());
}

function invalid(field: string, value: string, rule: string): AnonymizerError {
  return new AnonymizerError(`Cannot encode field ${field} as it ${rule}: value is ${value}`, {
    code: "encode_invalid",
  });
}
