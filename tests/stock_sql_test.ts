/**
 * The benches generate big data server-side with testing/stock_sql.ts; these checks keep it the
 * stock distribution of tools/synthetic_records.ts as far as disk is concerned: the same number of
 * rows from each takes the same bytes per row in http_log, within 5%, on each server.
 */
import assert from "node:assert/strict";
import { type Engine, openHttpEngine } from "../testing/sql_engines.ts";
import { stockInsertSql } from "../testing/stock_sql.ts";
import { resolveTemplate } from "../lib/sink/clickhouse/migrate.ts";
import { CLICKHOUSE_TARGETS, uniqueName } from "../testing/stack.ts";
import { STOCK_NOW, stockRows } from "../testing/stock_rows.ts";

const ROWS = 200_000;
const SCHEMA = new URL("../schema/clickhouse/010_http_log.sql", import.meta.url);
const COLUMNS = "timestamp, resource_id, bytes_sent, request_time_milli, response_status, " +
  "cache_status, method, remote_addr, url, batch_id";

async function createTable(engine: Engine, database: string): Promise<void> {
  await engine.run(`CREATE DATABASE ${database}`);
  const ddl = await Deno.readTextFile(SCHEMA);
  await engine.run(resolveTemplate(ddl, { database, version: engine.version }));
}

/** Rows, bytes on disk and bytes per column of http_log in `database`, merged into one part. */
async function diskUsage(engine: Engine, database: string) {
  await engine.run(`OPTIMIZE TABLE ${database}.http_log FINAL`);
  const parts = await engine.run(
    `SELECT sum(rows), sum(bytes_on_disk) FROM system.parts
     WHERE database = '${database}' AND table = 'http_log' AND active`,
  );
  const [rows = "0", bytes = "0"] = parts.data.trim().split("\t");
  const columns = await engine.run(
    `SELECT name, data_compressed_bytes FROM system.columns
     WHERE database = '${database}' AND table = 'http_log' ORDER BY name`,
  );
  return {
    rows: Number(rows),
    bytesPerRow: Number(bytes) / Number(rows),
    columns: Object.fromEntries(
      columns.data.trim().split("\n").map((line) => line.split("\t")).map((
        [name = "", compressed = "0"],
      ) => [name, Math.round(Number(compressed) / Number(rows) * 10) / 10]),
    ),
  };
}

for (const target of CLICKHOUSE_TARGETS) {
  Deno.test(`stockInsertSql() rows take the disk of syntheticRecords() rows on ClickHouse ${target.name}`, async (t) => {
    const engine = await openHttpEngine(target.url);
    const typescript = uniqueName("stock_ts");
    const sql = uniqueName("stock_sql");
    try {
      await t.step("the TypeScript generator's rows are stored", async () => {
        await createTable(engine, typescript);
        const lines = stockRows(ROWS, 7).map((r) =>
          [
            r.timestamp,
            r.resourceId,
            r.bytesSent,
            r.requestTimeMilli,
            r.responseStatus,
            r.cacheStatus,
            r.method,
            r.remoteAddr,
            r.url,
            1,
          ].join("\t")
        );
        await engine.run(
          `INSERT INTO ${typescript}.http_log (${COLUMNS}) FORMAT TabSeparated\n` +
            lines.join("\n") + "\n",
        );
      });
      await t.step("as many rows are generated server-side over the same hour", async () => {
        await createTable(engine, sql);
        await engine.run(
          stockInsertSql(`${sql}.http_log`, ROWS, { last: Math.floor(STOCK_NOW / 1000) }),
        );
      });
      await t.step("bytes per row on disk agree within 5%", async () => {
        const ts = await diskUsage(engine, typescript);
        const server = await diskUsage(engine, sql);
        assert.equal(ts.rows, ROWS);
        assert.equal(server.rows, ROWS);
        const ratio = server.bytesPerRow / ts.bytesPerRow;
        assert.ok(
          Math.abs(ratio - 1) <= 0.05,
          `server-side ${server.bytesPerRow.toFixed(2)} B/row vs TypeScript ${
            ts.bytesPerRow.toFixed(2)
          } B/row (ratio ${ratio.toFixed(3)}); per column, server-side ${
            JSON.stringify(server.columns)
          }, TypeScript ${JSON.stringify(ts.columns)}`,
        );
      });
    } finally {
      await engine.run(`DROP DATABASE IF EXISTS ${typescript}`);
      await engine.run(`DROP DATABASE IF EXISTS ${sql}`);
      await engine.close();
    }
  });
}
