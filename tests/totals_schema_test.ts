/**
 * The totals views on http_log, applied as migrate applies them, on the stack's ClickHouse
 * (`TEST_CLICKHOUSE_URL`, 18.16 in the stack) and on chDB (modern): every totals table sums
 * exactly the rows that landed in http_log, each landed row once, and the dashboard queries of
 * schema/queries/ read those sums.
 */
import assert from "node:assert/strict";
import { bindQuery, type ParamValue, readDashboardQuery } from "../tools/dashboard_query.ts";
import { type Engine, openHttpEngine, sqlRunner } from "../testing/sql_engines.ts";
import { CLICKHOUSE_URL, uniqueName } from "../testing/stack.ts";
import { migrate } from "../lib/sink/clickhouse/migrate.ts";

/** 2023-11-14 22:00:00 UTC, an hour boundary. */
const HOUR = 1_699_999_200;

interface LogRow {
  timestamp: number;
  resourceId: bigint;
  bytesSent: number;
  requestTimeMilli: number;
  status: number;
  cache: string;
  addr: string;
}

// Rows share minutes, hours, resources and networks so that every view must sum some of them,
// and the last sits at the largest stock values.
// deno-fmt-ignore
const ROWS: LogRow[] = [
  { timestamp: HOUR + 5, resourceId: 100_000_001n, bytesSent: 1000, requestTimeMilli: 10, status: 200, cache: "HIT", addr: "10.1.2.X" },
  { timestamp: HOUR + 30, resourceId: 100_000_001n, bytesSent: 2000, requestTimeMilli: 20, status: 200, cache: "HIT", addr: "10.1.2.X" },
  { timestamp: HOUR + 70, resourceId: 100_000_001n, bytesSent: 4000, requestTimeMilli: 40, status: 404, cache: "MISS", addr: "10.1.3.X" },
  { timestamp: HOUR + 3599, resourceId: 100_000_002n, bytesSent: 8000, requestTimeMilli: 80, status: 200, cache: "MISS", addr: "10.1.2.X" },
  { timestamp: HOUR + 3600, resourceId: 100_000_002n, bytesSent: 16000, requestTimeMilli: 160, status: 502, cache: "BYPASS", addr: "10.1.2.X" },
  { timestamp: HOUR + 7201, resourceId: 999_999_999n, bytesSent: 2 ** 21 - 1, requestTimeMilli: 30000, status: 504, cache: "SCARCE", addr: "255.255.255.X" },
];

/** One totals view: its key columns as SQL and the same key computed from a row. */
const VIEWS: Record<string, { keySql: string; key: (row: LogRow) => unknown[] }> = {
  http_log_totals_1m: {
    keySql: "toUInt32(minute), response_status, cache_status",
    key: (row) => [row.timestamp - row.timestamp % 60, row.status, row.cache],
  },
  http_log_totals_resource_1h: {
    keySql: "toUInt32(hour), resource_id",
    key: (row) => [row.timestamp - row.timestamp % 3600, row.resourceId],
  },
  http_log_totals_ip_1h: {
    keySql: "remote_addr, toUInt32(hour), response_status, cache_status",
    key: (row) => [row.addr, row.timestamp - row.timestamp % 3600, row.status, row.cache],
  },
  http_log_totals_resource_ip_1h: {
    keySql: "resource_id, toUInt32(hour), remote_addr, response_status, cache_status",
    key: (
      row,
    ) => [row.resourceId, row.timestamp - row.timestamp % 3600, row.addr, row.status, row.cache],
  },
};

function insertStatement(database: string, batchId: number, settings = ""): string {
  const values = ROWS.map((r) =>
    `(${r.timestamp}, ${r.resourceId}, ${r.bytesSent}, ${r.requestTimeMilli}, ${r.status}, ` +
    `'${r.cache}', 'GET', '${r.addr}', '/a/b.jpg', ${batchId})`
  );
  return `INSERT INTO ${database}.http_log (timestamp, resource_id, bytes_sent, ` +
    `request_time_milli, response_status, cache_status, method, remote_addr, url, batch_id) ` +
    `${settings} VALUES ${values.join(", ")}`;
}

/** TSV lines `key... requests bytes_sent request_time_milli`, sorted, for `copies` of ROWS. */
function expectedTotals(key: (row: LogRow) => unknown[], copies: number): string[] {
  const sums = new Map<string, number[]>();
  for (const row of ROWS) {
    const k = key(row).join("\t");
    const [requests = 0, bytes = 0, millis = 0] = sums.get(k) ?? [];
    sums.set(k, [
      requests + copies,
      bytes + copies * row.bytesSent,
      millis + copies * row.requestTimeMilli,
    ]);
  }
  return [...sums].map(([k, v]) => `${k}\t${v.join("\t")}`).sort();
}

async function assertTotals(engine: Engine, database: string, copies: number): Promise<void> {
  for (const [view, { keySql, key }] of Object.entries(VIEWS)) {
    const { data } = await engine.run(
      `SELECT ${keySql}, sum(requests), sum(bytes_sent), sum(request_time_milli) ` +
        `FROM ${database}.${view} GROUP BY ${keySql}`,
    );
    assert.deepEqual(data.trim().split("\n").sort(), expectedTotals(key, copies), view);
  }
}

/** Runs a dashboard query; returns its rows without the first column (time, in server zone). */
async function dashboard(
  engine: Engine,
  database: string,
  name: string,
  params: Record<string, ParamValue>,
): Promise<string[][]> {
  const sql = bindQuery(await readDashboardQuery(name), { database, params });
  const { data } = await engine.run(sql);
  return data.trim().split("\n").map((line) => line.split("\t"));
}

async function assertDashboards(engine: Engine, database: string, copies: number): Promise<void> {
  const range = { from: HOUR, to: HOUR + 86_400, step: 60 };
  const traffic = await dashboard(engine, database, "traffic_over_time", range);
  const total = (rows: string[][], column: number) =>
    rows.reduce((sum, row) => sum + Number(row[column]), 0);
  assert.equal(total(traffic, 1), copies * ROWS.length);
  assert.equal(total(traffic, 2), copies * ROWS.reduce((sum, r) => sum + r.bytesSent, 0));

  const byCache = await dashboard(engine, database, "cache_status_over_time", range);
  assert.equal(total(byCache.filter((row) => row[1] === "HIT"), 2), copies * 2);
  const byStatus = await dashboard(engine, database, "status_codes_over_time", range);
  assert.equal(total(byStatus.filter((row) => row[1] === "200"), 2), copies * 3);

  // The hour starting at HOUR: resource ...002 sent 8000 bytes, ...001 sent 7000.
  const top = await dashboard(engine, database, "top_resources", { from: HOUR + 600 });
  assert.deepEqual(top, [
    ["100000002", String(copies * 8000), String(copies)],
    ["100000001", String(copies * 7000), String(copies * 3)],
  ]);

  const ip = await dashboard(engine, database, "ip_totals", { ...range, remote_addr: "10.1.2.X" });
  assert.deepEqual(ip, [[String(copies * 4), String(copies * 27000), "67.5"]]);

  const resource = await dashboard(engine, database, "resource_day", {
    ...range,
    resource_id: "100000002",
  });
  assert.deepEqual(resource.map((row) => row.slice(1)), [
    [String(copies), String(copies * 8000), "80"],
    [String(copies), String(copies * 16000), "160"],
  ]);

  // Every subset of the four dimensions, looked up with the values of the first row.
  const first = ROWS[0]!;
  const dimensions = [
    {
      param: "resource_id",
      value: String(first.resourceId),
      matches: (r: LogRow) => r.resourceId === first.resourceId,
    },
    { param: "remote_addr", value: first.addr, matches: (r: LogRow) => r.addr === first.addr },
    {
      param: "response_status",
      value: String(first.status),
      matches: (r: LogRow) => r.status === first.status,
    },
    { param: "cache_status", value: first.cache, matches: (r: LogRow) => r.cache === first.cache },
  ];
  for (let mask = 0; mask < 16; mask++) {
    const chosen = dimensions.filter((_, i) => (mask & (1 << i)) !== 0);
    const params: Record<string, ParamValue> = { ...range };
    for (const d of dimensions) params[d.param] = chosen.includes(d) ? d.value : "";
    const rows = await dashboard(engine, database, "combination_totals", params);
    const expected = ROWS.filter((r) => chosen.every((d) => d.matches(r)));
    const label = chosen.map((d) => d.param).join("+") || "none";
    assert.deepEqual(
      [total(rows, 1), total(rows, 2)],
      [copies * expected.length, copies * expected.reduce((sum, r) => sum + r.bytesSent, 0)],
      label,
    );
  }
}

async function checkEngine(t: Deno.TestContext, engine: Engine, database: string) {
  await t.step("migrate() creates http_log and the totals views", async () => {
    await migrate(sqlRunner(engine), { database });
  });
  await t.step("one landed batch is summed by every totals view", async () => {
    await engine.run(insertStatement(database, 1));
    await assertTotals(engine, database, 1);
  });
  await t.step("the same rows landed again in another batch double every total", async () => {
    await engine.run(insertStatement(database, 2));
    await assertTotals(engine, database, 2);
  });
  await t.step("the dashboard queries read the totals", async () => {
    await assertDashboards(engine, database, 2);
  });
  if (!engine.modern) return;
  await t.step("a batch resent with its deduplication token counts once", async () => {
    const settings = "SETTINGS insert_deduplication_token = 'totals-test-3', " +
      "deduplicate_blocks_in_dependent_materialized_views = 1";
    await engine.run(insertStatement(database, 3, settings));
    await engine.run(insertStatement(database, 3, settings));
    await assertTotals(engine, database, 3);
  });
}

Deno.test("totals views count every row landed in http_log once, on the stack's ClickHouse", async (t) => {
  const engine = await openHttpEngine(CLICKHOUSE_URL);
  const database = uniqueName("totals_test");
  try {
    await checkEngine(t, engine, database);
  } finally {
    await engine.run(`DROP DATABASE IF EXISTS ${database}`);
    await engine.close();
  }
});
