/**
 * Child process of heap_limit_test.ts: queues rows in a fresh KV file and
 * seals one batch from them, the largest single piece of work the service
 * does, so the test can run it under the service's V8 heap limits.
 *
 * ```sh
 * deno run <flags of deno task run> tests/_largest_seal_child.ts <kv path> <stock|long_urls> <server version>
 * ```
 *
 * - `stock`: 60,000 rows of the stock distribution; the seal is offered
 *   40,000 candidates, the flusher's first seal.
 * - `long_urls`: rows whose URL is at the validator's 8 KiB limit, random so
 *   that compression cannot shrink them, more than one seal may decode; the
 *   seal is asked for 40,000 candidates.
 *
 * Prints one JSON line: rows and bytes of the sealed batch, the rows offered
 * to the packer and the largest V8 heap seen.
 *
 * @module
 */
import { getHeapStatistics } from "node:v8";
import { openQueue } from "../lib/queue/kv_queue.ts";
import { packBatch } from "../lib/sink/clickhouse/pack_batch.ts";
import type { HttpLogRow } from "../lib/record/types.ts";
import { seededRandom } from "../testing/seeded_random.ts";
import { stockRows } from "../testing/stock_rows.ts";

const [path, scenario, serverVersion] = Deno.args;
if (path === undefined || (scenario !== "stock" && scenario !== "long_urls") || !serverVersion) {
  throw new Error(
    `Cannot run as the arguments must be <kv path> <stock|long_urls> <server version>: current value is ${
      JSON.stringify(Deno.args)
    }`,
  );
}

const TOPIC = "http_log";
const URL_BYTES = 8192;
const STOCK_ROWS = 60_000;
// 125 MB of rows, far more than one seal may decode.
const LONG_URL_ROWS = 16_000;
const SLICE = 500;

let heapMax = 0;
const sampleHeap = () => {
  heapMax = Math.max(heapMax, getHeapStatistics().used_heap_size);
};

/** Rows of `scenario` from `start`, at most `count`, built lazily so the child never holds them all. */
function rowsAt(start: number, count: number): HttpLogRow[] {
  if (scenario === "stock") return stockRowsAll.slice(start, start + count);
  const random = seededRandom(start + 1);
  const alphabet = new TextEncoder().encode("abcdefghijklmnopqrstuvwxyz0123456789");
  const bytes = new Uint8Array(URL_BYTES);
  const text = new TextDecoder();
  return stockRows(count, start + 1).map((row) => {
    bytes[0] = 0x2f;
    for (let i = 1; i < URL_BYTES; i++) {
      bytes[i] = alphabet[Math.floor(random() * alphabet.length)]!;
    }
    return { ...row, url: text.decode(bytes) };
  });
}

const stockRowsAll = scenario === "stock" ? stockRows(STOCK_ROWS, 1) : [];
const total = scenario === "stock" ? STOCK_ROWS : LONG_URL_ROWS;

const queue = await openQueue(path);
try {
  for (let start = 0; start < total; start += SLICE) {
    const rows = rowsAt(start, Math.min(SLICE, total - start));
    const entries = rows.map((row, i) => ({ offset: BigInt(start + i), row }));
    await queue.append(TOPIC, 0, entries, { next: BigInt(start + rows.length) });
    sampleHeap();
  }
  await queue.promote(TOPIC, 0, BigInt(total));
  let offered = 0;
  const batch = await queue.seal((rows, batchId) => {
    offered = rows.length;
    sampleHeap();
    const packed = packBatch(rows, { batchId, serverVersion });
    sampleHeap();
    return packed;
  }, { candidateRows: 40_000 });
  sampleHeap();
  const report = JSON.stringify({
    rows: batch?.rows ?? 0,
    bytes: batch?.bytes ?? 0,
    encoding: batch?.encoding ?? null,
    offered,
    heapMaxMb: Math.round(heapMax / 1_048_576),
    heapLimitMb: Math.round(getHeapStatistics().heap_size_limit / 1_048_576),
  });
  Deno.stdout.writeSync(new TextEncoder().encode(report + "\n"));
} finally {
  queue.close();
}
