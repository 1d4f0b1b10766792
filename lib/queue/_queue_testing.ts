/**
 * Helpers of the queue's unit tests: rows with traceable ids, a packer that
 * records what it was offered, draining, and exactly-once checks.
 *
 * @module
 */
import assert from "node:assert/strict";
import { QueueError } from "../errors.ts";
import type { HttpLogRow } from "../record/types.ts";
import type { BatchMeta, KvQueue, PackResult, QueueEntry } from "./kv_queue.ts";
import { decodeRows, encodeRows } from "./_row_binary.ts";
import { chunkPartitionPrefix, parseChunkKey } from "./keys.ts";

export const TOPIC = "http_log";
export const DAY = 86_400;
/** 2023-11-14T00:00:00Z, the start of a UTC day. */
export const DAY0 = 19_675 * DAY;

/** A clock tests move by hand, so enqueue order does not depend on timing. */
export class Clock {
  constructor(public ms = 1_000_000) {}
  readonly now = (): number => this.ms;
}

/** A temp directory holding one KV file, removed with everything in it. */
export async function tempKv(): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "kv_queue_test_" });
  return {
    path: `${dir}/queue.sqlite3`,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** Keys under `prefix`, read through a second connection as an operator would. */
export async function rawKeys(path: string, prefix: Deno.KvKey): Promise<Deno.KvKey[]> {
  using kv = await Deno.openKv(path);
  return await Array.fromAsync(kv.list({ prefix }), (e) => e.key);
}

/** First offsets of the chunks of a partition, in key order. */
export async function chunkOffsets(path: string, partition: number): Promise<bigint[]> {
  return (await rawKeys(path, chunkPartitionPrefix(TOPIC, partition))).map(parseChunkKey);
}

/** Row ids are unique across partitions so a lost or doubled row is visible. */
export function rowId(partition: number, offset: number): bigint {
  return BigInt(partition * 1_000_000 + offset);
}

export function row(
  partition: number,
  offset: number,
  overrides: Partial<HttpLogRow> = {},
): HttpLogRow {
  return {
    timestamp: DAY0 + offset,
    resourceId: rowId(partition, offset),
    bytesSent: BigInt(offset * 10),
    requestTimeMilli: 7n,
    responseStatus: 200,
    cacheStatus: "HIT",
    method: "GET",
    remoteAddr: "10.0.0.X",
    url: `/p${partition}/o${offset}`,
    ...overrides,
  };
}

/** Entries for offsets `first` up to but not including `end`. */
export function entries(
  partition: number,
  first: number,
  end: number,
  overrides: (offset: number) => Partial<HttpLogRow> = () => ({}),
): QueueEntry[] {
  const out: QueueEntry[] = [];
  for (let o = first; o < end; o++) {
    out.push({ offset: BigInt(o), row: row(partition, o, overrides(o)) });
  }
  return out;
}

/** Appends offsets `first..end-1` and promotes them, as after a successful Kafka commit. */
export async function appendOwned(
  queue: KvQueue,
  partition: number,
  first: number,
  end: number,
  overrides?: (offset: number) => Partial<HttpLogRow>,
): Promise<number> {
  const n = await queue.append(TOPIC, partition, entries(partition, first, end, overrides), {
    next: BigInt(end),
  });
  await queue.promote(TOPIC, partition, BigInt(end));
  return n;
}

/** A packer that takes the first `take` offered rows and records what it saw. */
export class Packer {
  readonly offered: HttpLogRow[][] = [];
  readonly batchIds: bigint[] = [];
  constructor(readonly take = Infinity, readonly body?: Uint8Array) {}

  readonly pack = (rows: HttpLogRow[], batchId: bigint): PackResult => {
    this.offered.push(rows);
    this.batchIds.push(batchId);
    const rowCount = Math.min(this.take, rows.length);
    return {
      body: this.body ?? encodeRows(rows.slice(0, rowCount)),
      rowCount,
      encoding: "row_binary",
      query: { query: "INSERT INTO http_log FORMAT RowBinary" },
      headers: { "X-Test": "1" },
    };
  };
}

export const ids = (rows: readonly HttpLogRow[]): bigint[] => rows.map((r) => r.resourceId);
export const utcDay = (seconds: number): number => Math.floor(seconds / DAY);

/** Ids of rows `first..end-1` of a partition. */
export function idRange(partition: number, first: number, end: number): bigint[] {
  return Array.from({ length: end - first }, (_, i) => rowId(partition, first + i));
}

/**
 * Seals and lands batches until the queue is empty, checking on the way that
 * each batch holds one UTC day; returns the rows landed, in order.
 */
export async function drain(
  queue: KvQueue,
  options: { take?: number; candidateRows?: number } = {},
): Promise<{ rows: HttpLogRow[]; batches: BatchMeta[] }> {
  const rows: HttpLogRow[] = [];
  const batches: BatchMeta[] = [];
  for (let i = 0; i < 10_000; i++) {
    const batch = await queue.seal(new Packer(options.take).pack, options);
    if (batch === null) return { rows, batches };
    const got = decodeRows(await queue.body(batch));
    assert.equal(got.length, batch.rows);
    assert.equal(new Set(got.map((r) => utcDay(r.timestamp))).size, 1, "one UTC day per batch");
    rows.push(...got);
    batches.push(batch);
    await queue.markLanded(batch.id);
  }
  throw new Error("The queue did not drain in 10000 batches");
}

/** Compares row ids as multisets and names the first few lost, doubled or unexpected ones. */
export function assertExactlyOnce(got: readonly bigint[], want: readonly bigint[]): void {
  const seen = new Map<bigint, number>();
  for (const id of got) seen.set(id, (seen.get(id) ?? 0) + 1);
  const wanted = new Set(want);
  const summary = (list: bigint[]) => ({ count: list.length, first: list.slice(0, 5) });
  assert.deepEqual({
    lost: summary(want.filter((id) => !seen.has(id))),
    doubled: summary([...seen].filter(([, n]) => n > 1).map(([id]) => id)),
    unexpected: summary([...seen.keys()].filter((id) => !wanted.has(id))),
  }, { lost: summary([]), doubled: summary([]), unexpected: summary([]) });
  assert.equal(got.length, want.length);
}

export async function assertQueueError(p: Promise<unknown>, code: string): Promise<QueueError> {
  const err = await p.then(
    () => assert.fail(`expected QueueError ${code}`),
    (e: unknown) => e,
  );
  assert.ok(err instanceof QueueError, `expected QueueError ${code}, got ${err}`);
  assert.equal(err.code, code, err.message);
  return err;
}

/** Rows appended, minus rows queued, sealed and landed, must be zero at every step. */
export async function assertAccounted(queue: KvQueue, appended: number): Promise<void> {
  const s = await queue.stats();
  assert.equal(s.queuedRows + s.sealedRows + s.landedRows, appended, JSON.stringify(s));
}

/**
 * Makes every KV commit after the first `n` fail, as if the process died
 * there; the KV itself is real, so what was committed stays committed.
 */
export async function crashAfterCommits(n: number, work: () => Promise<unknown>): Promise<void> {
  const proto = Deno.AtomicOperation.prototype;
  const commit = proto.commit;
  let left = n;
  proto.commit = function (this: Deno.AtomicOperation) {
    if (left-- > 0) return commit.call(this);
    return Promise.reject(new Error("simulated crash"));
  };
  try {
    await assert.rejects(work());
  } finally {
    proto.commit = commit;
  }
  assert.ok(left < 0, "the crash happened");
}

/**
 * Runs `work` with `during` slipped in before its first KV commit, as a
 * concurrent writer would after `work` read and before it committed;
 * resolves to what `work` resolves to once `during` has run.
 */
export async function interleaveBeforeCommit<T>(
  during: () => Promise<unknown>,
  work: () => Promise<T>,
): Promise<T> {
  const proto = Deno.AtomicOperation.prototype;
  const commit = proto.commit;
  let pending: (() => Promise<unknown>) | undefined = during;
  proto.commit = async function (this: Deno.AtomicOperation) {
    const before = pending;
    pending = undefined;
    await before?.();
    return await commit.call(this);
  };
  try {
    return await work();
  } finally {
    proto.commit = commit;
    assert.equal(pending, undefined, "the interleaved write ran");
  }
}
