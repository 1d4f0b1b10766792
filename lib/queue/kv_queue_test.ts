import assert from "node:assert/strict";
import { type BatchMeta, openQueue } from "./kv_queue.ts";
import { decodeRows } from "./_row_binary.ts";
import { batchPartKey, batchPartPrefix, batchRowsKey, batchRowsPrefix } from "./_keys.ts";
import {
  appendOwned,
  assertQueueError,
  idRange,
  ids,
  Packer,
  rawKeys,
  tempKv,
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
