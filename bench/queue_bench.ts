/**
 * KV bytes per queued row: fills a fresh KV queue with stock rows, appended
 * and promoted as the Kafka source does, and divides the KV files' size by
 * the rows queued. No service, Kafka or ClickHouse is involved, so the figure
 * is the queue's own: its value format, chunk size and SQLite's overhead.
 *
 * ```sh
 * deno task bench:queue [--rows 1008000] [--append-rows 300,6000] [--seed 2]
 * ```
 *
 * Each `--append-rows` size is one run over a new KV: 300 rows per append is
 * live traffic at 300 rows/s (the source fetches at least 64 KiB or waits a
 * second); 6000 is a fetch of 1 MiB, as when a backlog is read back from
 * Kafka. `--rows` defaults to an hour at 280 rows/s, as bench:backlog.
 *
 * Figures per run: `kv_bytes_per_row` (KV database + WAL + SHM, read while
 * the queue is open, as bench:backlog does), `kv_main_file_bytes_per_row`
 * after closing, and `append_ms_per_million`: wall time of the appends and
 * promotions alone, not of building the rows. Benchmarks measure; nothing
 * here asserts a figure. Progress goes to stderr; the last stdout line is the
 * JSON report, also written to bench/results/queue-<stamp>.json.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { recordResults } from "./_results.ts";
import { kvDiskBytes, progress, round } from "./_service_bench.ts";
import { openQueue, type QueueEntry } from "../lib/queue/kv_queue.ts";
import { toRow } from "../lib/record/validate.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import { STOCK_NOW } from "../testing/stock_rows.ts";
import { AnonymizerError } from "../lib/errors.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rows: { type: "string", default: String(280 * 3600) },
    "append-rows": { type: "string", default: "300,6000" },
    seed: { type: "string", default: "2" },
  },
});
const rows = Number(values.rows);
const seed = Number(values.seed);
const appendSizes = values["append-rows"].split(",").map(Number);
if (
  !Number.isInteger(rows) || rows < 1 || !appendSizes.every((n) => Number.isInteger(n) && n > 0)
) {
  throw new AnonymizerError(
    "Cannot run as --rows and each --append-rows must be integers ≥ 1: current value is " +
      JSON.stringify([values.rows, values["append-rows"]]),
    { code: "invalid_option" },
  );
}

const TOPIC = "http_log";
const MIB = 1_048_576;

/** Stock rows as the service queues them, `size` per Kafka batch, with consecutive offsets. */
function* kafkaBatches(size: number): Generator<QueueEntry[]> {
  let offset = 0n;
  let batch: QueueEntry[] = [];
  let left = rows;
  for (const record of syntheticRecords({ seed, now: STOCK_NOW })) {
    const result = toRow(record, { now: STOCK_NOW });
    if (!result.ok) continue;
    batch.push({ offset: offset++, row: result.row });
    if (--left === 0) break;
    if (batch.length === size) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

const runs = [];
for (const size of appendSizes) {
  const dir = await Deno.makeTempDir({ prefix: "queue_bench_" });
  const path = `${dir}/queue.sqlite3`;
  try {
    let appendMs = 0;
    let queued = 0;
    let kvBytes = 0;
    {
      await using queue = await openQueue(path);
      for (const batch of kafkaBatches(size)) {
        const next = batch.at(-1)!.offset + 1n;
        const start = performance.now();
        queued += await queue.append(TOPIC, 0, batch, { next });
        await queue.promote(TOPIC, 0, next);
        appendMs += performance.now() - start;
      }
      kvBytes = await kvDiskBytes(path);
      if ((await queue.stats()).queuedRows !== queued) {
        throw new AnonymizerError(
          `Cannot report as the queue holds another count of rows: current value is ${queued}`,
          { code: "results_invalid" },
        );
      }
    }
    const mainBytes = (await Deno.stat(path)).size;
    const run = {
      append_rows: size,
      rows: queued,
      kv_mb: round(kvBytes / MIB, 1),
      kv_bytes_per_row: round(kvBytes / queued, 1),
      kv_main_file_bytes_per_row: round(mainBytes / queued, 1),
      append_ms_per_million: Math.round(appendMs / queued * 1e6),
    };
    progress(`append ${size} rows at a time: ${JSON.stringify(run)}`);
    runs.push(run);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const report = { bench: "queue", seed, runs };
await recordResults("queue", report);
Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(report) + "\n"));
