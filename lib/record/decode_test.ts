import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { decodeRecord } from "./decode.ts";
import { encodeRecord } from "../../tools/encode_record.ts";
import { DecodeError } from "../errors.ts";
import { syntheticRecords } from "../../tools/synthetic_records.ts";
import type { HttpLogRecord } from "./types.ts";

const RECORD: HttpLogRecord = {
  timestampEpochMilli: 1_700_000_000_123n,
  resourceId: 123_456_789n,
  bytesSent: 2_097_151n,
  requestTimeMilli: 30_000n,
  responseStatus: 504,
  cacheStatus: "REVALIDATED",
  method: "HEAD",
  remoteAddr: "203.0.113.77",
  url: "/images/2024/abc123.webp",
};

/** A record whose Text fields hold two-byte markers, so a test can find and damage them. */
const MARKED: HttpLogRecord = {
  ...RECORD,
  cacheStatus: "Q1",
  method: "Q2",
  remoteAddr: "Q3",
  url: "Q4",
};

/** Byte offset of the url pointer: framing 8, root pointer 8, data section 40, three pointers 24. */
const URL_POINTER_OFFSET = 80;

function indexOfMarker(bytes: Uint8Array, marker: string): number {
  const [a, b] = [marker.charCodeAt(0), marker.charCodeAt(1)];
  for (let i = 0; i + 1 < bytes.length; i++) {
    if (bytes[i] === a && bytes[i + 1] === b) return i;
  }
  throw new Error(`marker ${marker} not found`);
}

function assertDecodeError(bytes: Uint8Array, code: string, message: RegExp): void {
  assert.throws(() => decodeRecord(bytes), (err: unknown) => {
    assert.ok(err instanceof DecodeError, `expected DecodeError, got ${err}`);
    assert.equal(err.code, code);
    assert.match(err.message, message);
    assert.equal(err.retriable, false);
    return true;
  });
}

/** Frames segments (each a list of 64-bit words as [low, high] uint32 pairs) into a stream message. */
function frame(segments: [number, number][][]): Uint8Array {
  const headerWords = Math.ceil((4 + 4 * segments.length) / 8);
  const words = segments.reduce((n, s) => n + s.length, 0);
  const bytes = new Uint8Array(8 * (headerWords + words));
  const view = new DataView(bytes.buffer);
  view.setUint32(0, segments.length - 1, true);
  segments.forEach((s, i) => view.setUint32(4 + 4 * i, s.length, true));
  let at = 8 * headerWords;
  for (const segment of segments) {
    for (const [low, high] of segment) {
      view.setUint32(at, low, true);
      view.setUint32(at + 4, high, true);
      at += 8;
    }
  }
  return bytes;
}

const structPointer = (offset: number, dataWords: number, pointers: number): [number, number] => [
  offset << 2,
  dataWords | (pointers << 16),
];
const bytePointer = (offset: number, length: number): [number, number] => [
  (offset << 2) | 1,
  2 | (length << 3),
];
const farPointer = (padOffset: number, segment: number): [number, number] => [
  2 | (padOffset << 3),
  segment,
];
/** Packs up to 8 ASCII characters into one word, NUL-padded. */
function textWord(text: string): [number, number] {
  const bytes = new Uint8Array(8);
  bytes.set(new TextEncoder().encode(text));
  const view = new DataView(bytes.buffer);
  return [view.getUint32(0, true), view.getUint32(4, true)];
}

Deno.test("decodeRecord() reads back what encodeRecord() wrote", async (t) => {
  await t.step("a typical record", () => {
    assert.deepEqual(decodeRecord(encodeRecord(RECORD)), RECORD);
  });
  await t.step("values at the edges", () => {
    const edges: HttpLogRecord = {
      timestampEpochMilli: 0n,
      resourceId: (1n << 64n) - 1n,
      bytesSent: 1n << 63n,
      requestTimeMilli: 0n,
      responseStatus: 65_535,
      cacheStatus: "",
      method: "",
      remoteAddr: "",
      url: "/ünïcødé/日本語/😀?q=\u{feff}x",
    };
    assert.deepEqual(decodeRecord(encodeRecord(edges)), edges);
  });
  await t.step("a long non-ASCII url past the ASCII fast path", () => {
    const long = { ...RECORD, url: "/" + "é".repeat(3_000) };
    assert.deepEqual(decodeRecord(encodeRecord(long)), long);
    const ascii = { ...RECORD, url: "/" + "a".repeat(5_000) };
    assert.deepEqual(decodeRecord(encodeRecord(ascii)), ascii);
  });
  await t.step("1,000 synthetic records", () => {
    for (const record of syntheticRecords({ seed: 3, now: 1_700_000_000_000 }).take(1_000)) {
      assert.deepEqual(decodeRecord(encodeRecord(record)), record);
    }
  });
  await t.step("a Node Buffer viewing a larger response, as kafkajs hands them out", () => {
    // Buffer's slice() is a view, not a copy: decoding must not rely on it.
    const bytes = encodeRecord(RECORD);
    const response = new Uint8Array(bytes.length + 64);
    response.set(bytes, 16);
    assert.deepEqual(decodeRecord(Buffer.from(response.buffer, 16, bytes.length)), RECORD);
  });
  await t.step("a view into a larger buffer", () => {
    const bytes = encodeRecord(RECORD);
    const padded = new Uint8Array(bytes.length + 24);
    padded.set(bytes, 16);
    assert.deepEqual(decodeRecord(padded.subarray(16, 16 + bytes.length)), RECORD);
  });
});

Deno.test("decodeRecord() reads multi-segment messages with far pointers", async (t) => {
  // Root and url sit behind far pointers, in segments 1 and 2.
  const bytes = frame([
    [farPointer(0, 1)],
    [
      structPointer(0, 5, 4),
      [1_000, 0],
      [7, 0],
      [8, 0],
      [9, 0],
      [200, 0],
      bytePointer(3, 4),
      bytePointer(3, 4),
      bytePointer(3, 8),
      farPointer(0, 2),
      textWord("HIT"),
      textWord("GET"),
      textWord("1.2.3.4"),
    ],
    [bytePointer(0, 7), textWord("/a/b.c")],
  ]);
  await t.step("decodes every field", () => {
    assert.deepEqual(decodeRecord(bytes), {
      timestampEpochMilli: 1_000n,
      resourceId: 7n,
      bytesSent: 8n,
      requestTimeMilli: 9n,
      responseStatus: 200,
      cacheStatus: "HIT",
      method: "GET",
      remoteAddr: "1.2.3.4",
      url: "/a/b.c",
    });
  });
  await t.step("rejects a far pointer to a missing segment", () => {
    const broken = bytes.slice();
    new DataView(broken.buffer).setUint32(16 + 4, 9, true);
    assertDecodeError(broken, "not_capnp", /not a valid Cap'n Proto HttpLogRecord/);
  });
});

Deno.test("decodeRecord() rejects each kind of bad input with a DecodeError", async (t) => {
  const valid = encodeRecord(RECORD);
  await t.step("empty", () => {
    assertDecodeError(new Uint8Array(), "empty", /empty: length is 0/);
  });
  await t.step("too_large above maxBytes", () => {
    assert.throws(() => decodeRecord(valid, { maxBytes: valid.length - 1 }), {
      name: "DecodeError",
      code: "too_large",
      message: `Cannot decode message as it exceeds ${
        valid.length - 1
      } bytes: length is ${valid.length}`,
    });
    assert.deepEqual(decodeRecord(valid, { maxBytes: valid.length }), RECORD);
    assertDecodeError(new Uint8Array(65_537), "too_large", /exceeds 65536 bytes/);
  });
  await t.step("truncated", () => {
    assertDecodeError(valid.subarray(0, 5), "truncated", /shorter than a framing header/);
    assertDecodeError(valid.subarray(0, valid.length - 8), "truncated", /framing declares/);
    assertDecodeError(new Uint8Array([2, 0, 0, 0, 1, 0, 0, 0]), "truncated", /3 segments needs 16/);
  });
  await t.step("trailing_bytes", () => {
    const longer = new Uint8Array(valid.length + 8);
    longer.set(valid);
    assertDecodeError(longer, "trailing_bytes", /8 bytes after the/);
  });
  await t.step("not_capnp: framing", () => {
    assertDecodeError(
      new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
      "not_capnp",
      /more than 512 segments: count is 4294967296/,
    );
    assertDecodeError(new Uint8Array(8), "not_capnp", /no room for the root pointer/);
    assertDecodeError(
      new TextEncoder().encode("GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"),
      "not_capnp",
      /segments/,
    );
  });
  await t.step("not_capnp: root pointer is a list", () => {
    const bytes = valid.slice();
    bytes[8] = (bytes[8]! & ~3) | 1;
    assertDecodeError(bytes, "not_capnp", /record as the message is not a valid/);
  });
  await t.step("not_capnp: root struct outside the segment", () => {
    const bytes = valid.slice();
    new DataView(bytes.buffer).setUint32(8, 1_000 << 2, true);
    assertDecodeError(bytes, "not_capnp", /not a valid Cap'n Proto HttpLogRecord/);
  });
  await t.step("not_capnp: Text pointer is a struct pointer", () => {
    const bytes = valid.slice();
    bytes[URL_POINTER_OFFSET] = bytes[URL_POINTER_OFFSET]! & ~3;
    assertDecodeError(bytes, "not_capnp", /field url as the message is not a valid/);
  });
  await t.step("not_capnp: Text outside the segment", () => {
    const bytes = valid.slice();
    new DataView(bytes.buffer).setUint32(URL_POINTER_OFFSET + 4, 2 | (1_000 << 3), true);
    assertDecodeError(bytes, "not_capnp", /field url as its Text lies outside the segment: 1000/);
  });
  await t.step("not_capnp: Text not NUL-terminated", () => {
    const bytes = encodeRecord(MARKED);
    bytes[indexOfMarker(bytes, "Q4") + 2] = 0x21;
    assertDecodeError(bytes, "not_capnp", /field url as its Text is not NUL-terminated: .*0x21/);
    const empty = valid.slice();
    new DataView(empty.buffer).setUint32(URL_POINTER_OFFSET + 4, 2, true);
    assertDecodeError(empty, "not_capnp", /field url .* missing \(empty list\)/);
  });
  for (
    const [field, marker] of Object.entries({
      cacheStatus: "Q1",
      method: "Q2",
      remoteAddr: "Q3",
      url: "Q4",
    })
  ) {
    await t.step(`invalid_utf8 in ${field}`, () => {
      const bytes = encodeRecord(MARKED);
      const at = indexOfMarker(bytes, marker);
      bytes[at + 1] = 0xc3;
      assertDecodeError(
        bytes,
        "invalid_utf8",
        new RegExp(`field ${field} as it is not valid UTF-8: byte 0xc3 at offset 1 of 2`),
      );
    });
  }
  await t.step("invalid_utf8: overlong, surrogate and out-of-range sequences", () => {
    for (const bad of [[0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xff]]) {
      const record = { ...MARKED, url: "/ok/" + "Q4".padEnd(bad.length, "_") };
      const bytes = encodeRecord(record);
      bytes.set(bad, indexOfMarker(bytes, "Q4"));
      assertDecodeError(bytes, "invalid_utf8", /field url .* at offset 4 of/);
    }
  });
});

Deno.test("decodeRecord() throws nothing but DecodeError on damaged messages", async (t) => {
  const messages = syntheticRecords({ seed: 11, now: 1_700_000_000_000 }).take(50).map(
    encodeRecord,
  ).toArray();
  let state = 0x2545f491;
  const next = (n: number) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
  const outcomes = new Map<string, number>();
  await t.step("20,000 random byte changes and cuts", () => {
    for (let i = 0; i < 20_000; i++) {
      const original = messages[i % messages.length]!;
      let bytes = original.slice();
      for (let k = 0, n = 1 + next(4); k < n; k++) bytes[next(bytes.length)] = next(256);
      if (i % 5 === 0) bytes = bytes.subarray(0, next(bytes.length));
      try {
        decodeRecord(bytes);
        outcomes.set("ok", (outcomes.get("ok") ?? 0) + 1);
      } catch (err) {
        assert.ok(err instanceof DecodeError, `case ${i}: ${err}`);
        outcomes.set(err.code, (outcomes.get(err.code) ?? 0) + 1);
      }
    }
  });
  await t.step("reached decoding and several error kinds", () => {
    assert.ok((outcomes.get("ok") ?? 0) > 0, JSON.stringify([...outcomes]));
    for (const code of ["truncated", "not_capnp", "invalid_utf8"]) {
      assert.ok(
        (outcomes.get(code) ?? 0) > 0,
        `${code} never seen: ${JSON.stringify([...outcomes])}`,
      );
    }
  });
});
