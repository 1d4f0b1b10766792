import assert from "node:assert/strict";
import { type BatchMeta, openQueue } from "./kv_queue.ts";
import { decodeRows, encodeRows } from "./_row_binary.ts";
import {
  batchKey,
  batchPartKey,
  batchPartPrefix,
  batchRowsKey,
  batchRowsPrefix,
  chunkKey,
  counterKey,
  partitionKey,
  returnedKey,
} from "./keys.ts";
import {
  appendOwned,
  assertAccounted,
  assertExactlyOnce,
  assertQueueError,
  DAY0,
  drain,
  entries,
  idRange,
  ids,
  Packer,
  rawKeys,
  rowId,
  tempKv,
  TOPIC,
  utcDay,
} from "./_queue_testing.ts";

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

/** A chunk as queues stored it before chunks were compressed. */
function legacyChunk(partition: number, first: number, end: number, extra: object = {}): object {
  const list = entries(partition, first, end);
  return {
    topic: TOPIC,
    partition,
    day: utcDay(DAY0),
    offsets: BigInt64Array.from(list, (e) => e.offset),
    rows: encodeRows(list.map((e) => e.row)),
    enqueuedAt: 500,
    ...extra,
  };
}

Deno.test("openQueue() reads a queue written before chunks were compressed", async (t) => {
  await using tmp = await tempKv();
  const batchId = 4_242n;
  const oldBatch = entries(2, 0, 3);

  await t.step("chunks, returned rows and a sealed batch in the old format", async () => {
    using kv = await Deno.openKv(tmp.path);
    const meta: BatchMeta = {
      id: batchId,
      rows: 3,
      bytes: 3,
      parts: 1,
      rowParts: 1,
      topic: TOPIC,
      isolated: false,
      encoding: "row_binary",
      query: {},
      headers: {},
      minTimestamp: DAY0,
      maxTimestamp: DAY0 + 2,
      oldestEnqueuedAt: 400,
      sealedAt: 600,
      state: "unknown",
      attempts: 1,
    };
    const res = await kv.atomic()
      .set(partitionKey(TOPIC, 0), { next: 10n, committed: 10n })
      .set(chunkKey(TOPIC, 0, 0n), legacyChunk(0, 0, 6))
      .set(chunkKey(TOPIC, 0, 6n), legacyChunk(0, 6, 10))
      .set(partitionKey(TOPIC, 1), { next: 4n, committed: 2n })
      .set(chunkKey(TOPIC, 1, 0n), legacyChunk(1, 0, 4))
      .set(returnedKey(5n), {
        ...legacyChunk(3, 0, 2, { partition: -1, from: 77n }),
        partitions: new Int32Array([3, 3]),
      })
      .set(batchKey(), meta)
      .set(batchPartKey(batchId, 0), new Uint8Array([1, 2, 3]))
      .set(batchRowsKey(batchId, 0), {
        rows: encodeRows(oldBatch.map((e) => e.row)),
        offsets: BigInt64Array.from(oldBatch, (e) => e.offset),
        partitions: new Int32Array([2, 2, 2]),
      })
      .sum(counterKey("queued_rows"), 19n)
      .commit();
    assert.ok(res.ok);
  });

  await using queue = await openQueue(tmp.path);

  await t.step("batchEntries() reads the old row parts", async () => {
    const { rows, offsets, partitions } = await queue.batchEntries((await queue.batch())!);
    assert.deepEqual(ids(rows), idRange(2, 0, 3));
    assert.deepEqual([...offsets], [0n, 1n, 2n]);
    assert.deepEqual([...partitions], [2, 2, 2]);
    assert.equal((await queue.stats()).queuedRows, 16);
  });

  await t.step("unseal() hands the old batch back behind the old returned rows", async () => {
    // Of partition 1's chunk only the owned rows are offered.
    await queue.unseal(batchId);
    assert.equal(await queue.batch(), null);
    const packer = new Packer(1);
    await queue.seal(packer.pack);
    assert.deepEqual(ids(packer.offered[0]!), [
      ...idRange(3, 0, 2),
      ...idRange(2, 0, 3),
      ...idRange(0, 0, 10),
      ...idRange(1, 0, 2),
    ]);
    await queue.markLanded((await queue.batch())!.id);
  });

  await t.step("every old row is sealed once, also from chunks a seal cut", async () => {
    await queue.promote(TOPIC, 1, 4n);
    const { rows } = await drain(queue, { take: 3 });
    assertExactlyOnce([rowId(3, 0), ...ids(rows)], [
      ...idRange(0, 0, 10),
      ...idRange(1, 0, 4),
      ...idRange(2, 0, 3),
      ...idRange(3, 0, 2),
    ]);
    await assertAccounted(queue, 19);
  });

  await t.step("a chunk of a format this version does not know is refused by name", async () => {
    await appendOwned(queue, 5, 0, 2);
    {
      using kv = await Deno.openKv(tmp.path);
      const entry = await kv.get<{ data: Uint8Array }>(chunkKey(TOPIC, 5, 0n));
      entry.value!.data[0] = 9;
      assert.ok((await kv.set(chunkKey(TOPIC, 5, 0n), entry.value)).ok);
    }
    const err = await assertQueueError(queue.seal(new Packer().pack), "queue_format_unknown");
    assert.match(err.message, /tag 9/);
    assert.equal(await queue.batch(), null);
  });
});
