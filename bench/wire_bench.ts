/**
 * Packs the stock distribution (tools/synthetic_records.ts, seeded) into
 * default-limit request bodies with the default encoding of ClickHouse 18.16
 * and of a modern server, and reports rows per request and packing cost.
 *
 * Usage: deno task bench:wire [--requests N] [--seed S] [--offered N]
 *
 * `--offered` (default 30,000) is the rows offered to each call. The default is
 * more than fit, as in a backlog; 12,600, what 200 msg/s queues between two
 * slots, measures a request below the ceiling, which every queued row fits.
 *
 * Progress goes to stderr; the last stdout line is the JSON report, also recorded in
 * bench/results/ (bench/_results.ts). `encode_ms`
 * is the CPU time (user + system) of one packBatch() call, the figure the CPU
 * budget counts; `encode_wall_ms` is its wall time.
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { packBatch } from "../lib/sink/clickhouse/pack_batch.ts";
import { stockRows } from "../testing/stock_rows.ts";
import { recordResults } from "./_results.ts";

const BODY_LIMIT = 1_048_576;
/** Untimed packs first, so the JIT has compiled the hot loops. */
const WARMUP_REQUESTS = 2;
const { values } = parseArgs({
  args: Deno.args,
  options: {
    requests: { type: "string", default: "10" },
    seed: { type: "string", default: "1" },
    offered: { type: "string", default: "30000" },
  },
});
const requests = Number(values.requests);
const seed = Number(values.seed);
const offeredRows = Number(values.offered);
if (
  !Number.isInteger(requests) || requests < 1 || !Number.isInteger(offeredRows) || offeredRows < 1
) {
  throw new Error(
    `Cannot run as --requests and --offered must be integers ≥ 1: current values are ${values.requests}, ${values.offered}`,
  );
}

function cpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

const rows = stockRows(
  offeredRows + (WARMUP_REQUESTS + requests) * Math.min(offeredRows, 21_000),
  seed,
);
const encoder = new TextEncoder();
const results = [];
// The versions of the two servers of the test matrix, which accept these bodies in
// tests/wire_clickhouse_test.ts; packing itself needs no server.
for (const serverVersion of ["18.16.1", "26.9.2.1"]) {
  let offset = 0;
  let rowTotal = 0, byteTotal = 0, cpuTotal = 0, wallTotal = 0;
  let encoding = "";
  for (let i = 0; i < WARMUP_REQUESTS + requests; i++) {
    const offered = rows.slice(offset, offset + offeredRows);
    const cpu0 = cpuMs(), wall0 = performance.now();
    const packed = packBatch(offered, { batchId: BigInt(i), serverVersion, bodyLimit: BODY_LIMIT });
    const cpu = cpuMs() - cpu0, wall = performance.now() - wall0;
    offset += packed.rowCount;
    encoding = packed.encoding;
    if (i < WARMUP_REQUESTS) continue;
    rowTotal += packed.rowCount;
    byteTotal += packed.body.length;
    cpuTotal += cpu;
    wallTotal += wall;
    Deno.stderr.writeSync(encoder.encode(
      `${serverVersion} ${encoding}: ${packed.rowCount} rows, ${packed.body.length} bytes, ` +
        `${cpu.toFixed(1)} ms CPU\n`,
    ));
  }
  results.push({
    server_version: serverVersion,
    encoding,
    requests,
    rows_per_request: Math.round(rowTotal / requests),
    bytes_per_row: Number((byteTotal / rowTotal).toFixed(2)),
    fill_ratio: Number((byteTotal / requests / BODY_LIMIT).toFixed(4)),
    encode_ms: Number((cpuTotal / requests).toFixed(1)),
    encode_wall_ms: Number((wallTotal / requests).toFixed(1)),
  });
}
const report = { seed, body_limit: BODY_LIMIT, offered_rows: offeredRows, results };
await recordResults("wire", report);
Deno.stdout.writeSync(encoder.encode(JSON.stringify({ bench: "wire", ...report }) + "\n"));
