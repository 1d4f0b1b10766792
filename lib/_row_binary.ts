/**
 * Compact binary form of {@linkcode HttpLogRow}s, laid out as ClickHouse
 * RowBinary for the nine `http_log` columns (without `batch_id`). The KV queue
 * stores rows this way: it is dense, needs no schema negotiation, and a
 * RowBinary INSERT can send it unchanged.
 *
 * @module
 */
import type { HttpLogRow } from "./types.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

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
  const w = new Writer();
  writeRow(w, row);
  return w.length;
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
    const s = decoder.decode(bytes.subarray(pos, pos + len));
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
