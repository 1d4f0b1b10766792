import assert from "node:assert/strict";
import { openQueue } from "./kv_queue.ts";
import { decodeRows } from "./_row_binary.ts";
import { batchPartKey, batchPartPrefix, batchRowsPrefix, returnedPrefix } from "./keys.ts";
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
  Packer,
  rawKeys,
  rowId,
  tempKv,
  TOPIC,
  utcDay,
} from "./_queue_testing.ts";

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
    assert.deepEqual(await chunkOffsets(tmp.path, 1), [3n]);
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

Deno.test("KvQueue.seal() seals an owned backlog of more than 99 chunks", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  // One chunk per append, as when Kafka hands over one message per fetch.
  for (let o = 0; o < 150; o++) await appendOwned(queue, 0, o, o + 1);
  const { rows } = await drain(queue);
  assert.deepEqual(ids(rows), idRange(0, 0, 150));
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

Deno.test("KvQueue.seal() seals again when an append grows a chunk it took", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  await appendOwned(queue, 0, 0, 5);
  let packs = 0;
  const packer = new Packer();
  const batch = await queue.seal(async (rows, batchId) => {
    // While the first body is built, an append adds pending rows to the chunk.
    if (packs++ === 0) await queue.append(TOPIC, 0, entries(0, 5, 8), { next: 8n });
    return await packer.pack(rows, batchId);
  });
  assert.equal(packs, 2);
  assert.deepEqual(ids(packer.offered[1]!), idRange(0, 0, 5), "only the owned rows");
  assert.equal(batch?.id, packer.batchIds[1]);
  assert.deepEqual(await rawKeys(tmp.path, batchPartPrefix()), [batchPartKey(batch!.id, 0)]);
  await queue.markLanded(batch!.id);
  await queue.promote(TOPIC, 0, 8n);
  const { rows } = await drain(queue);
  assert.deepEqual(ids(rows), idRange(0, 5, 8));
  await assertAccounted(queue, 8);
});

Deno.test("KvQueue.seal() takes owned rows from at most 4 chunks also holding pending rows", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  for (let p = 0; p < 6; p++) {
    await appendOwned(queue, p, 0, 2);
    await queue.append(TOPIC, p, entries(p, 2, 4), { next: 4n });
  }
  const packer = new Packer();
  await queue.seal(packer.pack);
  assert.deepEqual(ids(packer.offered[0]!), [0, 1, 2, 3].flatMap((p) => idRange(p, 0, 2)));
  await queue.markLanded((await queue.batch())!.id);
  for (let p = 0; p < 6; p++) await queue.promote(TOPIC, p, 4n);
  const { rows } = await drain(queue);
  assertExactlyOnce(ids(rows), [
    ...[0, 1, 2, 3].flatMap((p) => idRange(p, 2, 4)),
    ...[4, 5].flatMap((p) => idRange(p, 0, 4)),
  ]);
  await assertAccounted(queue, 24);
});

Deno.test("KvQueue.seal() takes rows from at most 99 partitions", async () => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  for (let p = 0; p < 101; p++) await appendOwned(queue, p, 0, 1);
  const { rows, batches } = await drain(queue);
  assert.deepEqual(batches.map((b) => b.rows), [99, 2]);
  assertExactlyOnce(ids(rows), Array.from({ length: 101 }, (_, p) => rowId(p, 0)));
});

Deno.test("KvQueue.seal() takes every owned chunk of its day past chunks of another day", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  // Around midnight UTC late records interleave two days in every partition.
  const nextDay = (offset: number) => offset % 3 === 1 ? { timestamp: DAY0 + DAY + offset } : {};
  const firstDay = (partition: number) => idRange(partition, 0, 15).filter((_, i) => i % 3 !== 1);
  const secondDay = (partition: number) => idRange(partition, 0, 15).filter((_, i) => i % 3 === 1);

  await t.step("three appends per partition, each holding rows of both days", async () => {
    for (let p = 0; p < 2; p++) {
      await appendOwned(queue, p, 0, 5, nextDay);
      await appendOwned(queue, p, 5, 10, nextDay);
      await appendOwned(queue, p, 10, 15, nextDay);
    }
    // Pending rows of both days: no seal looks past them.
    await queue.append(TOPIC, 0, entries(0, 15, 21, nextDay), { next: 21n });
  });

  await t.step("one seal offers every row of the first day", async () => {
    const packer = new Packer();
    const batch = await queue.seal(packer.pack);
    assert.ok(batch !== null);
    assertExactlyOnce(ids(packer.offered[0]!), [0, 1].flatMap(firstDay));
    assert.ok(packer.offered[0]!.every((r) => utcDay(r.timestamp) === utcDay(DAY0)));
    await queue.markLanded(batch.id);
  });

  await t.step("the next seal offers every row of the other day", async () => {
    const { rows, batches } = await drain(queue);
    assert.equal(batches.length, 1);
    assertExactlyOnce(ids(rows), [0, 1].flatMap(secondDay));
    await assertAccounted(queue, 36);
  });

  await t.step("the pending rows follow once owned", async () => {
    await queue.promote(TOPIC, 0, 21n);
    const { rows, batches } = await drain(queue);
    assert.equal(batches.length, 2);
    assertExactlyOnce(ids(rows), idRange(0, 15, 21));
    await assertAccounted(queue, 36);
  });
});
