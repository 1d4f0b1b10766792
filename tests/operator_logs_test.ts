/**
 * What an operator sees: the recovery of an unknown outcome is logged at
 * info with how it was resolved and what it cost; repeated 503s from the
 * proxy end in one error naming CLICKHOUSE_SPACING_MS and a refusal counter.
 * The flusher talks to a stand-in ClickHouse on 127.0.0.1 that answers as
 * ch-proxy and ClickHouse do. kafkajs's own lines: lib/source/_kafka_log_test.ts.
 */
import assert from "node:assert/strict";
import { getTextFormatter, reset } from "@logtape/logtape";
import { ClickHouseClient } from "../lib/sink/clickhouse/clickhouse_client.ts";
import { Flusher } from "../lib/flusher.ts";
import { ClickHouseSink } from "../lib/sink/clickhouse/clickhouse_sink.ts";
import { type KvQueue, openQueue } from "../lib/queue/kv_queue.ts";
import { createMetrics } from "../lib/metrics.ts";
import { packBatch } from "../lib/sink/clickhouse/pack_batch.ts";
import { captureLogs } from "../testing/capture_logs.ts";
import { until } from "../testing/pipeline.ts";
import { stockRows } from "../testing/stock_rows.ts";

const ROWS = 50;

/** The rendered text of a record, as the text format writes it. */
const text = getTextFormatter();

/** A queue of 50 owned rows that knows its server: `version` (default 18.16.1). */
async function queueWithRows(version = "18.16.1"): Promise<KvQueue> {
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-operator-logs-" });
  const queue = await openQueue(`${dir}/q.kv`);
  await queue.setServer({ version, checkedAt: Date.now() });
  const entries = stockRows(ROWS, 3).map((row, i) => ({ offset: BigInt(i), row }));
  await queue.append("http_log", 0, entries, { next: BigInt(ROWS) });
  await queue.promote("http_log", 0, BigInt(ROWS));
  return queue;
}

const pack = (rows: Parameters<typeof packBatch>[0], batchId: bigint, serverVersion: string) =>
  packBatch(rows, { batchId, serverVersion });

/** A stand-in server answering each request with `answer(n, sql)` (n counts from 1). */
function standIn(
  answer: (n: number, sql: string) => Response | Promise<Response>,
): Deno.HttpServer<Deno.NetAddr> {
  let n = 0;
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    const sql = url.searchParams.get("query") ?? await req.text();
    await req.body?.cancel().catch(() => {});
    return answer(++n, sql);
  });
}

/** Runs `flusher` until every row of `queue` has landed, then stops it and the log capture. */
async function landAll(queue: KvQueue, flusher: Flusher): Promise<void> {
  flusher.start();
  try {
    await until(
      "the batch to land",
      async () => (await queue.stats()).landedRows === ROWS || undefined,
    );
  } finally {
    await flusher.stop({ graceMs: 1_000 });
    await reset();
  }
}

/** A 200 as ClickHouse sends it. */
const ok = (body = "") =>
  new Response(body, { status: 200, headers: { "X-ClickHouse-Summary": "{}" } });

Deno.test("Flusher logs at info how a crash's unknown outcome was resolved by a check, and its cost", async (t) => {
  const records = await captureLogs();
  await using queue = await queueWithRows();
  const batch = await queue.seal((rows, id) => pack(rows, id, "18.16.1"));
  assert.ok(batch !== null);
  // As left by a process killed with the INSERT on the wire.
  await queue.markSending(batch.id);
  await queue.setPacer({ lastConsumedAt: null, inflightSince: Date.now() - 120_000 });
  await using server = standIn((_, sql) =>
    /system\.processes/.test(sql) ? ok(`${ROWS}\t0\n`) : new Response("unexpected", { status: 500 })
  );
  const client = new ClickHouseClient(`http://127.0.0.1:${server.addr.port}`);
  const flusher = new Flusher(queue, new ClickHouseSink(client, { dedup: "check" }), {
    spacingMs: 10,
    marginMs: 0,
  });
  await t.step("the batch is confirmed stored by one check", () => landAll(queue, flusher));
  const info = records.filter((r) => r.level === "info").map((r) => text(r));
  await t.step("the crash's request in flight is named", () => {
    assert.ok(
      info.some((l) => /A request was on the wire since .* counting its proxy slot/.test(l)),
      info.join("\n"),
    );
  });
  await t.step("what was unknown and how it is resolved", () => {
    assert.ok(
      info.some((l) =>
        l.includes(String(batch.id)) && /unknown outcome \(state "?sending/.test(l) &&
        /check SELECT/.test(l)
      ),
      info.join("\n"),
    );
  });
  await t.step("the resolution and its cost in slots", () => {
    assert.ok(
      info.some((l) =>
        /was stored before its outcome was lost; not resending: unknown outcome resolved by check, all 50 rows stored; it cost 1 slots/
          .test(l)
      ),
      info.join("\n"),
    );
  });
});

Deno.test("Flusher logs at info an unknown outcome resolved by a token resend, and its cost", async () => {
  const records = await captureLogs();
  // Tokens need 23.3 or later: on 18.16 the flusher resolves by a check whatever CLICKHOUSE_DEDUP says.
  await using queue = await queueWithRows("26.9.2.1");
  const batch = await queue.seal((rows, id) => pack(rows, id, "26.9.2.1"));
  assert.ok(batch !== null);
  await queue.markState(batch.id, "unknown", "Cannot insert batch as the connection was reset");
  await using server = standIn(() => ok());
  const client = new ClickHouseClient(`http://127.0.0.1:${server.addr.port}`);
  const flusher = new Flusher(queue, new ClickHouseSink(client, { dedup: "token" }), {
    spacingMs: 10,
    marginMs: 0,
  });
  await landAll(queue, flusher);
  const info = records.filter((r) => r.level === "info").map((r) => text(r));
  assert.ok(
    info.some((l) => /connection was reset.*insert_deduplication_token/.test(l)),
    info.join("\n"),
  );
  assert.ok(
    info.some((l) => /resolved by a token resend \(50 rows stored once\); it cost 1 slots/.test(l)),
    info.join("\n"),
  );
});

Deno.test("Flusher diagnoses 503s in a row once, naming CLICKHOUSE_SPACING_MS, and counts them", async (t) => {
  const records = await captureLogs();
  await using queue = await queueWithRows();
  const metrics = createMetrics(queue);
  const seenInARow: number[] = [];
  let flusher: Flusher | null = null;
  let during = "";
  // nginx's limit_req refusal: a 503 without any X-ClickHouse-* header, four times, then a 200.
  await using server = standIn(async (n) => {
    seenInARow.push(flusher!.status().refusalsInARow);
    if (n === 5) during = await metrics.registry.metrics();
    return n <= 4
      ? new Response("<html>503 Service Temporarily Unavailable</html>", { status: 503 })
      : ok();
  });
  const client = new ClickHouseClient(`http://127.0.0.1:${server.addr.port}`);
  flusher = new Flusher(queue, new ClickHouseSink(client), {
    spacingMs: 10,
    marginMs: 0,
    refusalRetryMs: 10,
    onEvent: (e) => metrics.onFlush(e),
  });
  metrics.watch({
    nextRequestSeconds: () => 0,
    lag: () => ({}),
    backpressure: () => false,
    refusalsInARow: () => flusher!.status().refusalsInARow,
  });
  await landAll(queue, flusher);
  await t.step("the count rises with each refusal and resets on the answer", async () => {
    assert.deepEqual(seenInARow, [0, 1, 2, 3, 4]);
    assert.equal(flusher!.status().refusalsInARow, 0);
    assert.match(during, /anonymizer_clickhouse_refusals_in_a_row 4/);
    const after = await metrics.registry.metrics();
    assert.match(after, /anonymizer_clickhouse_refusals_total 4/);
    assert.match(after, /anonymizer_clickhouse_refusals_in_a_row 0/);
  });
  await t.step("one error after the third names CLICKHOUSE_SPACING_MS and the diagnosis", () => {
    const errors = records.filter((r) => r.level === "error").map((r) => text(r));
    assert.equal(errors.length, 1, errors.join("\n"));
    assert.match(errors[0]!, /refused 3 requests in a row/);
    assert.match(errors[0]!, /CLICKHOUSE_SPACING_MS=10/);
    assert.match(errors[0]!, /another client probably shares the proxy's per-IP limit/);
  });
});
