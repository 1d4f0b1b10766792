import assert from "node:assert/strict";
import { AnonymizerError } from "../errors.ts";
import type { HttpLogRecord, HttpLogRow } from "./types.ts";
import { type RowResult, toRow, type ToRowOptions, URL_TRUNCATED_MARKER } from "./validate.ts";
import { CACHE_STATUSES } from "./vocabulary.ts";
import { INVALID_ADDRESS } from "./anonymize.ts";
import { seededRandom } from "../../testing/seeded_random.ts";

const NOW = 1_700_000_000_000;
const DAY = 86_400_000;
const RAW_ADDR = "203.0.113.77";

const RECORD: HttpLogRecord = {
  timestampEpochMilli: BigInt(NOW),
  resourceId: 123_456_789n,
  bytesSent: 1024n,
  requestTimeMilli: 12n,
  responseStatus: 200,
  cacheStatus: "HIT",
  method: "GET",
  remoteAddr: RAW_ADDR,
  url: "/static/logo.png",
};

const ROW: HttpLogRow = {
  timestamp: NOW / 1000,
  resourceId: 123_456_789n,
  bytesSent: 1024n,
  requestTimeMilli: 12n,
  responseStatus: 200,
  cacheStatus: "HIT",
  method: "GET",
  remoteAddr: "203.0.113.X",
  url: "/static/logo.png",
};

function run(change: Partial<HttpLogRecord>, options: ToRowOptions = {}): RowResult {
  return toRow({ ...RECORD, ...change }, { now: NOW, ...options });
}

function stored(change: Partial<HttpLogRecord>, options: ToRowOptions = {}) {
  const result = run(change, options);
  if (!result.ok) assert.fail(`expected a row: ${result.message}`);
  return result;
}

function utf8Length(s: string): number {
  return new TextEncoder().encode(s).length;
}

interface StoreCase {
  name: string;
  change: Partial<HttpLogRecord>;
  options?: ToRowOptions;
  row: Partial<HttpLogRow>;
}

interface RejectCase {
  name: string;
  change: Partial<HttpLogRecord>;
  options?: ToRowOptions;
  code: string;
  field: string;
}

function checkStored(cases: StoreCase[]): void {
  for (const c of cases) {
    const result = stored(c.change, c.options);
    assert.deepEqual(result.row, { ...ROW, ...c.row }, c.name);
  }
}

function checkRejected(cases: RejectCase[]): void {
  for (const c of cases) {
    const result = run(c.change, c.options);
    assert.ok(!result.ok, c.name);
    assert.equal(result.code, c.code, c.name);
    assert.match(result.message, new RegExp(`^Cannot store record as ${c.field} `), c.name);
  }
}

Deno.test("toRow() stores a valid record unchanged but for the masked address", () => {
  const result = stored({});
  assert.deepEqual(result.row, ROW);
});

Deno.test("toRow() converts and bounds the timestamp", async (t) => {
  await t.step("stores whole UTC seconds, rounded down", () => {
    checkStored([
      {
        name: "last ms of a second",
        change: { timestampEpochMilli: BigInt(NOW + 999) },
        row: { timestamp: NOW / 1000 },
      },
      {
        name: "exactly the allowed skew ahead",
        change: { timestampEpochMilli: BigInt(NOW + DAY) },
        row: { timestamp: (NOW + DAY) / 1000 },
      },
      {
        name: "exactly the allowed age behind",
        change: { timestampEpochMilli: BigInt(NOW - 30 * DAY) },
        row: { timestamp: (NOW - 30 * DAY) / 1000 },
      },
      {
        name: "last ms ClickHouse DateTime holds",
        change: { timestampEpochMilli: 4_294_967_295_999n },
        options: { now: 4_294_967_295_999 },
        row: { timestamp: 4_294_967_295 },
      },
      {
        name: "first second after the epoch when age is unbounded",
        change: { timestampEpochMilli: 1n },
        options: { maxPastAgeMs: Infinity },
        row: { timestamp: 0 },
      },
    ]);
  });
  await t.step("rejects unset, out of range, future and stale timestamps", () => {
    checkRejected([
      {
        name: "zero",
        change: { timestampEpochMilli: 0n },
        options: { maxPastAgeMs: Infinity },
        code: "timestamp_zero",
        field: "timestampEpochMilli",
      },
      {
        name: "negative",
        change: { timestampEpochMilli: -1n },
        options: { maxPastAgeMs: Infinity },
        code: "timestamp_out_of_range",
        field: "timestampEpochMilli",
      },
      {
        name: "first ms after DateTime ends",
        change: { timestampEpochMilli: 4_294_967_296_000n },
        options: { now: 4_294_967_295_999, maxFutureSkewMs: Infinity },
        code: "timestamp_out_of_range",
        field: "timestampEpochMilli",
      },
      {
        name: "UInt64 max",
        change: { timestampEpochMilli: 2n ** 64n - 1n },
        code: "timestamp_out_of_range",
        field: "timestampEpochMilli",
      },
      {
        name: "1 ms past the skew",
        change: { timestampEpochMilli: BigInt(NOW + DAY + 1) },
        code: "timestamp_future",
        field: "timestampEpochMilli",
      },
      {
        name: "past a custom skew",
        change: { timestampEpochMilli: BigInt(NOW + 1001) },
        options: { maxFutureSkewMs: 1000 },
        code: "timestamp_future",
        field: "timestampEpochMilli",
      },
      {
        name: "1 ms older than the allowed age",
        change: { timestampEpochMilli: BigInt(NOW - 30 * DAY - 1) },
        code: "timestamp_too_old",
        field: "timestampEpochMilli",
      },
      {
        name: "1970 under the default age",
        change: { timestampEpochMilli: 1n },
        code: "timestamp_too_old",
        field: "timestampEpochMilli",
      },
    ]);
  });
  await t.step("uses the real clock without options.now", () => {
    const now = Date.now();
    assert.ok(toRow({ ...RECORD, timestampEpochMilli: BigInt(now) }).ok);
    const future = toRow({ ...RECORD, timestampEpochMilli: BigInt(now + 2 * DAY) });
    assert.ok(!future.ok && future.code === "timestamp_future");
  });
});

Deno.test("toRow() rejects a status outside 100-599", async (t) => {
  await t.step("bounds are stored", () => {
    checkStored([100, 101, 399, 599].map((s) => ({
      name: `status ${s}`,
      change: { responseStatus: s },
      row: { responseStatus: s },
    })));
  });
  await t.step("everything else is rejected with its value", () => {
    for (const s of [0, 42, 99, 600, 999, 65535, 200.5, -1, NaN]) {
      const result = run({ responseStatus: s });
      assert.ok(!result.ok, `status ${s}`);
      assert.equal(result.code, "status_out_of_range");
      assert.equal(
        result.message,
        `Cannot store record as responseStatus must be 100–599: current value is ${s}`,
      );
    }
  });
});

Deno.test("toRow() keeps method and cache status to a fixed set", async (t) => {
  await t.step("methods", () => {
    const known = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];
    const unknown = ["PROPFIND", "GET ", " GET", "G\u0000ET", "poſt", "ＧＥＴ", "x".repeat(10_000)];
    checkStored([
      ...known.map((m) => ({ name: m, change: { method: m }, row: { method: m } })),
      ...known.map((m) => ({
        name: m.toLowerCase(),
        change: { method: m.toLowerCase() },
        row: { method: m },
      })),
      {
        name: "mixed case",
        change: { method: "pAtCh" },
        row: { method: "PATCH" },
      },
      {
        name: "empty",
        change: { method: "" },
        row: { method: "UNKNOWN" },
      },
      ...unknown.map((m) => ({
        name: JSON.stringify(m.slice(0, 20)),
        change: { method: m },
        row: { method: "OTHER" },
      })),
    ]);
  });
  await t.step("cache statuses", () => {
    const known = CACHE_STATUSES;
    checkStored([
      {
        name: "empty: no cache involved",
        change: { cacheStatus: "" },
        row: { cacheStatus: "" },
      },
      ...known.map((s) => ({
        name: s,
        change: { cacheStatus: s },
        row: { cacheStatus: s },
      })),
      ...known.map((s) => ({
        name: s.toLowerCase(),
        change: { cacheStatus: s.toLowerCase() },
        row: { cacheStatus: s },
      })),
      ...["-", "HIT ", "DYNAMIC", "REVALIDATED\u0000", "x".repeat(100_000)].map((s) => ({
        name: JSON.stringify(s.slice(0, 20)),
        change: { cacheStatus: s },
        row: { cacheStatus: "OTHER" },
      })),
    ]);
  });
});

Deno.test("toRow() bounds and cleans the URL", async (t) => {
  await t.step("stores short and empty URLs as they are", () => {
    checkStored([
      { name: "empty", change: { url: "" }, row: { url: "" } },
      { name: "unicode", change: { url: "/ünï/😀" }, row: { url: "/ünï/😀" } },
      {
        name: "exactly 8192 bytes",
        change: { url: "/" + "a".repeat(8191) },
        row: { url: "/" + "a".repeat(8191) },
      },
      {
        name: "8190 bytes of 3-byte characters",
        change: { url: "€".repeat(2730) },
        row: { url: "€".repeat(2730) },
      },
    ]);
  });
  await t.step("percent-encodes control characters", () => {
    checkStored([
      {
        name: "NUL",
        change: { url: "/a\u0000b" },
        row: { url: "/a%00b" },
      },
      {
        name: "C0, DEL and C1",
        change: { url: "/\t\r\n\u001f\u007f\u0085x" },
        row: { url: "/%09%0D%0A%1F%7F%C2%85x" },
      },
      {
        name: "lone surrogate",
        change: { url: "/a\ud800b" },
        row: { url: "/a\ufffdb" },
      },
      {
        name: "surrogate pair left alone next to a control",
        change: { url: "/😀\u0000" },
        row: { url: "/😀%00" },
      },
    ]);
  });
  await t.step("truncates at maxUrlBytes, marker included, on a character boundary", () => {
    const cases: [string, string, ToRowOptions][] = [
      ["100 KB ASCII", "/" + "a".repeat(100_000), {}],
      ["8193 bytes", "/" + "a".repeat(8192), {}],
      ["2-byte characters", "é".repeat(5000), {}],
      ["3-byte characters", "€".repeat(2731), {}],
      ["4-byte characters", "😀".repeat(3000), {}],
      ["a pair straddles unit 8192", "a" + "😀".repeat(5000), {}],
      ["mixed widths", "a😀é€".repeat(1000), {}],
      ["NUL flood grows past the limit once encoded", "\u0000".repeat(3000), {}],
      ["control past the cut is never looked at", "/" + "a".repeat(9000) + "\u0000", {}],
      ["custom limit", "/" + "b".repeat(100), { maxUrlBytes: 64 }],
    ];
    for (const [name, url, options] of cases) {
      const result = stored({ url }, options);
      const max = options.maxUrlBytes ?? 8192;
      const out = result.row.url;
      assert.ok(out.endsWith(URL_TRUNCATED_MARKER), name);
      assert.ok(out.isWellFormed(), name);
      const bytes = utf8Length(out);
      // The cut may leave up to 3 bytes unused rather than split a character.
      assert.ok(bytes <= max && bytes > max - 4, `${name}: ${bytes} bytes`);
      const kept = out.slice(0, -URL_TRUNCATED_MARKER.length);
      assert.ok(url.replaceAll("\u0000", "%00").startsWith(kept), name);
    }
  });
});

Deno.test("toRow() stores implausible but representable numbers as they are", async (t) => {
  await t.step("huge values", () => {
    checkStored([
      {
        name: "UInt64 max everywhere",
        change: { resourceId: 2n ** 64n - 1n, bytesSent: 2n ** 64n - 1n },
        row: { resourceId: 2n ** 64n - 1n, bytesSent: 2n ** 64n - 1n },
      },
      {
        name: "request time of ten days",
        change: { requestTimeMilli: BigInt(10 * DAY) },
        row: { requestTimeMilli: BigInt(10 * DAY) },
      },
      {
        name: "zeros",
        change: { resourceId: 0n, bytesSent: 0n, requestTimeMilli: 0n },
        row: {
          resourceId: 0n,
          bytesSent: 0n,
          requestTimeMilli: 0n,
        },
      },
    ]);
  });
  await t.step("values outside UInt64 are rejected", () => {
    checkRejected([
      {
        name: "negative id",
        change: { resourceId: -1n },
        code: "resource_id_out_of_range",
        field: "resourceId",
      },
      {
        name: "2^64 bytes",
        change: { bytesSent: 2n ** 64n },
        code: "bytes_sent_out_of_range",
        field: "bytesSent",
      },
      {
        name: "negative time",
        change: { requestTimeMilli: -5n },
        code: "request_time_out_of_range",
        field: "requestTimeMilli",
      },
    ]);
  });
});

Deno.test("toRow() masks every address form and keeps records with a bad one", () => {
  checkStored([
    {
      name: "IPv4 with port",
      change: { remoteAddr: "1.2.3.4:5678" },
      row: { remoteAddr: "1.2.3.X" },
    },
    {
      name: "IPv6",
      change: { remoteAddr: "2001:db8:85a3:8d3::1" },
      row: { remoteAddr: "2001:db8:85a3::X" },
    },
    {
      name: "IPv6 with port",
      change: { remoteAddr: "[2001:db8::1]:443" },
      row: { remoteAddr: "2001:db8::X" },
    },
    {
      name: "IPv4-mapped",
      change: { remoteAddr: "::ffff:1.2.3.4" },
      row: { remoteAddr: "1.2.3.X" },
    },
    ...["", "garbage", "fe80::1%eth0", " 1.2.3.4", "01.2.3.4", "unix:"].map((a) => ({
      name: JSON.stringify(a),
      change: { remoteAddr: a },
      row: { remoteAddr: "invalid" },
    })),
  ]);
});

Deno.test("toRow() normalizes every field of one record at once", () => {
  const result = stored({
    method: "get",
    cacheStatus: "weird",
    url: "/\u0000" + "a".repeat(9000),
    remoteAddr: "nope",
  });
  assert.equal(result.row.method, "GET");
  assert.equal(result.row.cacheStatus, "OTHER");
  assert.ok(result.row.url.startsWith("/%00aaa"), result.row.url.slice(0, 10));
  assert.ok(result.row.url.endsWith(URL_TRUNCATED_MARKER));
  assert.equal(result.row.remoteAddr, INVALID_ADDRESS);
});

Deno.test("toRow() refuses options out of range", () => {
  const cases: ToRowOptions[] = [
    { now: NaN },
    { now: Infinity },
    { maxFutureSkewMs: -1 },
    { maxFutureSkewMs: NaN },
    { maxPastAgeMs: -1 },
    { maxUrlBytes: 63 },
    { maxUrlBytes: 1000.5 },
    { maxUrlBytes: Infinity },
  ];
  for (const options of cases) {
    assert.throws(
      () => toRow(RECORD, options),
      (err) =>
        err instanceof AnonymizerError && err.code === "invalid_option" && !err.retriable &&
        err.message.startsWith("Cannot validate record as option "),
      JSON.stringify(options),
    );
  }
});

Deno.test("toRow() never lets the raw address or payload text out", async (t) => {
  const rand = seededRandom(42);
  const secret = (): string =>
    "S" + Array.from({ length: 8 }, () => String.fromCharCode(97 + rand() * 26)).join("");
  const json = (v: unknown): string =>
    JSON.stringify(v, (_, x) => typeof x === "bigint" ? x.toString() : x);
  let rejected = 0;
  let kept = 0;

  await t.step("10k random records", () => {
    for (let n = 0; n < 10_000; n++) {
      const addr = rand() < 0.5
        ? `${[0, 0, 0, 0].map(() => Math.floor(rand() * 256)).join(".")}`
        : secret();
      const record: HttpLogRecord = {
        timestampEpochMilli: BigInt(Math.floor(NOW + (rand() - 0.5) * 80 * DAY)),
        resourceId: BigInt(Math.floor(rand() * 1e9)),
        bytesSent: rand() < 0.05 ? -1n : BigInt(Math.floor(rand() * 1e9)),
        requestTimeMilli: BigInt(Math.floor(rand() * 1e6)),
        responseStatus: Math.floor(rand() * 800),
        cacheStatus: rand() < 0.5 ? "HIT" : secret(),
        method: rand() < 0.5 ? "GET" : secret(),
        remoteAddr: addr,
        url: "/" + secret(),
      };
      const result = toRow(record, { now: NOW });
      const out = json(result);
      assert.ok(!out.includes(addr), addr);
      for (const text of [record.cacheStatus, record.method]) {
        if (text.startsWith("S")) assert.ok(!out.includes(text), text);
      }
      if (result.ok) {
        kept++;
      } else {
        rejected++;
        assert.ok(!out.includes(record.url), "url in a rejection");
      }
    }
  });
  await t.step("both outcomes were exercised", () => {
    assert.equal(kept + rejected, 10_000);
    assert.ok(kept > 1000 && rejected > 1000, `${kept} kept, ${rejected} rejected`);
  });
});
