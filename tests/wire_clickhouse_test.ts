/**
 * Proves that real ClickHouse servers decode packed bodies to exactly the rows
 * that went in, over HTTP as ch-proxy forwards them: 18.16 and the modern
 * server, one per run of the test matrix.
 */
import assert from "node:assert/strict";
import { type Engine, openHttpEngine } from "../testing/sql_engines.ts";
import { resolveTemplate } from "../lib/sink/clickhouse/migrate.ts";
import {
  packBatch,
  type PackBatchOptions,
  type PackedBatch,
} from "../lib/sink/clickhouse/pack_batch.ts";
import type { HttpLogRow } from "../lib/record/types.ts";
import { CLICKHOUSE_URL, uniqueName } from "../testing/stack.ts";
import { edgeRows, stockRows } from "../testing/stock_rows.ts";

const MIB = 1_048_576;
const SCHEMA = new URL("../schema/clickhouse/010_http_log.sql", import.meta.url);

/** Stock rows after a few whose values sit at the edges of their column types. */
function testRows(seed: number): HttpLogRow[] {
  const rows = stockRows(25_000, seed);
  return [...edgeRows(rows[0]!), ...rows];
}

function rowKey(row: HttpLogRow): string {
  return JSON.stringify(row, (_key, value) => typeof value === "bigint" ? `${value}n` : value);
}

async function createTable(engine: Engine, database: string): Promise<void> {
  await engine.run(`CREATE DATABASE ${database}`);
  const ddl = await Deno.readTextFile(SCHEMA);
  await engine.run(resolveTemplate(ddl, { database, version: engine.version }));
}

/** The stored rows of one batch, in the canonical form of {@linkcode rowKey}, sorted. */
async function storedRows(engine: Engine, database: string, batchId: bigint): Promise<string[]> {
  const { data } = await engine.run(
    // Strings for the UInt64 columns, as JSON numbers lose precision past 2^53.
    `SELECT toUInt32(timestamp) AS t, toString(resource_id) AS resource_id,
       toString(bytes_sent) AS bytes_sent, toString(request_time_milli) AS request_time_milli,
       response_status, cache_status, method, remote_addr, url
     FROM ${database}.http_log WHERE batch_id = ${batchId}`,
    "JSONEachRow",
  );
  return data.split("\n").filter((line) => line !== "").map((line) => {
    const r = JSON.parse(line);
    return rowKey({
      timestamp: Number(r.t),
      resourceId: BigInt(r.resource_id),
      bytesSent: BigInt(r.bytes_sent),
      requestTimeMilli: BigInt(r.request_time_milli),
      responseStatus: Number(r.response_status),
      cacheStatus: r.cache_status,
      method: r.method,
      remoteAddr: r.remote_addr,
      url: r.url,
    });
  }).sort();
}

function sentRows(rows: HttpLogRow[], packed: PackedBatch): string[] {
  return rows.slice(0, packed.rowCount).map(rowKey).sort();
}

/** Sends `packed` as ch-proxy would forward it: its URL parameters, headers and body, nothing else. */
async function post(packed: PackedBatch): Promise<{ ok: boolean; text: string }> {
  const url = new URL(CLICKHOUSE_URL);
  for (const [key, value] of Object.entries(packed.query)) url.searchParams.set(key, value);
  const res = await fetch(url, { method: "POST", headers: packed.headers, body: packed.body });
  return { ok: res.ok, text: await res.text() };
}

Deno.test("packBatch() bodies decode to the same rows on ClickHouse over HTTP", async (t) => {
  const engine = await openHttpEngine(CLICKHOUSE_URL);
  const serverVersion = (await engine.run("SELECT version()")).data.trim();
  const database = uniqueName("wire");
  const rows = testRows(11);
  const pack = (options: Partial<PackBatchOptions> & { batchId: bigint }) =>
    packBatch(rows, { serverVersion, database, ...options });
  try {
    await createTable(engine, database);

    await t.step(`a full 1 MiB body in the default encoding of ${serverVersion}`, async () => {
      const packed = pack({ batchId: 11n });
      assert.ok(packed.body.length <= MIB && packed.body.length >= 0.97 * MIB);
      assert.ok(packed.rowCount >= (engine.modern ? 20_000 : 18_750), `${packed.rowCount} rows`);
      const res = await post(packed);
      assert.ok(res.ok, res.text);
      assert.deepEqual(await storedRows(engine, database, 11n), sentRows(rows, packed));
    });

    await t.step("native_clickhouse_zstd, whose checksum the server verifies", async () => {
      const packed = pack({ batchId: 12n, encoding: "native_clickhouse_zstd", bodyLimit: 200_000 });
      const corrupt = { ...packed, body: packed.body.slice() };
      corrupt.body[5]! ^= 1;
      const refused = await post(corrupt);
      assert.ok(!refused.ok);
      assert.match(refused.text, /Checksum doesn't match/);
      assert.deepEqual(await storedRows(engine, database, 12n), []);
      const res = await post(packed);
      assert.ok(res.ok, res.text);
      assert.deepEqual(await storedRows(engine, database, 12n), sentRows(rows, packed));
    });

    await t.step("LowCardinality columns with more than 256 distinct values", async () => {
      const many = rows.slice(0, 2_000).map((row, i) => ({ ...row, method: `M${i % 300}` }));
      const packed = packBatch(many, { batchId: 13n, serverVersion, database });
      assert.equal(packed.rowCount, many.length);
      const res = await post(packed);
      assert.ok(res.ok, res.text);
      assert.deepEqual(await storedRows(engine, database, 13n), sentRows(many, packed));
    });

    if (engine.modern) {
      await t.step("native_zstd, the table's column types in a zstd frame", async () => {
        const packed = pack({ batchId: 15n, encoding: "native_zstd", bodyLimit: 200_000 });
        const res = await post(packed);
        assert.ok(res.ok, res.text);
        assert.deepEqual(await storedRows(engine, database, 15n), sentRows(rows, packed));
      });

      await t.step("native_planes_zstd with every remote_addr form", async () => {
        const forms = [
          "0.0.0.X",
          "255.255.255.X",
          "01.2.3.X",
          "1.2.3.4.X",
          "2002:aabb:cc00::X",
          "",
        ];
        const odd = rows.slice(0, 600).map((row, i) => ({ ...row, remoteAddr: forms[i % 6]! }));
        const packed = packBatch(odd, { batchId: 16n, serverVersion, database });
        assert.equal(packed.encoding, "native_planes_zstd");
        assert.equal(packed.rowCount, odd.length);
        const res = await post(packed);
        assert.ok(res.ok, res.text);
        assert.deepEqual(await storedRows(engine, database, 16n), sentRows(odd, packed));
      });
    } else {
      await t.step("18.16 refuses native_zstd, the encoding of 23.3 and later", async () => {
        const res = await post(pack({ batchId: 14n, encoding: "native_zstd", bodyLimit: 50_000 }));
        assert.ok(!res.ok);
        assert.deepEqual(await storedRows(engine, database, 14n), []);
      });
    }
  } finally {
    await engine.run(`DROP DATABASE IF EXISTS ${database}`);
    await engine.close();
  }
});
