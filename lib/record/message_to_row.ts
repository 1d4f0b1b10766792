/**
 * The pure middle of the pipeline for one Kafka message: decode the Cap'n
 * Proto bytes, validate, and anonymize. The raw client address exists only
 * inside this call; what leaves it is a masked row or a rejection that holds
 * no address.
 *
 * @module
 */
import { decodeRecord } from "./decode.ts";
import { DecodeError } from "../errors.ts";
import type { MessageResult } from "../source/kafka_source.ts";
import { toRow, type ToRowOptions } from "./validate.ts";

/** Options of {@linkcode messageToRow}. */
export interface MessageToRowOptions extends ToRowOptions {
  /** Largest message accepted, bytes. Default: `65536`. */
  maxBytes?: number;
}

/**
 * Turns a Kafka message value into an anonymized row, or says why it must
 * be dead-lettered. Never throws.
 *
 * @example
 * ```ts
 * import { messageToRow } from "./message_to_row.ts";
 * import { encodeRecord } from "../../tools/encode_record.ts";
 * import assert from "node:assert/strict";
 *
 * const bytes = encodeRecord({
 *   timestampEpochMilli: 1_700_000_000_123n, resourceId: 123_456_789n, bytesSent: 10n,
 *   requestTimeMilli: 5n, responseStatus: 200, cacheStatus: "HIT", method: "GET",
 *   remoteAddr: "1.2.3.4", url: "/index.html",
 * });
 * const result = messageToRow(bytes, { now: 1_700_000_000_000 });
 * assert.ok(result.ok);
 * assert.equal(result.row.remoteAddr, "1.2.3.X");
 * assert.equal(result.row.timestamp, 1_700_000_000);
 * assert.deepEqual(messageToRow(null), { ok: false, code: "empty", message: "Cannot decode message as it has no value" });
 * ```
 */
export function messageToRow(
  value: Uint8Array | null,
  options: MessageToRowOptions = {},
): MessageResult {
  if (value === null) {
    return { ok: false, code: "empty", message: "Cannot decode message as it has no value" };
  }
  let record;
  try {
    record = decodeRecord(value, { maxBytes: options.maxBytes });
  } catch (err) {
    if (err instanceof DecodeError) return { ok: false, code: err.code, message: err.message };
    return { ok: false, code: "decode_failed", message: `Cannot decode message: ${String(err)}` };
  }
  const result = toRow(record, options);
  return result.ok
    ? { ok: true, row: result.row }
    : { ok: false, code: result.code, message: result.message };
}
