import assert from "node:assert/strict";
import { openQueue } from "./kv_queue.ts";
import { decodeRows, encodedRowLength } from "./_row_binary.ts";
import {
  appendOwned,
  assertAccounted,
  assertExactlyOnce,
  assertQueueError,
  chunkOffsets,
  Clock,
  crashAfterCommits,
  DAY,
  DAY0,
  drain,
  entries,
  idRange,
  ids,
  interleaveBeforeCommit,
  Packer,
  row,
  rowId,
  tempKv,
  TOPIC,
  utcDay,
} from "./_queue_testing.ts";

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
    assert.deepEqual(await chunkOffsets(tmp.path, 0), [0n, 1n]);
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
    // A commit holds at most 700 kB of rows, so 5 MB take at least 8 chunks.
    assert.ok((await chunkOffsets(tmp.path, 0)).length >= 8);
    assert.equal((await queue.stats()).queuedRows, count);
  });

  await t.step("every row is sealed exactly once", async () => {
    await queue.promote(TOPIC, 0, BigInt(count));
    const { rows, batches } = await drain(queue);
    assert.equal(batches.length, 1, "one seal takes all 5 MB");
    assert.deepEqual(ids(rows), idRange(0, 0, count));
    assert.deepEqual(rows.map((r) => r.url), idRange(0, 0, count).map((o) => url(Number(o)).url));
    assert.deepEqual(await chunkOffsets(tmp.path, 0), []);
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
    assert.deepEqual(await chunkOffsets(tmp.path, 0), [0n]);
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

Deno.test("KvQueue.dropPending() drops more than 99 pending chunks", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  for (let o = 0; o < 150; o++) {
    await queue.append(TOPIC, 0, entries(0, o, o + 1), { next: BigInt(o + 1) });
  }
  assert.equal(await queue.dropPending(TOPIC, 0, 150n), 150);
  assert.deepEqual(await chunkOffsets(tmp.path, 0), []);
});

Deno.test("KvQueue.dropPending() returns 0 when nothing is pending", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  await appendOwned(queue, 0, 0, 3);
  assert.equal(await queue.dropPending(TOPIC, 0, 10n), 0);
  assert.deepEqual(await queue.partition(TOPIC, 0), { next: 10n, committed: 10n });
  assert.equal((await queue.stats()).queuedRows, 3);
});

Deno.test("KvQueue.append() grows the last chunk of the day while it is small", async (t) => {
  await using tmp = await tempKv();
  const clock = new Clock();
  await using queue = await openQueue(tmp.path, { now: clock.now });

  await t.step("ten small Kafka batches, each owned before the next, make one chunk", async () => {
    for (let o = 0; o < 300; o += 30) {
      clock.ms += 1_000;
      await appendOwned(queue, 0, o, o + 30);
    }
    assert.deepEqual(await chunkOffsets(tmp.path, 0), [0n]);
    assert.equal((await queue.stats()).oldestAgeMs, 9_000, "the chunk keeps its first time");
  });

  await t.step("rows of the next day start a chunk of their own", async () => {
    await appendOwned(queue, 0, 300, 310, () => ({ timestamp: DAY0 + DAY }));
    await appendOwned(queue, 0, 310, 320, () => ({ timestamp: DAY0 + DAY }));
    assert.deepEqual(await chunkOffsets(tmp.path, 0), [0n, 300n]);
  });

  await t.step("every row is sealed once", async () => {
    const { rows } = await drain(queue);
    assert.deepEqual(ids(rows), idRange(0, 0, 320));
    await assertAccounted(queue, 320);
  });
});

Deno.test("KvQueue.append() starts over when a seal takes the chunk it grows", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  await appendOwned(queue, 0, 0, 5);
  // The seal runs after the append read the last chunk and before it commits.
  const seal = () => queue.seal(new Packer().pack);
  assert.equal(
    await interleaveBeforeCommit(
      seal,
      () => queue.append(TOPIC, 0, entries(0, 5, 8), { next: 8n }),
    ),
    3,
  );
  const sealed = await queue.batch();
  assert.equal(sealed?.rows, 5);
  await queue.markLanded(sealed!.id);
  await queue.promote(TOPIC, 0, 8n);
  const { rows } = await drain(queue);
  assert.deepEqual(ids(rows), idRange(0, 5, 8));
  await assertAccounted(queue, 8);
});

Deno.test("KvQueue.dropPending() starts over when a seal takes the owned rows of a grown chunk", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  await appendOwned(queue, 0, 0, 5);
  await queue.append(TOPIC, 0, entries(0, 5, 8), { next: 8n });
  assert.deepEqual(await chunkOffsets(tmp.path, 0), [0n], "one chunk, owned rows then pending");
  // The seal runs after the drop read the chunk and before it commits.
  const seal = () => queue.seal(new Packer().pack);
  assert.equal(await interleaveBeforeCommit(seal, () => queue.dropPending(TOPIC, 0, 20n)), 3);
  const sealed = await queue.batch();
  assert.deepEqual(ids((await queue.batchEntries(sealed!)).rows), idRange(0, 0, 5));
  await queue.markLanded(sealed!.id);
  assert.deepEqual(await chunkOffsets(tmp.path, 0), []);
  assert.deepEqual(await queue.partition(TOPIC, 0), { next: 20n, committed: 20n });
  await assertAccounted(queue, 5);
});
