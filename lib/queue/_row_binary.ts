/**
 * Compact binary form of {@linkcode HttpLogRow}s, laid out as ClickHouse
 * RowBinary for the nine `http_log` columns (without `batch_id`). The KV queue
 * stores rows this way: it is dense, needs no schema negotiation, and a
 * RowBinary INSERT can send it unchanged.
 *
 * @module
 */
import type { HttpLogRow } from "../record/types.ts";
import { ByteWriter } from "../binary/byte_writer.ts";
import { decodeUtf8 } from "../binary/decode_utf8.ts";

/** Encodes `rows` as RowBinary, one row after another. */
export function encodeRows(rows: readonly HttpLogRow[]): Uint8Array {
  const w = new ByteWriter();
  for (const row of rows) writeRow(w, row);
  return w.bytes();
}

/** Byte length `row` takes in RowBinary. */
export function encodedRowLength(row: HttpLogRow): number {
  // Counted rather than encoded: the queue sizes every row up to three times,
  // and encoding into a fresh 4 KiB ByteWriter cost more than encoding the row.
  return 30 + stringLength(row.cacheStatus) + stringLength(row.method) +
    stringLength(row.remoteAddr) + stringLength(row.url);
}

/** Bytes of `s` as {@linkcode ByteWriter.string} writes it: LEB128 length, then UTF-8. */
function stringLength(s: string): number {
  const n = utf8Length(s);
  return (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x20_0000 ? 3 : n < 0x1000_0000 ? 4 : 5) + n;
}

/** UTF-8 bytes `TextEncoder` writes for `s`, a lone surrogate becoming U+FFFD (3 bytes). */
function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    n += c < 0x800 ? 1 : 2;
    if (c >= 0xd800 && c <= 0xdbff) {
      // A pair is two units and four bytes, so its low half adds nothing.
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
  }
  return n;
}

function writeRow(w: ByteWriter, row: HttpLogRow): void {
  w.u32(row.timestamp);
  w.u64(row.resourceId);
  w.u64(row.bytesSent);
  w.u64(row.requestTimeMilli);
  w.u16(row.responseStatus);
  w.string(row.cacheStatus);
  w.string(row.method);
  w.string(row.remoteAddr);
  w.string(row.url);
}

/**
 * Byte length of each row of RowBinary produced by {@linkcode encodeRows},
 * read without decoding a string. Throws `RangeError` on truncated input.
 */
export function rowLengths(bytes: Uint8Array): number[] {
  const lengths: number[] = [];
  let pos = 0;
  while (pos < bytes.length) {
    const start = pos;
    pos += 30;
    for (let field = 0; field < 4; field++) {
      let len = 0;
      let shift = 0;
      for (;;) {
        const b = bytes[pos++];
        if (b === undefined) {
          throw new RangeError(`RowBinary string length truncated at byte ${pos}`);
        }
        len |= (b & 0x7f) << shift;
        if ((b & 0x80) === 0) break;
        shift += 7;
      }
      pos += len;
    }
    if (pos > bytes.length) throw new RangeError(`RowBinary row truncated at byte ${start}`);
    lengths.push(pos - start);
  }
  return lengths;
}

/** Decodes RowBinary produced by {@linkcode encodeRows}. Throws `RangeError` on truncated input. */
export function decodeRows(bytes: Uint8Array): HttpLogRow[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const rows: HttpLogRow[] = [];
  let pos = 0;
  const string = (): string => {
    let len = 0;
    let shift = 0;
    for (;;) {
      const b = bytes[pos++];
      if (b === undefined) throw new RangeError(`RowBinary string length truncated at byte ${pos}`);
      len |= (b & 0x7f) << shift;
      if ((b & 0x80) === 0) break;
      shift += 7;
    }
    if (pos + len > bytes.length) throw new RangeError(`RowBinary string truncated at byte ${pos}`);
    const s = decodeUtf8(bytes.subarray(pos, pos + len));
    pos += len;
    return s;
  };
  while (pos < bytes.length) {
    const timestamp = view.getUint32(pos, true);
    const resourceId = view.getBigUint64(pos + 4, true);
    const bytesSent = view.getBigUint64(pos + 12, true);
    const requestTimeMilli = view.getBigUint64(pos + 20, true);
    const responseStatus = view.getUint16(pos + 28, true);
    pos += 30;
    rows.push({
      timestamp,
      resourceId,
      bytesSent,
      requestTimeMilli,
      responseStatus,
      cacheStatus: string(),
      method: string(),
      remoteAddr: string(),
      url: string(),
    });
  }
  return rows;
}
