import assert from "node:assert/strict";
import type { HttpLogRow } from "../record/types.ts";
import { decodeRows, encodedRowLength, encodeRows, rowLengths } from "./_row_binary.ts";

const U64_MAX = 2n ** 64n - 1n;

function row(overrides: Partial<HttpLogRow> = {}): HttpLogRow {
  return {
    timestamp: 1_700_000_000,
    resourceId: 1n,
    bytesSent: 2n,
    requestTimeMilli: 3n,
    responseStatus: 200,
    cacheStatus: "HIT",
    method: "GET",
    remoteAddr: "1.2.3.X",
    url: "/a",
    ...overrides,
  };
}

function roundTrip(rows: HttpLogRow[]): void {
  const bytes = encodeRows(rows);
  assert.equal(bytes.byteLength, rows.reduce((n, r) => n + encodedRowLength(r), 0));
  assert.deepEqual(decodeRows(bytes), rows);
}

/** Byte offsets at which a row ends, so truncation tests know which prefixes are whole rows. */
function rowEnds(rows: HttpLogRow[]): Set<number> {
  const ends = new Set<number>([0]);
  let pos = 0;
  for (const r of rows) ends.add(pos += encodedRowLength(r));
  return ends;
}

Deno.test("encodeRows() lays a row out as ClickHouse RowBinary", () => {
  const bytes = encodeRows([row({
    timestamp: 0x01020304,
    resourceId: 5n,
    bytesSent: 0x0102n,
    requestTimeMilli: U64_MAX,
    responseStatus: 200,
    url: "/é",
  })]);
  // Fixed-width columns are little-endian; strings are a LEB128 length then UTF-8.
  const want = [
    [0x04, 0x03, 0x02, 0x01],
    [0x05, 0, 0, 0, 0, 0, 0, 0],
    [0x02, 0x01, 0, 0, 0, 0, 0, 0],
    [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    [0xc8, 0x00],
    [3, ..."HIT"].map((c) => typeof c === "number" ? c : c.charCodeAt(0)),
    [3, ..."GET"].map((c) => typeof c === "number" ? c : c.charCodeAt(0)),
    [7, ..."1.2.3.X"].map((c) => typeof c === "number" ? c : c.charCodeAt(0)),
    [3, 0x2f, 0xc3, 0xa9],
  ].flat();
  assert.deepEqual([...bytes], want);
});

Deno.test("encodeRows() and decodeRows() round-trip edge values", async (t) => {
  await t.step("no rows", () => {
    assert.equal(encodeRows([]).byteLength, 0);
    assert.deepEqual(decodeRows(new Uint8Array(0)), []);
  });

  await t.step("empty strings", () => {
    roundTrip([row({ cacheStatus: "", method: "", remoteAddr: "", url: "" })]);
    assert.equal(
      encodedRowLength(row({ cacheStatus: "", method: "", remoteAddr: "", url: "" })),
      34,
    );
  });

  await t.step("largest and smallest column values", () => {
    roundTrip([
      row({
        timestamp: 2 ** 32 - 1,
        resourceId: U64_MAX,
        bytesSent: U64_MAX,
        requestTimeMilli: U64_MAX,
        responseStatus: 65_535,
      }),
      row({ timestamp: 0, resourceId: 0n, bytesSent: 0n, requestTimeMilli: 0n, responseStatus: 0 }),
      row({ resourceId: 2n ** 63n, bytesSent: 2n ** 63n - 1n, requestTimeMilli: 2n ** 32n }),
    ]);
  });

  await t.step("unicode of every UTF-8 width", () => {
    roundTrip([
      row({ url: "/café/€/𝄞/😀/日本語", cacheStatus: "ÄÖÜ", method: "ПОСТ" }),
      row({ remoteAddr: "2001:db8::X", url: "/\u0000/\u007f/\u0080/\u07ff/\u0800/\uffff" }),
      row({ url: "😀".repeat(20_000) }),
    ]);
  });

  await t.step("encodedRowLength() counts what encodeRows() writes", () => {
    const strings = [
      "",
      "a",
      "é",
      "€",
      "😀",
      "\ud800",
      "\udc00",
      "a\ud800",
      "\ud800a",
      "\udc00\ud800",
      "\ud83d\ude00\ud83d",
      "é".repeat(64),
      "€".repeat(43),
      "😀".repeat(32),
      "é".repeat(8_192),
    ];
    for (const s of strings) {
      const r = row({ cacheStatus: s, method: s, remoteAddr: s, url: s });
      assert.equal(encodedRowLength(r), encodeRows([r]).byteLength, JSON.stringify(s));
    }
  });

  await t.step("string lengths at varint boundaries", () => {
    const cases: Array<[length: number, lengthBytes: number]> = [
      [127, 1],
      [128, 2],
      [16_383, 2],
      [16_384, 3],
      [2_097_151, 3],
      [2_097_152, 4],
    ];
    for (const [n, lengthBytes] of cases) {
      const r = row({ cacheStatus: "", method: "", remoteAddr: "", url: "u".repeat(n) });
      assert.equal(encodedRowLength(r), 30 + 3 + lengthBytes + n, `url of ${n} bytes`);
      roundTrip([r]);
    }
  });

  await t.step("long urls that outgrow the initial buffer", () => {
    const rows = Array.from(
      { length: 50 },
      (_, i) => row({ resourceId: BigInt(i), url: `/${i}/${"x".repeat(1_000 * i)}` }),
    );
    roundTrip(rows);
  });

  await t.step("many small rows", () => {
    roundTrip(Array.from({ length: 10_000 }, (_, i) =>
      row({
        timestamp: 1_700_000_000 + i,
        resourceId: BigInt(i),
        responseStatus: 100 + (i % 500),
        url: `/${i}`,
      })));
  });
});

Deno.test("decodeRows() reads a view into a larger buffer", () => {
  const rows = [row({ url: "/first" }), row({ resourceId: 9n, url: "/second" })];
  const bytes = encodeRows(rows);
  const backing = new Uint8Array(bytes.byteLength + 11).fill(0xee);
  backing.set(bytes, 5);
  assert.deepEqual(decodeRows(backing.subarray(5, 5 + bytes.byteLength)), rows);
});

Deno.test("decodeRows() throws RangeError on truncated input", async (t) => {
  const rows = [
    row({ url: "/é/" + "x".repeat(200) }),
    row({ cacheStatus: "", method: "POST", url: "" }),
    row({ url: "/😀" }),
  ];
  const bytes = encodeRows(rows);
  const ends = rowEnds(rows);

  await t.step("every cut inside a row", () => {
    for (let n = 1; n < bytes.byteLength; n++) {
      if (ends.has(n)) continue;
      assert.throws(() => decodeRows(bytes.subarray(0, n)), RangeError, `prefix of ${n} bytes`);
    }
  });

  await t.step("a cut between rows yields the whole rows before it", () => {
    let k = 0;
    for (const n of [...ends].sort((a, b) => a - b)) {
      assert.deepEqual(decodeRows(bytes.subarray(0, n)), rows.slice(0, k++));
    }
  });

  await t.step("a cut inside a multi-byte string length", () => {
    const long = encodeRows([
      row({ cacheStatus: "", method: "", remoteAddr: "", url: "y".repeat(300) }),
    ]);
    // Offset 33 is the first of the url's two length bytes.
    assert.equal(long[33], 0xac);
    assert.throws(() => decodeRows(long.subarray(0, 34)), RangeError);
  });
});

Deno.test("decodeRows() keeps a leading byte order mark", () => {
  const row = {
    timestamp: 1,
    resourceId: 1n,
    bytesSent: 1n,
    requestTimeMilli: 1n,
    responseStatus: 200,
    cacheStatus: "HIT",
    method: "GET",
    remoteAddr: "1.2.3.X",
    url: "\uFEFF/bom",
  };
  assert.equal(decodeRows(encodeRows([row]))[0]!.url, "\uFEFF/bom");
});

Deno.test("rowLengths() reads the length of each row without decoding it", () => {
  const rows = [
    row(),
    row({ url: "/" + "x".repeat(20_000), cacheStatus: "" }),
    row({ url: "/ünïcödé/€/𝄞", method: "PROPFIND", remoteAddr: "2001:db8::X" }),
  ];
  const bytes = encodeRows(rows);
  assert.deepEqual(rowLengths(bytes), rows.map(encodedRowLength));
  assert.deepEqual(rowLengths(new Uint8Array(0)), []);
  assert.throws(() => rowLengths(bytes.subarray(0, bytes.length - 1)), RangeError);
  assert.throws(() => rowLengths(bytes.subarray(0, 31)), RangeError);
});
