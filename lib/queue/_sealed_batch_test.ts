import assert from "node:assert/strict";
import { type BatchMeta, openQueue } from "./kv_queue.ts";
import { decodeRows } from "./_row_binary.ts";
import { batchKey, batchPartPrefix, batchRowsPrefix, counterKey } from "./keys.ts";
import {
  appendOwned,
  assertAccounted,
  assertQueueError,
  Clock,
  drain,
  entries,
  idRange,
  ids,
  Packer,
  rawKeys,
  tempKv,
  TOPIC,
} from "./_queue_testing.ts";

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

Deno.test("KvQueue.discard() removes the batch without landing it", async (t) => {
  await using tmp = await tempKv();
  await using queue = await openQueue(tmp.path);
  await appendOwned(queue, 0, 0, 5);
  const batch = await queue.seal(new Packer(3).pack);

  await t.step("batchEntries() returns the rows of the batch in body order", async () => {
    const { rows, offsets, partitions } = await queue.batchEntries(batch!);
    assert.deepEqual(rows, decodeRows(await queue.body(batch!)));
    assert.deepEqual(ids(rows), idRange(0, 0, 3));
    assert.deepEqual([...offsets], [0n, 1n, 2n]);
    assert.deepEqual([...partitions], [0, 0, 0]);
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
