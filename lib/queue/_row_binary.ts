/**
 * Compact binary form of {@linkcode HttpLogRow}s, laid out as ClickHouse
 * RowBinary for the nine `http_log` columns (without `batch_id`). The KV queue
 * stores rows this way: it is dense, needs no schema negotiation, and a
 * RowBinary INSERT can send it unchanged.
 *
 * @module
 */
import type { HttpLogRow } from "../record/types.ts";

const encoder = new TextEncoder();
// ignoreBOM: a leading U+FEFF is part of the value the edge sent, as in decode.ts.
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
/** Longest string decoded without TextDecoder; keeps `apply` far from the engine's argument limit. */
const ASCII_FAST_PATH_MAX = 1024;

/** Growable byte buffer; avoids a second pass to size the output. */
class Writer {
  #buf = new Uint8Array(4096);
  #view = new DataView(this.#buf.buffer);
  length = 0;

  #ensure(extra: number): void {
    if (this.length + extra <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < this.length + extra) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.#buf.subarray(0, this.length));
    this.#buf = next;
    this.#view = new DataView(next.buffer);
  }

  u16(v: number): void {
    this.#ensure(2);
    this.#view.setUint16(this.length, v, true);
    this.length += 2;
  }

  u32(v: number): void {
    this.#ensure(4);
    this.#view.setUint32(this.length, v, true);
    this.length += 4;
  }

  u64(v: bigint): void {
    this.#ensure(8);
    this.#view.setBigUint64(this.length, v, true);
    this.length += 8;
  }

  string(s: string): void {
    // UTF-8 needs at most 3 bytes per UTF-16 code unit; varint at most 5 bytes.
    this.#ensure(s.length * 3 + 5);
    if (s.length < 0x4000 && this.#ascii(s)) return;
    const start = this.length + 5;
    const { written } = encoder.encodeInto(s, this.#buf.subarray(start));
    let n = written;
    let pos = this.length;
    const lenBytes: number[] = [];
    do {
      let b = n & 0x7f;
      n >>>= 7;
      if (n !== 0) b |= 0x80;
      lenBytes.push(b);
    } while (n !== 0);
    for (const b of lenBytes) this.#buf[pos++] = b;
    this.#buf.copyWithin(pos, start, start + written);
    this.length = pos + written;
  }

  /**
   * Writes `s` if it is ASCII, which nearly every value is, and says whether it
   * did: copying the code units beats a TextEncoder call and the shift after
   * it. Anything it wrote for a non-ASCII `s` lies past `length` and is
   * overwritten.
   */
  #ascii(s: string): boolean {
    const n = s.length;
    const buf = this.#buf;
    const at = this.length + (n < 0x80 ? 1 : 2);
    for (let i = 0; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) return false;
      buf[at + i] = c;
    }
    if (n < 0x80) {
      buf[this.length] = n;
    } else {
      buf[this.length] = (n & 0x7f) | 0x80;
      buf[this.length + 1] = n >>> 7;
    }
    this.length = at + n;
    return true;
  }

  bytes(): Uint8Array {
    return this.#buf.slice(0, this.length);
  }
}

/** Encodes `rows` as RowBinary, one row after another. */
export function encodeRows(rows: readonly HttpLogRow[]): Uint8Array {
  const w = new Writer();
  for (const row of rows) writeRow(w, row);
  return w.bytes();
}

/** Byte length `row` takes in RowBinary. */
export function encodedRowLength(row: HttpLogRow): number {
  // Counted rather than encoded: the queue sizes every row up to three times,
  // and encoding into a fresh 4 KiB Writer cost more than encoding the row.
  return 30 + stringLength(row.cacheStatus) + stringLength(row.method) +
    stringLength(row.remoteAddr) + stringLength(row.url);
}

/** Bytes of `s` as {@linkcode Writer.string} writes it: LEB128 length, then UTF-8. */
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

function writeRow(w: Writer, row: HttpLogRow): void {
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
    const s = decodeUtf8(bytes, pos, pos + len);
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

/**
 * Fatal UTF-8 decoding of `bytes[start, end)`. A seal decodes four strings per
 * candidate row, nearly all short ASCII, for which building the string in JS
 * is about three times faster than a TextDecoder call. Other text (including a
 * leading byte-order mark, which the decoder drops) still goes to TextDecoder.
 */
function decodeUtf8(bytes: Uint8Array, start: number, end: number): string {
  if (end - start <= ASCII_FAST_PATH_MAX) {
    let i = start;
    while (i < end && bytes[i]! < 0x80) i++;
    if (i === end) {
      return String.fromCharCode.apply(null, bytes.subarray(start, end) as unknown as number[]);
    }
  }
  return decoder.decode(bytes.subarray(start, end));
}
