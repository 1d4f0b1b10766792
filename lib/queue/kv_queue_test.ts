import assert from "node:assert/strict";
import { QueueError } from "../errors.ts";
import type { HttpLogRow } from "../record/types.ts";
import {
  type BatchMeta,
  type KvQueue,
  openQueue,
  type PackResult,
  type QueueEntry,
} from "./kv_queue.ts";
import { decodeRows, encodedRowLength, encodeRows } from "./_row_binary.ts";
import {
  batchKey,
  batchPartKey,
  batchPartPrefix,
  batchRowsKey,
  batchRowsPrefix,
  chunkPartitionPrefix,
  chunkPrefix,
  counterKey,
  returnedPrefix,
} from "./_keys.ts";

const TOPIC = "http_log";
const DAY = 86_400;
/** 2023-11-14T00:00:00Z, the start of a UTC day. */
const DAY0 = 19_675 * DAY;

/** A clock tests move by hand, so enqueue order does not depend on timing. */
class Clock {
  constructor(public ms = 1_000_000) {}
  readonly now = (): number => this.ms;
}

/** A temp directory holding one KV file, removed with everything in it. */
async function tempKv(): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "kv_queue_test_" });
  return {
    path: `${dir}/queue.sqlite3`,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** Keys under `prefix`, read through a second connection as an operator would. */
async function rawKeys(path: string, prefix: Deno.KvKey): Promise<Deno.KvKey[]> {
  using kv = await Deno.openKv(path);
  return await Array.fromAsync(kv.list({ prefix }), (e) => e.key);
}

/** Row ids are unique across partitions so a lost or doubled row is visible. */
function rowId(partition: number, offset: number): bigint {
  return BigInt(partition * 1_000_000 + offset);
}

function row(partition: number, offset: number, overrides: Partial<HttpLogRow> = {}): HttpLogRow {
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
function entries(
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
async function appendOwned(
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
class Packer {
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

const ids = (rows: readonly HttpLogRow[]): bigint[] => rows.map((r) => r.resourceId);
const utcDay = (seconds: number): number => Math.floor(seconds / DAY);

/** Ids of rows `first..end-1` of a partition. */
function idRange(partition: number, first: number, end: number): bigint[] {
  return Array.from({ length: end - first }, (_, i) => rowId(partition, first + i));
}

/**
 * Seals and lands batches until the queue is empty, checking on the way that
 * each batch holds one UTC day; returns the rows landed, in order.
 */
async function drain(
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
function assertExactlyOnce(got: readonly bigint[], want: readonly bigint[]): void {
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

async function assertQueueError(p: Promise<unknown>, code: string): Promise<QueueError> {
  const err = await p.then(
    () => assert.fail(`expected QueueError ${code}`),
    (e: unknown) => e,
  );
  assert.ok(err instanceof QueueError, `expected QueueError ${code}, got ${err}`);
  assert.equal(err.code, code, err.message);
  return err;
}

/** Rows appended, minus rows queued, sealed and landed, must be zero at every step. */
async function assertAccounted(queue: KvQueue, appended: number): Promise<void> {
  const s = await queue.stats();
  assert.equal(s.queuedRows + s.sealedRows + s.landedRows, appended, JSON.stringify(s));
}

/**
 * Makes every KV commit after the first `n` fail, as if the process died
 * there; the KV itself is real, so what was committed stays committed.
 */
async function crashAfterCommits(n: number, work: () => Promise<unknown>): Promise<void> {
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

Deno.test("KvQueue.seal() offers rows only after promote()", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  const packer = new Packer();

  await t.step("appended rows are pending", async () => {
    assert.equal(await queue.append(TOPIC, 0, entries(0, 0, 5), { next: 5n }), 5);
    assert.equal(await queue.append(TOPIC, 0, entries(0, 5, 8), { next: 8n }), 3);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 8n, committed: 0n });
    assert.equal(await queue.seal(packer.pack), null);
    assert.equal(packer.offered.length, 0, "the packer is not called without owned rows");
    assert.equal((await queue.stats()).queuedRows, 8);
  });

  await t.step("promote() owns the rows below the committed offset only", async () => {
    await queue.promote(TOPIC, 0, 5n);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 8n, committed: 5n });
    const batch = await queue.seal(packer.pack);
    assert.ok(batch !== null);
    assert.equal(batch.rows, 5);
    assert.deepEqual(ids(packer.offered[0]!), idRange(0, 0, 5));
    assert.equal(batch.id, packer.batchIds[0]);
    assert.equal(batch.state, "sealed");
    assert.equal(batch.attempts, 0);
    assert.equal(batch.isolated, false);
    assert.equal(batch.encoding, "row_binary");
    assert.deepEqual(batch.query, { query: "INSERT INTO http_log FORMAT RowBinary" });
    assert.deepEqual(batch.headers, { "X-Test": "1" });
    assert.ok(batch.id > 0n && batch.id < 2n ** 63n);
  });

  await t.step("seal() returns the sealed batch until it lands", async () => {
    const first = await queue.batch();
    assert.deepEqual(await queue.seal(packer.pack), first);
    assert.equal(packer.offered.length, 1, "the packer is not called while a batch is sealed");
    await queue.markLanded(first!.id);
  });

  await t.step("promote() never moves committed back", async () => {
    await queue.promote(TOPIC, 0, 3n);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 8n, committed: 5n });
    assert.equal(await queue.seal(packer.pack), null);
  });

  await t.step("after promote() the rest seals", async () => {
    await queue.promote(TOPIC, 0, 8n);
    const { rows } = await drain(queue);
    assert.deepEqual(ids(rows), idRange(0, 5, 8));
    await assertAccounted(queue, 8);
  });

  await t.step("promote() of an unknown partition does nothing", async () => {
    await queue.promote(TOPIC, 9, 100n);
    assert.equal(await queue.partition(TOPIC, 9), null);
  });
});

Deno.test("KvQueue.append() skips offsets already queued", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);

  await t.step("a first batch starts the partition at its first offset", async () => {
    assert.equal(await queue.append(TOPIC, 0, entries(0, 10, 20), { next: 20n }), 10);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 20n, committed: 10n });
  });

  await t.step("a redelivered batch appends only the new offsets", async () => {
    assert.equal(await queue.append(TOPIC, 0, entries(0, 15, 25), { next: 25n }), 5);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 25n, committed: 10n });
  });

  await t.step("an identical append appends 0", async () => {
    assert.equal(await queue.append(TOPIC, 0, entries(0, 15, 25), { next: 25n }), 0);
    assert.equal(await queue.append(TOPIC, 0, entries(0, 10, 20), { next: 20n }), 0);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 25n, committed: 10n });
    assert.equal((await queue.stats()).queuedRows, 15);
  });

  await t.step("a redelivery after a restart appends 0", async () => {
    await using reopened = await openQueue(tmp.path);
    assert.equal(await reopened.append(TOPIC, 0, entries(0, 10, 25), { next: 25n }), 0);
  });

  await t.step("every offset lands once", async () => {
    await queue.promote(TOPIC, 0, 25n);
    const { rows } = await drain(queue);
    assert.deepEqual(ids(rows), idRange(0, 10, 25));
    await assertAccounted(queue, 15);
  });

  await t.step("a batch with no rows still advances next", async () => {
    assert.equal(await queue.append(TOPIC, 0, [], { next: 30n }), 0);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 30n, committed: 30n });
  });
});

Deno.test("KvQueue.append() jumps over a gap when nothing is pending", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);

  await t.step("a gap after owned rows moves next and committed", async () => {
    await appendOwned(queue, 0, 0, 5);
    assert.equal(await queue.append(TOPIC, 0, entries(0, 100, 105), { next: 105n }), 5);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 105n, committed: 100n });
    const batch = await queue.seal(new Packer().pack);
    assert.deepEqual(ids(decodeRows(await queue.body(batch!))), idRange(0, 0, 5));
    await queue.markLanded(batch!.id);
    assert.equal(await queue.seal(new Packer().pack), null, "rows 100..104 are still pending");
  });

  await t.step("a gap after pending rows keeps committed", async () => {
    assert.equal(await queue.append(TOPIC, 0, entries(0, 200, 203), { next: 203n }), 3);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 203n, committed: 100n });
  });

  await t.step("all rows land once after promote()", async () => {
    await queue.promote(TOPIC, 0, 203n);
    const { rows } = await drain(queue);
    assert.deepEqual(ids(rows), [...idRange(0, 100, 105), ...idRange(0, 200, 203)]);
    await assertAccounted(queue, 13);
  });
});

Deno.test("KvQueue.append() keeps UTC days in separate chunks and batches", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  // Offsets alternate between the last second of one day and the first of the next.
  const daysOf = (o: number) => ({ timestamp: DAY0 + DAY - 1 + (o % 2) });

  await t.step("one append of two days writes a chunk per day", async () => {
    assert.equal(await appendOwned(queue, 0, 0, 10, daysOf), 10);
    const keys = await rawKeys(tmp.path, chunkPartitionPrefix(TOPIC, 0));
    assert.deepEqual(keys.map((k) => k[4]), [0n, 1n]);
  });

  await t.step("each sealed batch holds one day", async () => {
    const packer = new Packer();
    const first = await queue.seal(packer.pack);
    assert.ok(first !== null);
    assert.equal(first.rows, 5);
    assert.equal(first.minTimestamp, DAY0 + DAY - 1);
    assert.equal(first.maxTimestamp, DAY0 + DAY - 1);
    assert.deepEqual(ids(packer.offered[0]!), [0, 2, 4, 6, 8].map((o) => rowId(0, o)));
    await queue.markLanded(first.id);

    const second = await queue.seal(packer.pack);
    assert.ok(second !== null);
    assert.equal(second.rows, 5);
    assert.equal(second.minTimestamp, DAY0 + DAY);
    assert.equal(second.maxTimestamp, DAY0 + DAY);
    assert.deepEqual(ids(packer.offered[1]!), [1, 3, 5, 7, 9].map((o) => rowId(0, o)));
    await queue.markLanded(second.id);
    assert.equal(await queue.seal(packer.pack), null);
  });

  await t.step("partitions of different days are not mixed", async () => {
    await appendOwned(queue, 1, 0, 3, () => ({ timestamp: DAY0 + 5 }));
    await appendOwned(queue, 2, 0, 3, () => ({ timestamp: DAY0 + 2 * DAY + 5 }));
    await appendOwned(queue, 3, 0, 3, () => ({ timestamp: DAY0 + 7 }));
    const { rows, batches } = await drain(queue);
    assert.equal(batches.length, 2);
    assert.deepEqual(
      batches.map((b) => [utcDay(b.minTimestamp), utcDay(b.maxTimestamp)]),
      [[utcDay(DAY0), utcDay(DAY0)], [utcDay(DAY0) + 2, utcDay(DAY0) + 2]],
    );
    assertExactlyOnce(ids(rows), [...idRange(1, 0, 3), ...idRange(2, 0, 3), ...idRange(3, 0, 3)]);
  });
});

Deno.test("KvQueue.seal() offers rows oldest first and keeps what the packer leaves", async (t) => {
  await using tmp = await tempKv();
  const clock = new Clock();
  await using queue = await openQueue(tmp.path, { now: clock.now });

  await t.step("append three partitions out of key order", async () => {
    clock.ms = 3_000;
    await appendOwned(queue, 0, 0, 3);
    clock.ms = 1_000;
    await appendOwned(queue, 1, 0, 4);
    clock.ms = 2_000;
    await appendOwned(queue, 2, 0, 3);
    clock.ms = 10_000;
  });

  const all = [...idRange(1, 0, 4), ...idRange(2, 0, 3), ...idRange(0, 0, 3)];

  await t.step("the packer sees every row, oldest first", async () => {
    const packer = new Packer(3);
    const batch = await queue.seal(packer.pack);
    assert.ok(batch !== null);
    assert.deepEqual(ids(packer.offered[0]!), all);
    assert.equal(batch.rows, 3);
    assert.deepEqual(ids(decodeRows(await queue.body(batch))), all.slice(0, 3));
    assert.equal(batch.oldestEnqueuedAt, 1_000);
    assert.equal(batch.sealedAt, 10_000);
    assert.equal(batch.minTimestamp, DAY0);
    assert.equal(batch.maxTimestamp, DAY0 + 2);
  });

  await t.step("the rest of the cut chunk stays queued under its new first offset", async () => {
    const keys = await rawKeys(tmp.path, chunkPartitionPrefix(TOPIC, 1));
    assert.deepEqual(keys.map((k) => k[4]), [3n]);
    const stats = await queue.stats();
    assert.equal(stats.sealedRows, 3);
    assert.equal(stats.queuedRows, 7);
    assert.equal(stats.oldestAgeMs, 9_000);
    await queue.markLanded((await queue.batch())!.id);
  });

  await t.step("the next seal offers exactly the remaining rows", async () => {
    const packer = new Packer();
    const batch = await queue.seal(packer.pack);
    assert.deepEqual(ids(packer.offered[0]!), all.slice(3));
    assert.equal(batch!.rows, 7);
    await queue.markLanded(batch!.id);
    assert.equal(await queue.seal(packer.pack), null);
    await assertAccounted(queue, 10);
  });

  await t.step("candidateRows limits the offer to whole chunks", async () => {
    clock.ms = 20_000;
    await appendOwned(queue, 0, 3, 8);
    clock.ms = 21_000;
    await appendOwned(queue, 1, 4, 6);
    const packer = new Packer();
    await queue.seal(packer.pack, { candidateRows: 2 });
    assert.deepEqual(ids(packer.offered[0]!), idRange(0, 3, 8));
    await queue.markLanded((await queue.batch())!.id);
    const { rows } = await drain(queue);
    assert.deepEqual(ids(rows), idRange(1, 4, 6));
  });

  await t.step("a packer taking no rows is refused and nothing moves", async () => {
    await appendOwned(queue, 0, 8, 10);
    await assertQueueError(queue.seal(new Packer(0).pack), "pack_invalid");
    assert.equal(await queue.batch(), null);
    assert.deepEqual(ids((await drain(queue)).rows), idRange(0, 8, 10));
  });
});

Deno.test("KvQueue.body() returns the packed body byte for byte across restarts", async (t) => {
  await using tmp = await tempKv();
  const big = new Uint8Array(1024 * 1024);
  for (let i = 0; i < big.length; i += 65_536) crypto.getRandomValues(big.subarray(i, i + 65_536));
  let sealed: BatchMeta | null = null;

  await t.step("a 1 MiB body is stored in 18 parts", async () => {
    await using queue = await openQueue(tmp.path);
    await appendOwned(queue, 0, 0, 4);
    sealed = await queue.seal(new Packer(Infinity, big).pack);
    assert.ok(sealed !== null);
    assert.equal(sealed.bytes, big.byteLength);
    assert.equal(sealed.parts, 18);
    assert.equal(sealed.rowParts, 1);
    assert.deepEqual(await queue.body(sealed), big);
    assert.equal((await rawKeys(tmp.path, batchPartPrefix())).length, 18);
  });

  await t.step("after a restart the batch and its body are unchanged", async () => {
    await using queue = await openQueue(tmp.path);
    assert.deepEqual(await queue.batch(), sealed);
    assert.deepEqual(await queue.body(sealed!), big);
    const packer = new Packer();
    assert.deepEqual(await queue.seal(packer.pack), sealed);
    assert.equal(packer.offered.length, 0);
    await queue.markLanded(sealed!.id);
  });

  await t.step("a landed batch's body is gone", async () => {
    await using queue = await openQueue(tmp.path);
    await assertQueueError(queue.body(sealed!), "batch_corrupt");
  });

  await t.step("tiny and empty bodies", async () => {
    await using queue = await openQueue(tmp.path);
    let offset = 10;
    for (const body of [new Uint8Array([1, 2, 3]), new Uint8Array(0)]) {
      await appendOwned(queue, 0, offset, ++offset);
      const batch = await queue.seal(new Packer(Infinity, body).pack);
      assert.equal(batch!.parts, 1);
      assert.equal(batch!.bytes, body.length);
      assert.deepEqual(await queue.body(batch!), body);
      await queue.markLanded(batch!.id);
    }
  });
});

Deno.test("KvQueue.markLanded() deletes the batch and counts it as landed", async (t) => {
  await using tmp = await tempKv();
  const clock = new Clock();
  let id = 0n;

  await t.step("markSending() and markState() record delivery", async () => {
    await using queue = await openQueue(tmp.path, { now: clock.now });
    await appendOwned(queue, 0, 0, 6);
    await appendOwned(queue, 1, 0, 4);
    await queue.append(TOPIC, 1, entries(1, 4, 6), { next: 6n });
    await assertAccounted(queue, 12);
    const batch = await queue.seal(new Packer(7).pack);
    id = batch!.id;
    await assertAccounted(queue, 12);
    const s = await queue.stats();
    assert.equal(s.queuedRows, 5);
    assert.equal(s.sealedRows, 7);
    assert.equal(s.landedRows, 0);
    assert.equal(s.landedBatches, 0);
    clock.ms += 500;
    assert.equal((await queue.stats()).oldestAgeMs, 500);

    const sending = await queue.markSending(id);
    assert.equal(sending.state, "sending");
    assert.equal(sending.attempts, 1);
    const unknown = await queue.markState(id, "unknown", "timed out after 30 s");
    assert.equal(unknown.state, "unknown");
    assert.equal(unknown.lastError, "timed out after 30 s");
    assert.equal((await queue.markSending(id)).attempts, 2);
    assert.deepEqual(await queue.batch(), { ...unknown, state: "sending", attempts: 2 });
    await assertQueueError(queue.markSending(id + 1n), "batch_missing");
    await assertQueueError(queue.markState(id + 1n, "sealed"), "batch_missing");
  });

  await t.step("markLanded() removes the batch and moves the counters", async () => {
    await using queue = await openQueue(tmp.path, { now: clock.now });
    await queue.markLanded(id + 1n);
    assert.notEqual(await queue.batch(), null, "another id leaves the batch alone");
    await queue.markLanded(id);
    assert.equal(await queue.batch(), null);
    const s = await queue.stats();
    assert.equal(s.landedRows, 7);
    assert.equal(s.landedBatches, 1);
    assert.equal(s.sealedRows, 0);
    assert.equal(s.queuedRows, 5);
    await assertAccounted(queue, 12);
    await queue.markLanded(id);
    assert.equal((await queue.stats()).landedBatches, 1, "landing twice counts once");
  });

  await t.step("no batch keys are left", async () => {
    assert.deepEqual(await rawKeys(tmp.path, batchPartPrefix()), []);
    assert.deepEqual(await rawKeys(tmp.path, batchRowsPrefix()), []);
    assert.deepEqual(await rawKeys(tmp.path, batchKey()), []);
  });

  await t.step("counters add up over more batches", async () => {
    await using queue = await openQueue(tmp.path, { now: clock.now });
    await queue.promote(TOPIC, 1, 6n);
    await drain(queue, { take: 2 });
    const s = await queue.stats();
    assert.equal(s.landedRows, 12);
    assert.equal(s.landedBatches, 1 + 3);
    assert.equal(s.queuedRows, 0);
    assert.equal(s.queuedBytes, 0);
    assert.equal(s.oldestAgeMs, 0);
  });
});

Deno.test("KvQueue.unseal() hands rows back as isolated groups sealed alone", async (t) => {
  await using tmp = await tempKv();
  const clock = new Clock();
  await using queue = await openQueue(tmp.path, { now: clock.now });
  await appendOwned(queue, 0, 0, 10);
  const batch = await queue.seal(new Packer().pack);

  await t.step("unseal() with another id does nothing", async () => {
    await queue.unseal(batch!.id + 1n, { groups: 2, isolate: true });
    assert.deepEqual(await queue.batch(), batch);
  });

  await t.step("unseal() deletes the batch and returns its rows", async () => {
    clock.ms += 1_000;
    await queue.unseal(batch!.id, { groups: 2, isolate: true });
    assert.equal(await queue.batch(), null);
    assert.deepEqual(await rawKeys(tmp.path, batchPartPrefix()), []);
    assert.deepEqual(await rawKeys(tmp.path, batchRowsPrefix()), []);
    assert.equal((await rawKeys(tmp.path, returnedPrefix())).length, 2);
    assert.equal((await queue.stats()).queuedRows, 10);
    await appendOwned(queue, 0, 10, 12);
  });

  await t.step("each group is sealed alone, in order", async () => {
    for (const [g, want] of [[0, idRange(0, 0, 5)], [1, idRange(0, 5, 10)]] as const) {
      const packer = new Packer();
      const group = await queue.seal(packer.pack);
      assert.ok(group !== null);
      assert.equal(group.isolated, `${batch!.id}:${g}`);
      assert.deepEqual(ids(packer.offered[0]!), want, "offered rows");
      assert.equal(group.oldestEnqueuedAt, batch!.oldestEnqueuedAt);
      assert.equal(utcDay(group.minTimestamp), utcDay(batch!.minTimestamp));
      await queue.markLanded(group.id);
    }
  });

  await t.step("later owned rows follow unisolated", async () => {
    const { rows, batches } = await drain(queue);
    assert.deepEqual(ids(rows), idRange(0, 10, 12));
    assert.equal(batches[0]!.isolated, false);
    await assertAccounted(queue, 12);
  });
});

Deno.test("KvQueue.unseal() lets returned rows be sealed with later rows of the day", async (t) => {
  await using tmp = await tempKv();
  const clock = new Clock();
  await using queue = await openQueue(tmp.path, { now: clock.now });

  await t.step("unseal() of one group", async () => {
    await appendOwned(queue, 0, 0, 4);
    const batch = await queue.seal(new Packer().pack);
    await appendOwned(queue, 0, 4, 7);
    await appendOwned(queue, 1, 0, 2, () => ({ timestamp: DAY0 + DAY }));
    clock.ms += 1_000;
    await queue.unseal(batch!.id);
  });

  await t.step("returned rows go first, then owned rows of the same day", async () => {
    const packer = new Packer();
    const batch = await queue.seal(packer.pack);
    assert.equal(batch!.isolated, false);
    assert.deepEqual(ids(packer.offered[0]!), idRange(0, 0, 7));
    await queue.markLanded(batch!.id);
  });

  await t.step("the other day follows", async () => {
    assert.deepEqual(ids((await drain(queue)).rows), idRange(1, 0, 2));
  });

  await t.step("a prefix cut of returned rows keeps the rest first in line", async () => {
    await appendOwned(queue, 0, 7, 12);
    const first = await queue.seal(new Packer(2).pack);
    clock.ms += 1_000;
    await queue.unseal(first!.id);
    await appendOwned(queue, 0, 12, 14);
    const { rows } = await drain(queue, { take: 1 });
    assert.deepEqual(ids(rows), idRange(0, 7, 14));
    await assertAccounted(queue, 16);
  });
});

Deno.test("KvQueue.dropPending() deletes pending rows and restarts the partition", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);

  await t.step("owned and pending rows", async () => {
    await appendOwned(queue, 0, 0, 5);
    await queue.append(TOPIC, 0, entries(0, 5, 10), { next: 10n });
    await queue.append(TOPIC, 0, entries(0, 10, 15), { next: 15n });
    await appendOwned(queue, 1, 0, 2);
    await queue.append(TOPIC, 1, entries(1, 2, 4), { next: 4n });
  });

  await t.step("dropPending() removes only the pending rows", async () => {
    assert.equal(await queue.dropPending(TOPIC, 0, 20n), 10);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 20n, committed: 20n });
    assert.deepEqual(await queue.partition(TOPIC, 1), { next: 4n, committed: 2n });
    assert.deepEqual((await rawKeys(tmp.path, chunkPartitionPrefix(TOPIC, 0))).map((k) => k[4]), [
      0n,
    ]);
    assert.equal((await queue.stats()).queuedRows, 9);
  });

  await t.step("the partition resumes at resumeAt", async () => {
    assert.equal(await queue.append(TOPIC, 0, entries(0, 15, 20), { next: 20n }), 0);
    assert.equal(await queue.append(TOPIC, 0, entries(0, 18, 23), { next: 23n }), 3);
    await queue.promote(TOPIC, 0, 23n);
    await queue.promote(TOPIC, 1, 4n);
    const { rows } = await drain(queue);
    assertExactlyOnce(ids(rows), [
      ...idRange(0, 0, 5),
      ...idRange(0, 20, 23),
      ...idRange(1, 0, 4),
    ]);
    await assertAccounted(queue, 22 - 10);
  });

  await t.step("dropPending() of an unknown partition drops nothing", async () => {
    assert.equal(await queue.dropPending(TOPIC, 7, 100n), 0);
    assert.equal(await queue.partition(TOPIC, 7), null);
  });
});

Deno.test("KvQueue.init() removes orphaned batch parts", async (t) => {
  await using tmp = await tempKv();
  let sealed: BatchMeta | null = null;
  const orphan = 4_242n;

  await t.step("a sealed batch and parts of a seal that never committed", async () => {
    {
      await using queue = await openQueue(tmp.path);
      await appendOwned(queue, 0, 0, 3);
      sealed = await queue.seal(new Packer().pack);
    }
    using kv = await Deno.openKv(tmp.path);
    let op = kv.atomic();
    for (let i = 0; i < 600; i++) {
      op.set(batchPartKey(orphan, i), new Uint8Array([i % 256]));
      if (i % 100 === 99) {
        assert.ok((await op.commit()).ok);
        op = kv.atomic();
      }
    }
    assert.ok((await op.set(batchRowsKey(orphan, 0), new Uint8Array(1)).commit()).ok);
  });

  await t.step("a restart removes the orphans and keeps the sealed batch", async () => {
    {
      await using queue = await openQueue(tmp.path);
      assert.deepEqual(await queue.batch(), sealed);
      assert.deepEqual(ids(decodeRows(await queue.body(sealed!))), idRange(0, 0, 3));
    }
    assert.deepEqual(await rawKeys(tmp.path, batchPartPrefix()), [batchPartKey(sealed!.id, 0)]);
    assert.deepEqual(await rawKeys(tmp.path, batchRowsPrefix()), [batchRowsKey(sealed!.id, 0)]);
  });

  await t.step("with no batch sealed every part is an orphan", async () => {
    {
      await using queue = await openQueue(tmp.path);
      await queue.markLanded(sealed!.id);
    }
    {
      using kv = await Deno.openKv(tmp.path);
      await kv.set(batchPartKey(sealed!.id, 0), new Uint8Array(1));
      await kv.set(batchRowsKey(orphan, 3), new Uint8Array(1));
    }
    {
      await using _ = await openQueue(tmp.path);
    }
    assert.deepEqual(await rawKeys(tmp.path, batchPartPrefix()), []);
    assert.deepEqual(await rawKeys(tmp.path, batchRowsPrefix()), []);
  });
});

Deno.test("KvQueue.append() splits a large Kafka batch over several commits", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  const count = 5_000;
  const url = (o: number) => ({ url: `/${o}/${"a".repeat(1_000)}` });

  await t.step("an append of 5 MB succeeds", async () => {
    const batch = entries(0, 0, count, url);
    const bytes = batch.reduce((n, e) => n + encodedRowLength(e.row), 0);
    assert.ok(bytes > 5_000_000, `${bytes} bytes`);
    assert.equal(await queue.append(TOPIC, 0, batch, { next: BigInt(count) }), count);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: BigInt(count), committed: 0n });
    assert.ok((await rawKeys(tmp.path, chunkPrefix())).length > 80);
    assert.equal((await queue.stats()).queuedRows, count);
  });

  await t.step("every row is sealed exactly once", async () => {
    await queue.promote(TOPIC, 0, BigInt(count));
    const { rows, batches } = await drain(queue);
    assert.equal(batches.length, 1, "one seal takes all 5 MB");
    assert.deepEqual(ids(rows), idRange(0, 0, count));
    assert.deepEqual(rows.map((r) => r.url), idRange(0, 0, count).map((o) => url(Number(o)).url));
    assert.deepEqual(await rawKeys(tmp.path, chunkPrefix()), []);
    await assertAccounted(queue, count);
  });
});

Deno.test("KvQueue.append() refuses a row larger than one KV value", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  // The url's length takes 3 bytes at this size; a row also costs 8 bytes of offset.
  const fits = 60_000 - 8 - (encodedRowLength(row(0, 0, { url: "" })) - 1) - 3;

  await t.step("a row of exactly the limit is queued", async () => {
    const e = entries(0, 0, 1, () => ({ url: "b".repeat(fits) }));
    assert.equal(encodedRowLength(e[0]!.row) + 8, 60_000);
    assert.equal(await queue.append(TOPIC, 0, e, { next: 1n }), 1);
  });

  await t.step("a row one byte over is refused and nothing is queued", async () => {
    const e = [
      ...entries(0, 1, 3),
      ...entries(0, 3, 4, () => ({ url: "b".repeat(fits + 1) })),
      ...entries(0, 4, 6),
    ];
    const err = await assertQueueError(queue.append(TOPIC, 0, e, { next: 6n }), "row_too_large");
    assert.equal(err.retriable, false);
    assert.match(err.message, /offset 3/);
    assert.deepEqual(await queue.partition(TOPIC, 0), { next: 1n, committed: 0n });
    assert.equal((await queue.stats()).queuedRows, 1);
  });

  await t.step("a 61 KB row is refused", async () => {
    const e = entries(0, 1, 2, () => ({ url: "c".repeat(61_000) }));
    await assertQueueError(queue.append(TOPIC, 0, e, { next: 2n }), "row_too_large");
  });

  await t.step("the row at the limit seals intact", async () => {
    await queue.promote(TOPIC, 0, 1n);
    const { rows } = await drain(queue);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.url.length, fits);
  });
});

Deno.test("openQueue() keeps the instance id across restarts", async (t) => {
  await using tmp = await tempKv();
  let id = "";

  await t.step("a new queue gets a random id", async () => {
    await using queue = await openQueue(tmp.path);
    id = queue.instanceId;
    assert.match(id, /^anonymizer-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(queue.path, tmp.path);
  });

  await t.step("a reopened queue has the same id", async () => {
    await using queue = await openQueue(tmp.path);
    assert.equal(queue.instanceId, id);
  });

  await t.step("another KV file has another id", async () => {
    await using other = await tempKv();
    await using queue = await openQueue(other.path);
    assert.notEqual(queue.instanceId, id);
  });
});

Deno.test("openQueue() fails with kv_open_failed when the path cannot be opened", async () => {
  await using tmp = await tempKv();
  const err = await assertQueueError(
    openQueue(`${tmp.path}/missing/queue.sqlite3`),
    "kv_open_failed",
  );
  assert.equal(err.retriable, false);
  assert.ok(err.cause !== undefined);
});

Deno.test("KvQueue.setPacer() and setServer() persist across restarts", async () => {
  await using tmp = await tempKv();
  {
    await using queue = await openQueue(tmp.path);
    assert.deepEqual(await queue.pacer(), { lastConsumedAt: null, inflightSince: null });
    assert.equal(await queue.server(), null);
    await queue.setPacer({ lastConsumedAt: 123, inflightSince: 456 });
    await queue.setServer({ version: "25.3.1", checkedAt: 789 });
  }
  await using queue = await openQueue(tmp.path);
  assert.deepEqual(await queue.pacer(), { lastConsumedAt: 123, inflightSince: 456 });
  assert.deepEqual(await queue.server(), { version: "25.3.1", checkedAt: 789 });
});

Deno.test("KvQueue.discard() removes the batch without landing it", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  await appendOwned(queue, 0, 0, 5);
  const batch = await queue.seal(new Packer(3).pack);

  await t.step("batchRows() returns the rows of the batch in body order", async () => {
    assert.deepEqual(await queue.batchRows(batch!), decodeRows(await queue.body(batch!)));
    assert.deepEqual(ids(await queue.batchRows(batch!)), idRange(0, 0, 3));
  });

  await t.step("discard() of another id does nothing", async () => {
    await queue.discard(batch!.id + 1n);
    assert.deepEqual(await queue.batch(), batch);
  });

  await t.step("discard() deletes the batch and counts its rows as dead-lettered", async () => {
    await queue.discard(batch!.id);
    assert.equal(await queue.batch(), null);
    assert.deepEqual(await rawKeys(tmp.path, batchPartPrefix()), []);
    assert.deepEqual(await rawKeys(tmp.path, batchRowsPrefix()), []);
    const s = await queue.stats();
    assert.equal(s.landedRows, 0);
    assert.equal(s.landedBatches, 0);
    assert.equal(s.queuedRows, 2);
    using kv = await Deno.openKv(tmp.path);
    assert.equal((await kv.get<Deno.KvU64>(counterKey("dead_lettered_rows"))).value?.value, 3n);
  });

  await t.step("the rows the batch left are sealed next", async () => {
    assert.deepEqual(ids((await drain(queue)).rows), idRange(0, 3, 5));
  });
});

// The tests below reproduce bugs found while writing this file; see the report
// that added them. They fail until kv_queue.ts is fixed.

Deno.test("KvQueue.seal() seals an owned backlog of more than 99 chunks", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  // One chunk per append, as when Kafka hands over one message per fetch.
  for (let o = 0; o < 150; o++) await appendOwned(queue, 0, o, o + 1);
  const { rows } = await drain(queue);
  assert.deepEqual(ids(rows), idRange(0, 0, 150));
});

Deno.test("KvQueue.dropPending() drops more than 99 pending chunks", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  for (let o = 0; o < 150; o++) {
    await queue.append(TOPIC, 0, entries(0, o, o + 1), { next: BigInt(o + 1) });
  }
  assert.equal(await queue.dropPending(TOPIC, 0, 150n), 150);
  assert.deepEqual(await rawKeys(tmp.path, chunkPrefix()), []);
});

Deno.test("KvQueue.dropPending() returns 0 when nothing is pending", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  await appendOwned(queue, 0, 0, 3);
  assert.equal(await queue.dropPending(TOPIC, 0, 10n), 0);
  assert.deepEqual(await queue.partition(TOPIC, 0), { next: 10n, committed: 10n });
  assert.equal((await queue.stats()).queuedRows, 3);
});

Deno.test("KvQueue.unseal() hands back a batch of many small rows", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  // Rows of 46 bytes: a 60 000 byte group of them carries 10 KB of offsets too.
  const small = () => ({ cacheStatus: "", method: "", remoteAddr: "", url: "/" });
  await appendOwned(queue, 0, 0, 3_000, small);
  const batch = await queue.seal(new Packer().pack);
  assert.equal(batch!.rows, 3_000);
  await queue.unseal(batch!.id);
  const { rows } = await drain(queue);
  assert.deepEqual(ids(rows), idRange(0, 0, 3_000));
});

Deno.test("KvQueue.unseal() twice at one clock reading keeps every row", async () => {
  await using tmp = await tempKv();
  const clock = new Clock();
  await using queue = await openQueue(tmp.path, { now: clock.now });
  await appendOwned(queue, 0, 0, 4);
  const batch = await queue.seal(new Packer().pack);
  await queue.unseal(batch!.id, { groups: 2, isolate: true });
  const half = await queue.seal(new Packer().pack);
  assert.equal(half!.rows, 2);
  await queue.unseal(half!.id, { groups: 2, isolate: true });
  const { rows } = await drain(queue);
  assertExactlyOnce(ids(rows), idRange(0, 0, 4));
  await assertAccounted(queue, 4);
});

Deno.test("KvQueue.unseal() seals an isolated group larger than one KV value as one batch", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  await appendOwned(queue, 0, 0, 200, () => ({ url: "d".repeat(1_000) }));
  const batch = await queue.seal(new Packer().pack);
  await queue.unseal(batch!.id, { groups: 2, isolate: true });
  const { batches } = await drain(queue);
  assert.deepEqual(batches.map((b) => [b.rows, b.isolated]), [
    [100, `${batch!.id}:0`],
    [100, `${batch!.id}:1`],
  ]);
});

Deno.test("KvQueue.append() loses and doubles no row when it crashes between commits", async (t) => {
  const count = 1_400;
  const big = (o: number) => ({ url: `/${o}/${"e".repeat(1_000)}` });
  const twoDays = (o: number) => ({ ...big(o), timestamp: DAY0 + (o % 2) * DAY });

  for (
    const [name, overrides] of [["one day", big], ["two interleaved days", twoDays]] as const
  ) {
    for (const commits of [1, 2]) {
      await t.step(`${name}, crash after commit ${commits}`, async () => {
        await using tmp = await tempKv();
        const batch = entries(0, 0, count, overrides);
        {
          await using queue = await openQueue(tmp.path);
          await crashAfterCommits(
            commits,
            () => queue.append(TOPIC, 0, batch, { next: BigInt(count) }),
          );
        }
        await using queue = await openQueue(tmp.path);
        // Kafka redelivers everything after its last committed offset.
        await queue.append(TOPIC, 0, batch, { next: BigInt(count) });
        await queue.promote(TOPIC, 0, BigInt(count));
        const { rows } = await drain(queue);
        assertExactlyOnce(ids(rows), idRange(0, 0, count));
        await assertAccounted(queue, count);
      });
    }
  }
});

Deno.test("KvQueue.unseal() interrupted before its last commit returns no row twice", async () => {
  await using tmp = await tempKv();
  let id = 0n;
  {
    await using queue = await openQueue(tmp.path);
    await appendOwned(queue, 0, 0, 4);
    id = (await queue.seal(new Packer().pack))!.id;
    await crashAfterCommits(1, () => queue.unseal(id));
  }
  await using queue = await openQueue(tmp.path);
  assert.equal((await queue.batch())?.id, id, "the batch is still sealed");
  // The resent batch is stored after the restart.
  await queue.markLanded(id);
  const { rows } = await drain(queue);
  assertExactlyOnce([...idRange(0, 0, 4), ...ids(rows)], idRange(0, 0, 4));
  await assertAccounted(queue, 4);
});
