/**
 * The growable byte buffer both binary row formats are written with: the
 * RowBinary rows of the KV queue and the Native blocks sent to ClickHouse.
 *
 * @module
 */

const encoder = new TextEncoder();

/** Options of the {@linkcode ByteWriter} constructor. */
export interface ByteWriterOptions {
  /** Bytes allocated up front; the buffer doubles when it runs out. Default: `4096`. */
  capacity?: number;
}

/**
 * Little-endian numbers, LEB128 lengths and length-prefixed UTF-8 strings,
 * appended at {@linkcode ByteWriter.pos}. `buf` and `view` are public so a
 * writer that knows a column's size up front can fill it ahead of `pos`;
 * {@linkcode ByteWriter.reserve} keeps every byte of the buffer when it grows.
 *
 * @example Write a RowBinary-style string and number
 * ```ts
 * import { ByteWriter } from "./byte_writer.ts";
 * import assert from "node:assert/strict";
 *
 * const w = new ByteWriter({ capacity: 4 });
 * w.string("hé");
 * w.u16(0x0102);
 * assert.deepEqual([...w.bytes()], [3, 0x68, 0xc3, 0xa9, 0x02, 0x01]);
 * assert.equal(ByteWriter.varUIntSize(300), 2);
 * ```
 */
export class ByteWriter {
  /** The buffer; bytes past {@linkcode ByteWriter.pos} may be written ahead. */
  buf: Uint8Array;
  /** A view of {@linkcode ByteWriter.buf}, replaced when the buffer grows. */
  view: DataView;
  /** Where the next append goes. */
  pos = 0;

  /** Allocates `options.capacity` bytes. */
  constructor(options: ByteWriterOptions = {}) {
    this.buf = new Uint8Array(options.capacity ?? 4096);
    this.view = new DataView(this.buf.buffer);
  }

  /** Bytes `n` takes as a LEB128 unsigned integer. */
  static varUIntSize(n: number): number {
    let size = 1;
    while (n >= 0x80) {
      n = Math.floor(n / 0x80);
      size++;
    }
    return size;
  }

  /** Makes room for `n` more bytes at `pos`. */
  reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n));
    // All of it: a column may have been written ahead of `pos`.
    next.set(this.buf);
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  /** Appends `v` as a little-endian UInt16. */
  u16(v: number): void {
    this.reserve(2);
    this.view.setUint16(this.pos, v, true);
    this.pos += 2;
  }

  /** Appends `v` as a little-endian UInt32. */
  u32(v: number): void {
    this.reserve(4);
    this.view.setUint32(this.pos, v, true);
    this.pos += 4;
  }

  /** Appends `v` as a little-endian UInt64. */
  u64(v: bigint): void {
    this.reserve(8);
    this.view.setBigUint64(this.pos, v, true);
    this.pos += 8;
  }

  /** Appends `n` as a LEB128 unsigned integer. */
  varUInt(n: number): void {
    this.reserve(10);
    while (n >= 0x80) {
      this.buf[this.pos++] = (n & 0x7f) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.pos++] = n;
  }

  /** Appends `s` as its UTF-8 byte length (LEB128), then its UTF-8 bytes. */
  string(s: string): void {
    // n UTF-16 units encode to between n and 3n bytes. Leave room for the
    // length prefix of the ASCII case and shift the bytes only when non-ASCII
    // text needs a longer prefix.
    this.reserve(s.length * 3 + 10);
    const prefix = ByteWriter.varUIntSize(s.length);
    if (this.#ascii(s, this.pos + prefix)) {
      this.varUInt(s.length);
      this.pos += s.length;
      return;
    }
    const { written } = encoder.encodeInto(s, this.buf.subarray(this.pos + prefix));
    const need = ByteWriter.varUIntSize(written);
    if (need !== prefix) {
      this.buf.copyWithin(this.pos + need, this.pos + prefix, this.pos + prefix + written);
    }
    this.varUInt(written);
    this.pos += written;
  }

  /** A copy of the bytes before `pos`, so the larger buffer can be freed. */
  bytes(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }

  /**
   * Copies `s` to `at` if it is ASCII, which nearly every value is, and says
   * whether it did: for short strings that beats a TextEncoder call. What it
   * copied of a non-ASCII `s` is overwritten.
   */
  #ascii(s: string, at: number): boolean {
    const buf = this.buf;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) return false;
      buf[at + i] = c;
    }
    return true;
  }
}
