/**
 * Decoding of one Kafka message value into an {@linkcode HttpLogRecord}.
 *
 * @module
 */

import { Data, Message, utils } from "capnp-es";
import { HttpLogRecord as CapnpHttpLogRecord } from "../../schema/http_log.ts";
import { DecodeError } from "../errors.ts";
import type { HttpLogRecord } from "./types.ts";
import { decodeUtf8 } from "../binary/decode_utf8.ts";

/** Options of {@linkcode decodeRecord}. */
export interface DecodeOptions {
  /**
   * Largest message accepted, in bytes. A record is a few hundred bytes; the
   * default keeps one record within a single Deno KV value (64 KiB).
   * Default: `65536`.
   */
  maxBytes?: number;
}

const DEFAULT_MAX_BYTES = 65_536;

/** The reference C++ reader's default limit; a record needs one segment. */
const MAX_SEGMENTS = 512;

/** Text fields in pointer-section order of schema/http_log.capnp (`@5` to `@8`). */
const TEXT_FIELDS = ["cacheStatus", "method", "remoteAddr", "url"] as const;
/** Data section words of HttpLogRecord: four UInt64 and a UInt16 (`@0` to `@4`). */
const DATA_WORDS = 5;

/** Pointer kind and list element size codes of the Cap'n Proto encoding spec. */
const STRUCT_POINTER = 0;
const LIST_POINTER = 1;
const BYTE_ELEMENTS = 2;

/**
 * Decodes one plain (unpacked) Cap'n Proto message with stream framing, as the
 * edge writes to Kafka, into an {@linkcode HttpLogRecord}.
 *
 * Throws only {@linkcode DecodeError}, whose `code` names the kind of bad input:
 * `"empty"`, `"too_large"` (over `options.maxBytes`), `"truncated"` (shorter
 * than its framing declares), `"trailing_bytes"` (longer than its framing
 * declares), `"not_capnp"` (framing or pointers are invalid, or a Text field is
 * not NUL-terminated) and `"invalid_utf8"` (a Text field is not valid UTF-8;
 * the message names the field).
 *
 * @example Decode what encodeRecord wrote
 * ```ts
 * import { decodeRecord } from "./decode.ts";
 * import { encodeRecord } from "../../tools/encode_record.ts";
 * import assert from "node:assert/strict";
 *
 * const record = {
 *   timestampEpochMilli: 1_700_000_000_000n,
 *   resourceId: 123_456_789n,
 *   bytesSent: 1024n,
 *   requestTimeMilli: 12n,
 *   responseStatus: 200,
 *   cacheStatus: "HIT",
 *   method: "GET",
 *   remoteAddr: "192.0.2.1",
 *   url: "/static/logo.png",
 * };
 * assert.deepEqual(decodeRecord(encodeRecord(record)), record);
 * assert.throws(() => decodeRecord(new Uint8Array()), { name: "DecodeError", code: "empty" });
 * ```
 */
export function decodeRecord(bytes: Uint8Array, options: DecodeOptions = {}): HttpLogRecord {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  if (bytes.length === 0) {
    throw new DecodeError("Cannot decode message as it is empty: length is 0", { code: "empty" });
  }
  if (bytes.length > maxBytes) {
    throw new DecodeError(
      `Cannot decode message as it exceeds ${maxBytes} bytes: length is ${bytes.length}`,
      { code: "too_large" },
    );
  }
  const segmentCount = checkFraming(bytes);
  try {
    return readRecord(bytes, segmentCount);
  } catch (cause) {
    if (cause instanceof DecodeError) throw cause;
    // capnp-es signals bad pointers with plain Errors, and out-of-segment reads with RangeErrors.
    throw notCapnp("the record", cause);
  }
}

function readRecord(bytes: Uint8Array, segmentCount: number): HttpLogRecord {
  if (segmentCount === 1) {
    const plain = readPlainRecord(bytes);
    if (plain !== null) return plain;
  }
  let message: Message;
  if (segmentCount === 1) {
    // A one-segment message (what every producer writes) skips capnp-es's
    // framing parser and its second copy of the bytes. The copy is made with
    // set(), not slice(): a Node Buffer's slice() is a view of a shared pool.
    const segment = new Uint8Array(bytes.length - 8);
    segment.set(bytes.subarray(8));
    message = new Message(segment.buffer, false, true);
  } else {
    message = new Message(bytes, false);
  }
  const root = message.getRoot(CapnpHttpLogRecord);
  const record: HttpLogRecord = {
    timestampEpochMilli: root.timestampEpochMilli,
    resourceId: root.resourceId,
    bytesSent: root.bytesSent,
    requestTimeMilli: root.requestTimeMilli,
    responseStatus: root.responseStatus,
    cacheStatus: "",
    method: "",
    remoteAddr: "",
    url: "",
  };
  const section = utils.getPointerSection(root);
  const view = new DataView(section.segment.buffer);
  record.cacheStatus = readText(root, view, section.byteOffset, 0);
  record.method = readText(root, view, section.byteOffset, 1);
  record.remoteAddr = readText(root, view, section.byteOffset, 2);
  record.url = readText(root, view, section.byteOffset, 3);
  return record;
}

/**
 * Reads a one-segment message whose root is a struct pointer to sections at
 * least as large as the schema's, inside the segment, and whose Text pointers
 * are null or near byte lists: what every producer writes. capnp-es would read
 * the very same words for it, so the record (or the DecodeError) is the same,
 * without the copy of the segment and the capnp-es objects that took most of
 * the decode time. Returns `null` for any other message, which capnp-es reads.
 */
function readPlainRecord(bytes: Uint8Array): HttpLogRecord | null {
  const view = new DataView(bytes.buffer, bytes.byteOffset + 8, bytes.byteLength - 8);
  const root = view.getInt32(0, true);
  const dataWords = view.getUint16(4, true);
  if ((root & 3) !== STRUCT_POINTER || dataWords < DATA_WORDS) return null;
  if (view.getUint16(6, true) < TEXT_FIELDS.length) return null;
  const data = 8 + (root >> 2) * 8;
  const section = data + dataWords * 8;
  if (data < 0 || section + 8 * TEXT_FIELDS.length > view.byteLength) return null;
  for (let at = section; at < section + 8 * TEXT_FIELDS.length; at += 8) {
    const word0 = view.getInt32(at, true);
    const word1 = view.getUint32(at + 4, true);
    const isNull = word0 === 0 && word1 === 0;
    if (!isNull && ((word0 & 3) !== LIST_POINTER || (word1 & 7) !== BYTE_ELEMENTS)) return null;
  }
  return {
    timestampEpochMilli: view.getBigUint64(data, true),
    resourceId: view.getBigUint64(data + 8, true),
    bytesSent: view.getBigUint64(data + 16, true),
    requestTimeMilli: view.getBigUint64(data + 24, true),
    responseStatus: view.getUint16(data + 32, true),
    cacheStatus: readText(null, view, section, 0),
    method: readText(null, view, section, 1),
    remoteAddr: readText(null, view, section, 2),
    url: readText(null, view, section, 3),
  };
}

/**
 * Checks the stream framing before capnp-es sees it: capnp-es allocates an
 * array as long as the declared segment count before comparing it with the
 * length, and accepts trailing bytes.
 */
function checkFraming(bytes: Uint8Array): number {
  if (bytes.length < 8) {
    throw new DecodeError(
      `Cannot decode message as it is shorter than a framing header (8 bytes): length is ${bytes.length}`,
      { code: "truncated" },
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const segmentCount = view.getUint32(0, true) + 1;
  if (segmentCount > MAX_SEGMENTS) {
    throw new DecodeError(
      `Cannot decode message as its framing declares more than ${MAX_SEGMENTS} segments: count is ${segmentCount}`,
      { code: "not_capnp" },
    );
  }
  const headerBytes = (4 + 4 * segmentCount + 7) & ~7;
  if (bytes.length < headerBytes) {
    throw new DecodeError(
      `Cannot decode message as its framing header for ${segmentCount} segments needs ${headerBytes} bytes: length is ${bytes.length}`,
      { code: "truncated" },
    );
  }
  if (view.getUint32(4, true) === 0) {
    throw new DecodeError(
      "Cannot decode message as its first segment has no room for the root pointer: size is 0 words",
      { code: "not_capnp" },
    );
  }
  let declared = headerBytes;
  for (let i = 0; i < segmentCount; i++) declared += view.getUint32(4 + 4 * i, true) * 8;
  if (declared > bytes.length) {
    throw new DecodeError(
      `Cannot decode message as its framing declares ${declared} bytes: length is ${bytes.length}`,
      { code: "truncated" },
    );
  }
  if (declared < bytes.length) {
    throw new DecodeError(
      `Cannot decode message as it has ${
        bytes.length - declared
      } bytes after the ${declared} its framing declares: length is ${bytes.length}`,
      { code: "trailing_bytes" },
    );
  }
  return segmentCount;
}

/**
 * Reads Text field `index` as raw bytes, because capnp-es's own Text getter
 * decodes with a non-fatal TextDecoder and would turn bad bytes into U+FFFD.
 * A near pointer to a byte list (all a one-segment message holds) is read
 * here directly, as capnp-es spends about 1 µs on each; far pointers and
 * anything unexpected go through capnp-es, which validates them.
 */
function readText(
  root: CapnpHttpLogRecord | null,
  view: DataView,
  sectionOffset: number,
  index: 0 | 1 | 2 | 3,
): string {
  const field = TEXT_FIELDS[index];
  const at = sectionOffset + 8 * index;
  const word0 = view.getInt32(at, true);
  const word1 = view.getUint32(at + 4, true);
  let bytes: Uint8Array;
  if (word0 === 0 && word1 === 0) {
    return "";
  } else if ((word0 & 3) === LIST_POINTER && (word1 & 7) === BYTE_ELEMENTS) {
    const start = at + 8 + (word0 >> 2) * 8;
    const length = word1 >>> 3;
    if (start < 0 || start + length > view.byteLength) {
      throw new DecodeError(
        `Cannot decode field ${field} as its Text lies outside the segment: ${length} bytes at offset ${start} of ${view.byteLength}`,
        { code: "not_capnp" },
      );
    }
    bytes = new Uint8Array(view.buffer, view.byteOffset + start, length);
  } else {
    try {
      // readPlainRecord() passes no root, as it reads only null and near byte-list pointers.
      bytes = Data.fromPointer(utils.getPointer(index, root!)).toUint8Array();
    } catch (cause) {
      throw notCapnp(`field ${field}`, cause);
    }
  }
  const last = bytes.length - 1;
  if (last < 0 || bytes[last] !== 0) {
    throw new DecodeError(
      `Cannot decode field ${field} as its Text is not NUL-terminated: last byte is ${
        last < 0 ? "missing (empty list)" : hexByte(bytes[last]!)
      }`,
      { code: "not_capnp" },
    );
  }
  try {
    // Fatal: a URL with broken UTF-8 must be dead-lettered, not stored with U+FFFD in it.
    return decodeUtf8(bytes.subarray(0, last));
  } catch (cause) {
    // The bytes themselves stay out of the message: they may be a client address.
    const offset = invalidUtf8Offset(bytes.subarray(0, last));
    throw new DecodeError(
      `Cannot decode field ${field} as it is not valid UTF-8: byte ${
        hexByte(bytes[offset]!)
      } at offset ${offset} of ${last} starts a bad sequence`,
      { code: "invalid_utf8", cause },
    );
  }
}

function hexByte(byte: number): string {
  return `0x${byte.toString(16).padStart(2, "0")}`;
}

function notCapnp(what: string, cause: unknown): DecodeError {
  const reason = cause instanceof Error ? cause.message : String(cause);
  return new DecodeError(
    `Cannot decode ${what} as the message is not a valid Cap'n Proto HttpLogRecord: ${reason}`,
    { code: "not_capnp", cause },
  );
}

/**
 * Offset of the first byte where UTF-8 (RFC 3629, as the WHATWG decoder reads
 * it) breaks, or `bytes.length` if none does. Only the error path calls it.
 */
function invalidUtf8Offset(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const lead = bytes[i]!;
    if (lead < 0x80) {
      i++;
      continue;
    }
    let tail: number;
    let low = 0x80;
    let high = 0xbf;
    if (lead >= 0xc2 && lead <= 0xdf) {
      tail = 1;
    } else if (lead >= 0xe0 && lead <= 0xef) {
      tail = 2;
      if (lead === 0xe0) low = 0xa0;
      if (lead === 0xed) high = 0x9f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      tail = 3;
      if (lead === 0xf0) low = 0x90;
      if (lead === 0xf4) high = 0x8f;
    } else {
      return i;
    }
    const second = bytes[i + 1];
    if (second === undefined || second < low || second > high) return i;
    for (let k = 2; k <= tail; k++) {
      const next = bytes[i + k];
      if (next === undefined || next < 0x80 || next > 0xbf) return i;
    }
    i += tail + 1;
  }
  return bytes.length;
}
