import assert from "node:assert/strict";
import { zstdDecompressSync } from "node:zlib";
import { defaultEncoding, packBatch, type PackedBatch } from "./pack_batch.ts";
import { cityHash128 } from "./_cityhash128.ts";
import { zstdFrame } from "./_compress.ts";
import { AnonymizerError } from "../../errors.ts";
import type { HttpLogRow } from "../../record/types.ts";
import { edgeRows, stockRows } from "../../../testing/stock_rows.ts";

const MIB = 1_048_576;
const ENCODINGS = ["native_clickhouse_zstd", "native_zstd", "native_planes_zstd"] as const;

/** Returns the Native block inside `packed.body`, checking the envelope on the way. */
function nativeOf(packed: PackedBatch): Uint8Array {
  if (packed.encoding !== "native_clickhouse_zstd") {
    return new Uint8Array(zstdDecompressSync(packed.body));
  }
  const view = new DataView(packed.body.buffer, packed.body.byteOffset, packed.body.byteLength);
  assert.equal(packed.body[16], 0x90);
  assert.equal(view.getUint32(17, true), packed.body.length - 16);
  assert.deepEqual(cityHash128(packed.body.subarray(16)), packed.body.subarray(0, 16));
  const native = new Uint8Array(zstdDecompressSync(packed.body.subarray(25)));
  assert.equal(view.getUint32(21, true), native.length);
  return native;
}

/**
 * Decodes a Native block of the `http_log` columns, or of their byte planes,
 * back into rows plus their batch ids, rebuilding planes as the INSERT's
 * SELECT does.
 */
function decodeNative(native: Uint8Array): { rows: HttpLogRow[]; batchIds: bigint[] } {
  const view = new DataView(native.buffer, native.byteOffset, native.byteLength);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let pos = 0;
  const varUInt = () => {
    let n = 0;
    for (let shift = 0;; shift += 7) {
      const b = native[pos++]!;
      n += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return n;
    }
  };
  const string = () => {
    const length = varUInt();
    pos += length;
    return decoder.decode(native.subarray(pos - length, pos));
  };
  const u64 = () => {
    pos += 8;
    return view.getBigUint64(pos - 8, true);
  };
  const columnCount = varUInt();
  const n = varUInt();
  const columns: Record<string, (number | bigint | string)[]> = {};
  for (let c = 0; c < columnCount; c++) {
    const name = string();
    const type = string();
    const values: (number | bigint | string)[] = [];
    if (type === "UInt8") {
      for (let i = 0; i < n; i++) values.push(native[pos++]!);
    } else if (type === "DateTime") {
      for (let i = 0; i < n; i++, pos += 4) values.push(view.getUint32(pos, true));
    } else if (type === "UInt16") {
      for (let i = 0; i < n; i++, pos += 2) values.push(view.getUint16(pos, true));
    } else if (type === "UInt64") {
      for (let i = 0; i < n; i++) values.push(u64());
    } else if (type === "String") {
      for (let i = 0; i < n; i++) values.push(string());
    } else {
      assert.equal(type, "LowCardinality(String)");
      assert.equal(u64(), 1n);
      const flags = u64();
      const width = 2 ** Number(flags & 0xffn);
      assert.equal(flags >> 8n, 0b110n);
      const keys = Array.from({ length: Number(u64()) }, string);
      assert.equal(u64(), BigInt(n));
      for (let i = 0; i < n; i++, pos += width) {
        const index = width === 1
          ? native[pos]!
          : width === 2
          ? view.getUint16(pos, true)
          : view.getUint32(pos, true);
        values.push(keys[index]!);
      }
    }
    columns[name] = values;
  }
  assert.equal(pos, native.length);
  if (columns.resource_id === undefined) fromPlanes(columns, n);
  const rows = Array.from({ length: n }, (_, i): HttpLogRow => ({
    timestamp: columns.timestamp![i] as number,
    resourceId: columns.resource_id![i] as bigint,
    bytesSent: columns.bytes_sent![i] as bigint,
    requestTimeMilli: columns.request_time_milli![i] as bigint,
    responseStatus: columns.response_status![i] as number,
    cacheStatus: columns.cache_status![i] as string,
    method: columns.method![i] as string,
    remoteAddr: columns.remote_addr![i] as string,
    url: columns.url![i] as string,
  }));
  return { rows, batchIds: columns.batch_id as bigint[] };
}

function fromPlanes(columns: Record<string, (number | bigint | string)[]>, n: number): void {
  for (const name of ["resource_id", "bytes_sent", "request_time_milli"]) {
    columns[name] = Array.from({ length: n }, (_, i) => {
      let value = 0n;
      for (let j = 0; j < 8; j++) {
        value |= BigInt(columns[`${name}_${j}`]![i] as number) << BigInt(8 * j);
      }
      return value;
    });
  }
  const byte = (name: string, i: number) => columns[name]![i] as number;
  columns.response_status = Array.from(
    { length: n },
    (_, i) => byte("response_status_0", i) + 256 * byte("response_status_1", i),
  );
  columns.remote_addr = Array.from(
    { length: n },
    (_, i) =>
      byte("remote_addr_kind", i) === 1
        ? `${byte("remote_addr_0", i)}.${byte("remote_addr_1", i)}.${byte("remote_addr_2", i)}.X`
        : columns.remote_addr_text![i] as string,
  );
}

function rowKey(row: HttpLogRow): string {
  return JSON.stringify(row, (_key, value) => typeof value === "bigint" ? `${value}n` : value);
}

Deno.test("packBatch() fits 18,750 stock rows in a 1 MiB body, 20,000 on a modern server", () => {
  const rows = stockRows(25_000, 1);
  for (const [serverVersion, least] of [["18.16.1", 18_750], ["24.8.1.2684", 20_000]] as const) {
    const packed = packBatch(rows, { batchId: 1n, serverVersion });
    assert.ok(packed.body.length <= MIB, `${serverVersion}: ${packed.body.length} bytes`);
    assert.ok(packed.body.length >= 0.97 * MIB, `${serverVersion}: ${packed.body.length} bytes`);
    assert.ok(packed.rowCount >= least, `${serverVersion}: ${packed.rowCount} rows`);
  }
});

Deno.test("packBatch() keeps every body within bodyLimit and at least 97% full", async (t) => {
  const rows = stockRows(6_000, 2);
  for (const encoding of ENCODINGS) {
    for (const bodyLimit of [4_096, 20_000, 65_536, 200_000]) {
      await t.step(`${encoding}, ${bodyLimit} bytes`, () => {
        const packed = packBatch(rows, { batchId: 2n, encoding, bodyLimit });
        assert.ok(packed.rowCount < rows.length);
        assert.ok(packed.body.length <= bodyLimit, `${packed.body.length} bytes`);
        assert.ok(packed.body.length >= 0.97 * bodyLimit, `${packed.body.length} bytes`);
      });
    }
  }
});

Deno.test("packBatch() bodies hold the first rowCount rows, sorted by timestamp", async (t) => {
  const rows = [...edgeRows(stockRows(1, 99)[0]!), ...stockRows(3_000, 3)];
  for (const encoding of ENCODINGS) {
    await t.step(encoding, () => {
      const packed = packBatch(rows, {
        batchId: 0xffff_ffff_ffff_fff0n,
        encoding,
        bodyLimit: 100_000,
      });
      const decoded = decodeNative(nativeOf(packed));
      assert.equal(decoded.rows.length, packed.rowCount);
      assert.ok(decoded.batchIds.every((id) => id === 0xffff_ffff_ffff_fff0n));
      for (let i = 1; i < decoded.rows.length; i++) {
        assert.ok(decoded.rows[i - 1]!.timestamp <= decoded.rows[i]!.timestamp);
      }
      const sent = rows.slice(0, packed.rowCount).map(rowKey).sort();
      assert.deepEqual(decoded.rows.map(rowKey).sort(), sent);
    });
  }
});

Deno.test("packBatch() keeps every remote_addr form in native_planes_zstd", () => {
  const base = stockRows(1, 9)[0]!;
  const addresses = [
    "0.0.0.X",
    "255.255.255.X",
    "10.0.200.X",
    "01.2.3.X",
    "1.2.3.4.X",
    "256.1.1.X",
    "1.2.X",
    "1..3.X",
    "1.2.3.x",
    "2002:aabb:cc00::X",
    "",
  ];
  const rows = addresses.map((remoteAddr, i) => ({
    ...base,
    timestamp: base.timestamp + i,
    remoteAddr,
  }));
  const packed = packBatch(rows, { batchId: 9n, encoding: "native_planes_zstd" });
  assert.deepEqual(decodeNative(nativeOf(packed)).rows.map((r) => r.remoteAddr), addresses);
});

Deno.test("packBatch() widens LowCardinality indexes past 256 distinct values", () => {
  const rows = stockRows(700, 4).map((row, i) => ({ ...row, cacheStatus: `S${i % 300}` }));
  const packed = packBatch(rows, { batchId: 4n });
  assert.equal(packed.rowCount, rows.length);
  const decoded = decodeNative(nativeOf(packed));
  assert.deepEqual(decoded.rows.map(rowKey).sort(), rows.map(rowKey).sort());
});

Deno.test("packBatch() gives the same bytes for the same rows and options", () => {
  const rows = stockRows(30_000, 5);
  const first = packBatch(rows, { batchId: 5n });
  const again = packBatch([...rows], { batchId: 5n });
  assert.equal(again.rowCount, first.rowCount);
  assert.deepEqual(again.body, first.body);
});

Deno.test("packBatch() takes every row when all fit", () => {
  const rows = stockRows(10, 6);
  for (const serverVersion of ["18.16.1", "25.3.1"]) {
    const packed = packBatch(rows, { batchId: 6n, serverVersion });
    assert.equal(packed.rowCount, 10);
    assert.equal(decodeNative(nativeOf(packed)).rows.length, 10);
  }
});

Deno.test("packBatch() spends zstdLevel only on bodies that leave rows over", async (t) => {
  await t.step("every row fits at level 1: the body is the level-1 frame", () => {
    const rows = stockRows(8_000, 10);
    const packed = packBatch(rows, { batchId: 10n, encoding: "native_planes_zstd" });
    assert.equal(packed.rowCount, rows.length);
    assert.deepEqual(packed.body, zstdFrame(nativeOf(packed), 1));
  });
  await t.step("rows left over: the body is at zstdLevel, smaller than level 1", () => {
    const rows = stockRows(25_000, 10);
    const packed = packBatch(rows, { batchId: 10n, encoding: "native_planes_zstd" });
    assert.ok(packed.rowCount < rows.length);
    assert.deepEqual(packed.body, zstdFrame(nativeOf(packed), 16));
    assert.ok(packed.body.length < zstdFrame(nativeOf(packed), 1).length);
  });
});

Deno.test("packBatch() returns the request parameters of its encoding", () => {
  const rows = stockRows(10, 7);
  const old = packBatch(rows, { batchId: 7n, serverVersion: "18.16.1", database: "logs" });
  assert.equal(old.encoding, "native_clickhouse_zstd");
  assert.deepEqual(old.headers, {});
  assert.deepEqual(Object.keys(old.query).sort(), ["decompress", "query"]);
  assert.equal(old.query.decompress, "1");
  assert.match(
    old.query.query,
    /^INSERT INTO logs\.http_log \(timestamp, .*, batch_id\) FORMAT Native$/,
  );
  const modern = packBatch(rows, { batchId: 7n, serverVersion: "24.8.1.2684", table: "t" });
  assert.equal(modern.encoding, "native_planes_zstd");
  assert.deepEqual(modern.headers, { "Content-Encoding": "zstd" });
  assert.deepEqual(Object.keys(modern.query), ["query"]);
  assert.match(modern.query.query, /^INSERT INTO default\.t \(.*\) SELECT .* FROM input\('.*'\)/);
  const plain = packBatch(rows, { batchId: 7n, encoding: "native_zstd" });
  assert.deepEqual(plain.headers, { "Content-Encoding": "zstd" });
  assert.match(plain.query.query, /^INSERT INTO default\.http_log \(.*\) FORMAT Native$/);
});

Deno.test("packBatch() rejects invalid input with code invalid_option or row_too_large", () => {
  const rows = stockRows(3, 8);
  const rejects = (code: string, run: () => unknown) =>
    assert.throws(run, (err) => err instanceof AnonymizerError && err.code === code);
  rejects("invalid_option", () => packBatch([], { batchId: 8n }));
  rejects("invalid_option", () => packBatch(rows, { batchId: 8n, serverVersion: "latest" }));
  rejects("invalid_option", () => packBatch(rows, { batchId: 8n, database: "a;DROP" }));
  rejects("invalid_option", () => packBatch(rows, { batchId: 8n, bodyLimit: 10 }));
  rejects("invalid_option", () => packBatch(rows, { batchId: 8n, zstdLevel: 20 }));
  rejects(
    "row_too_large",
    () => packBatch(edgeRows(stockRows(1, 99)[0]!).slice(2), { batchId: 8n, bodyLimit: 100 }),
  );
});

Deno.test("defaultEncoding() switches to native_planes_zstd at 23.3", () => {
  assert.equal(defaultEncoding("18.16.1"), "native_clickhouse_zstd");
  assert.equal(defaultEncoding("23.2.7.32"), "native_clickhouse_zstd");
  assert.equal(defaultEncoding("23.3.1.2823"), "native_planes_zstd");
  assert.equal(defaultEncoding("26.9.2.1"), "native_planes_zstd");
  assert.throws(() => defaultEncoding("v24"), AnonymizerError);
});

Deno.test("cityHash128() matches CityHash v1.0.2", () => {
  // From the clickhouse-cityhash 1.0.2.6 PyPI package, an independent build of
  // the C++ original; its integer holds the first (low) half in the high bits,
  // hence the halves swapped relative to its printed value.
  const expected: [number, string][] = [
    [0, "2b9ac064fc9df03d291ee592c340b53c"],
    [9, "ccc73825a2adb4004b34f39521e80997"],
    [16, "cc0334687e7348faa22e59f6fb2fc670"],
    [17, "a7fd33ca5bc037b7bde2b6139efb8d9f"],
    [127, "b6998611b1ace772d2b545e1790140e2"],
    [128, "c05f0f349e5345096e901d42e27b0f02"],
    [129, "493e2d33999e9d8f23bb192a361cd5af"],
    [145, "f37a13264b23191f5893c8cfe3911e00"],
    [256, "235b7566e2b27a88b402f217784e45f0"],
    [1000, "f4543beca247f7b052c31d429d2327a1"],
    [4099, "87e0a805b9d664276bf354cd272b26cb"],
  ];
  for (const [length, hex] of expected) {
    const data = Uint8Array.from({ length }, (_, i) => (i * 131 + 7) % 251);
    const got = Array.from(cityHash128(data), (b) => b.toString(16).padStart(2, "0")).join("");
    assert.equal(got, hex, `length ${length}`);
  }
});
