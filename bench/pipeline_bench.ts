/**
 * Per-record CPU of the pure middle of the pipeline, with a real Deno KV in a
 * temp dir and no Kafka, ClickHouse or proxy:
 *
 * a. `messageToRow()` of encoded stock records, one Kafka batch of messages
 *    per iteration;
 * b. `KvQueue.append()` of one Kafka batch of rows, then `promote()`, as the
 *    source does after each batch's offset commit;
 * c. `KvQueue.seal()` with the service's packer call (`packBatch` at the 1 MiB
 *    default, ClickHouse 18.16's encoding, candidate rows sized from the last
 *    batch as the flusher does), then `markLanded()`.
 *
 * Usage: deno bench -A bench/pipeline_bench.ts
 *
 * `PIPELINE_BENCH_BATCH=n` sets the rows per Kafka batch (default 200); the
 * service's fetches (`minBytes` 64 KiB, `maxWaitTimeInMs` 1000) bring about a
 * second of traffic per partition, ~93 rows at 280 msg/s over 3 partitions.
 *
 * `deno bench` times each iteration in wall time. As KV does its SQLite work
 * on other threads, the bench also counts process CPU (user + system, all
 * threads) around the measured part of every iteration after the first few,
 * and prints µs of CPU and of wall time per record for each stage and their
 * sum as one JSON line on stdout when the process exits.
 *
 * @module
 */

import process from "node:process";
import { encodeRecord } from "../tools/encode_record.ts";
import { type KvQueue, openQueue, type QueueEntry } from "../lib/queue/kv_queue.ts";
import { messageToRow } from "../lib/record/message_to_row.ts";
import { packBatch } from "../lib/sink/clickhouse/pack_batch.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import type { HttpLogRow } from "../lib/record/types.ts";

const KAFKA_BATCH = Number(Deno.env.get("PIPELINE_BENCH_BATCH") ?? 200);
const PARTITIONS = 3;
const TOPIC = "http_log";
const BODY_LIMIT = 1_048_576;
const SERVER_VERSION = "18.16.1";
/** The flusher's first-seal default; later seals follow the last batch (lib/flusher.ts). */
const FIRST_CANDIDATE_ROWS = 40_000;
const POOL = 20_000;
if (!Number.isInteger(KAFKA_BATCH) || KAFKA_BATCH < 1) {
  throw new Error(
    `PIPELINE_BENCH_BATCH must be a positive integer: current value is ${KAFKA_BATCH}`,
  );
}
/** Iterations per stage left out of the CPU figures while the JIT warms up. */
const SKIP = { decode: 50, append: 50, seal: 1 } as const;

const now = Date.now();
const records = syntheticRecords({ seed: 1, now }).take(POOL).toArray();
// kafkajs hands out Buffers viewing one fetch response; the source wraps each in a Uint8Array.
const encoded = records.map(encodeRecord);
const response = new Uint8Array(encoded.reduce((n, m) => n + m.length, 0));
const messages: Uint8Array[] = [];
{
  let at = 0;
  for (const m of encoded) {
    response.set(m, at);
    messages.push(new Uint8Array(response.buffer, at, m.length));
    at += m.length;
  }
}
const rows: HttpLogRow[] = messages.map((m) => {
  const r = messageToRow(m);
  if (!r.ok) throw new Error(`Cannot use a synthetic record in the bench: ${r.message}`);
  return r.row;
});

interface Tally {
  calls: number;
  records: number;
  cpuUs: number;
  wallUs: number;
}
const tallies: Record<keyof typeof SKIP, Tally> = {
  decode: { calls: 0, records: 0, cpuUs: 0, wallUs: 0 },
  append: { calls: 0, records: 0, cpuUs: 0, wallUs: 0 },
  seal: { calls: 0, records: 0, cpuUs: 0, wallUs: 0 },
};
const sealStats = { batches: 0, rows: 0, bytes: 0 };

function cpuUs(): number {
  const { user, system } = process.cpuUsage();
  return user + system;
}

/** Runs `f`, counting its CPU and wall time against `stage` once past the warm-up. */
async function measured<T>(
  stage: keyof typeof SKIP,
  records: (result: T) => number,
  f: () => T | Promise<T>,
): Promise<T> {
  const cpu0 = cpuUs();
  const wall0 = performance.now();
  const result = await f();
  const wall = (performance.now() - wall0) * 1000;
  const cpu = cpuUs() - cpu0;
  const t = tallies[stage];
  if (++t.calls > SKIP[stage]) {
    t.records += records(result);
    t.cpuUs += cpu;
    t.wallUs += wall;
  }
  return result;
}

const dir = await Deno.makeTempDir({ prefix: "pipeline_bench_" });
const appendQueue = await openQueue(`${dir}/append.sqlite3`);
const sealQueue = await openQueue(`${dir}/seal.sqlite3`);

globalThis.addEventListener("unload", () => {
  appendQueue.close();
  sealQueue.close();
  Deno.removeSync(dir, { recursive: true });
  const per = (t: Tally) => ({
    cpu_us_per_record: round(t.cpuUs / t.records),
    wall_us_per_record: round(t.wallUs / t.records),
    records: t.records,
  });
  const stages = {
    message_to_row: per(tallies.decode),
    append_promote: per(tallies.append),
    seal_pack_land: per(tallies.seal),
  };
  const total = Object.values(stages).reduce(
    (s, v) => ({ cpu: s.cpu + v.cpu_us_per_record, wall: s.wall + v.wall_us_per_record }),
    { cpu: 0, wall: 0 },
  );
  Deno.stdout.writeSync(new TextEncoder().encode(
    JSON.stringify({
      bench: "pipeline",
      ...stages,
      total_cpu_us_per_record: round(total.cpu),
      total_wall_us_per_record: round(total.wall),
      rows_per_batch: Math.round(sealStats.rows / sealStats.batches),
      bytes_per_batch: Math.round(sealStats.bytes / sealStats.batches),
    }) + "\n",
  ));
});

function round(x: number): number {
  return Number(x.toFixed(2));
}

let decodeAt = 0;
Deno.bench(`a. messageToRow() × ${KAFKA_BATCH} (one Kafka batch)`, { n: 2_000 }, async () => {
  await measured("decode", () => KAFKA_BATCH, () => {
    for (let i = 0; i < KAFKA_BATCH; i++) {
      const r = messageToRow(messages[decodeAt++ % POOL]!);
      if (!r.ok) throw new Error(r.message);
    }
  });
});

/** Next offset per partition of each queue. */
const nextOffset = new Map<KvQueue, bigint[]>([
  [appendQueue, new Array(PARTITIONS).fill(0n)],
  [sealQueue, new Array(PARTITIONS).fill(0n)],
]);
let rowAt = 0;
let partitionAt = 0;

/** Appends and owns one Kafka batch of rows on the next partition, round robin. */
async function appendBatch(queue: KvQueue): Promise<number> {
  const partition = partitionAt++ % PARTITIONS;
  const offsets = nextOffset.get(queue)!;
  const first = offsets[partition]!;
  const entries: QueueEntry[] = [];
  for (let i = 0; i < KAFKA_BATCH; i++) {
    entries.push({ offset: first + BigInt(i), row: rows[rowAt++ % POOL]! });
  }
  const next = first + BigInt(KAFKA_BATCH);
  const n = await queue.append(TOPIC, partition, entries, { next });
  await queue.promote(TOPIC, partition, next);
  offsets[partition] = next;
  return n;
}

Deno.bench(`b. KvQueue.append() of ${KAFKA_BATCH} rows + promote()`, { n: 1_000 }, async () => {
  await measured("append", (n) => n, () => appendBatch(appendQueue));
});

let queued = 0;
let bytesPerRow = 0;
Deno.bench(
  "c. KvQueue.seal() with packBatch() at 1 MiB + markLanded()",
  { n: 12, warmup: 1 },
  async (b) => {
    const candidateRows = bytesPerRow > 0
      ? Math.ceil((BODY_LIMIT / bytesPerRow) * 1.25)
      : FIRST_CANDIDATE_ROWS;
    // Keep a backlog deeper than the candidates, as a saturated queue has.
    while (queued < candidateRows + KAFKA_BATCH * 10) queued += await appendBatch(sealQueue);
    b.start();
    const batch = await measured("seal", (m) => m.rows, async () => {
      const meta = await sealQueue.seal(
        (offered, batchId) =>
          packBatch(offered, {
            batchId,
            serverVersion: SERVER_VERSION,
            bodyLimit: BODY_LIMIT,
            database: "default",
          }),
        { candidateRows },
      );
      if (meta === null) throw new Error("Cannot seal: no owned rows queued");
      await sealQueue.markLanded(meta.id);
      return meta;
    });
    b.end();
    queued -= batch.rows;
    bytesPerRow = batch.bytes / batch.rows;
    sealStats.batches++;
    sealStats.rows += batch.rows;
    sealStats.bytes += batch.bytes;
  },
);
