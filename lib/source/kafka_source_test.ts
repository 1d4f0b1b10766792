/**
 * KafkaSource through its consumer seam: a fake consumer hands it batches
 * and records commits; the queue is a real KvQueue in a temp dir.
 */
import assert from "node:assert/strict";
import { SlotSchedule } from "../slot_schedule.ts";
import { QueueError } from "../errors.ts";
import type { KvQueue } from "../queue/kv_queue.ts";
import { openTempQueue } from "../../testing/temp_queue.ts";
import { testRow } from "../../testing/test_row.ts";
import { formatMetadata, parseMetadata } from "./commit_metadata.ts";
import {
  type DeadLetterMessage,
  KafkaSource,
  type MessageResult,
  type SourceBatchEvent,
} from "./kafka_source.ts";
import type { ConsumerHandlers, SourceBatch, SourceConsumer } from "./source_consumer.ts";

const TOPIC = "http_log";

/** What the fake saw at a commit: the call, and the partition's KV state at that moment. */
interface Commit {
  partition: number;
  offset: bigint;
  metadata: string;
  kvNextAtCommit: bigint | null;
  deadLettersAtCommit: number;
}

/** A consumer group member driven by the test. */
class FakeConsumer implements SourceConsumer {
  readonly topic = TOPIC;
  readonly groupId = "anonymizer-unit";
  readonly commits: Commit[] = [];
  /** The group's last commit per partition, as Kafka stores it. */
  readonly group = new Map<number, { offset: bigint; metadata: string | null }>();
  refuseCommits = false;
  /** Member ids the coordinator describes. */
  memberIds: string[] = ["member-1"];
  #handlers: ConsumerHandlers | null = null;

  constructor(readonly queue: KvQueue, readonly deadLetters: DeadLetterMessage[]) {}

  start(handlers: ConsumerHandlers): Promise<void> {
    this.#handlers ??= handlers;
    return Promise.resolve();
  }

  stop(): Promise<void> {
    return Promise.resolve();
  }

  async commit(partition: number, offset: bigint, metadata: string): Promise<void> {
    if (this.refuseCommits) throw new Error("The group is rebalancing, so a rejoin is needed");
    const state = await this.queue.partition(TOPIC, partition);
    this.commits.push({
      partition,
      offset,
      metadata,
      kvNextAtCommit: state?.next ?? null,
      deadLettersAtCommit: this.deadLetters.length,
    });
    this.group.set(partition, { offset, metadata });
  }

  members(): Promise<string[]> {
    return Promise.resolve([...this.memberIds]);
  }

  /** Delivers `offsets` with their commit refused, so the rows stay pending. */
  async deliverUncommitted(partition: number, offsets: bigint[]): Promise<void> {
    this.refuseCommits = true;
    try {
      await this.deliver(partition, offsets);
    } finally {
      this.refuseCommits = false;
    }
  }

  /** Stores a commit by member `"other"`, as after it took `partition` over. */
  committedByOther(partition: number, offset: bigint, handovers: Array<[bigint, string]>): void {
    this.group.set(partition, {
      offset,
      metadata: formatMetadata({ committer: "other", handovers }),
    });
  }

  committed(partition: number): Promise<{ offset: bigint; metadata: string | null }> {
    return Promise.resolve(this.group.get(partition) ?? { offset: -1n, metadata: null });
  }

  /** A group join that assigns `partitions`, as kafkajs reports it. */
  join(partitions: number[], memberId = "member-1"): void {
    this.#handlers!.joined(partitions, memberId);
  }

  /** A rebalance noticed, then answered heartbeats, as kafkajs reports them. */
  rebalance(): void {
    this.#handlers!.rebalancing();
  }

  beat(): void {
    this.#handlers!.heartbeat();
  }

  /** Hands over one batch of `partition` with messages at `offsets`. */
  deliver(
    partition: number,
    offsets: bigint[],
    controls: Partial<SourceBatch> = {},
  ): Promise<void> {
    return this.#handlers!.batch({
      partition,
      messages: offsets.map((offset) => ({
        offset,
        key: null,
        value: new TextEncoder().encode(offset % 10n === 7n ? "bad" : `row ${offset}`),
        timestamp: "1700000000000",
        headers: {},
      })),
      lastOffset: offsets.at(-1)!,
      lag: 3,
      heartbeat: () => Promise.resolve(),
      isRunning: () => true,
      isStale: () => false,
      ...controls,
    });
  }
}

/** Rows for values `row N`; `bad` is refused, as a message that fails validation. */
function toRow(value: Uint8Array | null): MessageResult {
  const text = new TextDecoder().decode(value ?? new Uint8Array());
  if (!text.startsWith("row ")) return { ok: false, code: "not_capnp", message: "not a row" };
  return { ok: true, row: testRow(BigInt(text.slice(4))) };
}

function offsets(from: number, to: number): bigint[] {
  return Array.from({ length: to - from }, (_, i) => BigInt(from + i));
}

/** A source over a fresh queue in its own temp dir, with everything it reports collected. */
async function setUp(
  wrap: (queue: KvQueue) => KvQueue = (q) => q,
  slotSchedule?: SlotSchedule,
) {
  const tmp = await openTempQueue({ prefix: "anonymizer-kafka-source-" });
  const real = tmp.queue;
  const queue = wrap(real);
  const deadLetters: DeadLetterMessage[] = [];
  const events: SourceBatchEvent[] = [];
  let owned = 0;
  const consumer = new FakeConsumer(real, deadLetters);
  const source = new KafkaSource(consumer, {
    queue,
    toRow,
    deadLetters: {
      send: (letters) => {
        deadLetters.push(...letters);
        return Promise.resolve();
      },
    },
  }, {
    onBatch: (e) => events.push(e),
    onOwned: () => owned++,
    slotSchedule,
  });
  await source.start();
  return {
    queue: real,
    consumer,
    source,
    deadLetters,
    events,
    owned: () => owned,
    /** Joins with `partitions` and waits for the settling the join starts. */
    async join(partitions: number[]): Promise<void> {
      consumer.join(partitions);
      await source.settlePending();
    },
    [Symbol.asyncDispose]: () => tmp[Symbol.asyncDispose](),
  };
}

Deno.test("KafkaSource appends a batch's rows, dead-letters the invalid, then commits", async (t) => {
  await using s = await setUp();
  await s.join([0]);
  await s.consumer.deliver(0, offsets(0, 10));

  await t.step("valid rows are queued and owned", async () => {
    assert.deepEqual(await s.queue.partition(TOPIC, 0), { next: 10n, committed: 10n });
    assert.equal((await s.queue.stats()).queuedRows, 9);
    assert.equal(s.owned(), 1);
  });
  await t.step("the invalid message goes to the dead letters unchanged", () => {
    assert.deepEqual(s.deadLetters.map((d) => [d.partition, d.offset, d.code, d.key]), [
      [0, "7", "not_capnp", null],
    ]);
    assert.equal(new TextDecoder().decode(s.deadLetters[0]!.value!), "bad");
  });
  await t.step("one commit of the next offset, after rows and dead letters are durable", () => {
    assert.deepEqual(s.consumer.commits.map((c) => [c.partition, c.offset]), [[0, 10n]]);
    assert.equal(s.consumer.commits[0]!.kvNextAtCommit, 10n);
    assert.equal(s.consumer.commits[0]!.deadLettersAtCommit, 1);
  });
  await t.step("the commit metadata names this queue's instance", () => {
    assert.deepEqual(parseMetadata(s.consumer.commits[0]!.metadata), {
      committer: s.queue.instanceId,
      handovers: [],
    });
  });
  await t.step("the batch is reported", () => {
    assert.deepEqual(s.events, [{
      partition: 0,
      received: 10,
      skipped: 0,
      queued: 9,
      deadLettered: 1,
      deadLetterCodes: { not_capnp: 1 },
      lag: 3,
    }]);
    assert.deepEqual(s.source.status().lag, { 0: 3 });
  });
  await t.step("a redelivered batch is skipped: no rows, no dead letters, no commit", async () => {
    await s.consumer.deliver(0, offsets(5, 10));
    assert.equal((await s.queue.stats()).queuedRows, 9);
    assert.equal(s.deadLetters.length, 1);
    assert.equal(s.consumer.commits.length, 1);
    assert.equal(s.events.at(-1)!.skipped, 5);
  });
  await t.step("a batch that overlaps queues only its new offsets", async () => {
    await s.consumer.deliver(0, offsets(8, 13));
    assert.equal((await s.queue.stats()).queuedRows, 12);
    assert.deepEqual(s.consumer.commits.at(-1)!.offset, 13n);
    assert.equal(s.events.at(-1)!.skipped, 2);
  });
});

Deno.test("KafkaSource keeps rows pending while the commit fails, and commits them later", async (t) => {
  await using s = await setUp();
  await s.join([0]);
  s.consumer.refuseCommits = true;
  await s.consumer.deliver(0, offsets(0, 5));

  await t.step("rows are durable but pending, so not sealable", async () => {
    assert.deepEqual(await s.queue.partition(TOPIC, 0), { next: 5n, committed: 0n });
    assert.equal((await s.queue.stats()).queuedRows, 5);
    assert.equal(s.owned(), 0);
  });
  await t.step("the watchdog's settling commits them again once Kafka accepts", async () => {
    s.consumer.refuseCommits = false;
    await s.source.settlePending();
    assert.deepEqual(s.consumer.commits.map((c) => [c.partition, c.offset]), [[0, 5n]]);
    assert.deepEqual(await s.queue.partition(TOPIC, 0), { next: 5n, committed: 5n });
    assert.equal(s.owned(), 1);
  });
});

Deno.test("KafkaSource hands partitions over on a rebalance without losing or doubling rows", async (t) => {
  await t.step("taking over records the previous owner in the commit metadata", async () => {
    await using s = await setUp();
    s.consumer.committedByOther(0, 10n, []);
    await s.join([0]);
    await s.consumer.deliver(0, offsets(10, 13));
    assert.deepEqual(parseMetadata(s.consumer.commits.at(-1)!.metadata), {
      committer: s.queue.instanceId,
      handovers: [[10n, "other"]],
    });
    assert.deepEqual(await s.queue.partition(TOPIC, 0), { next: 13n, committed: 13n });
  });

  await t.step("pending rows another owner consumed are dropped after a revoke", async () => {
    await using s = await setUp();
    await s.join([0]);
    await s.consumer.deliverUncommitted(0, offsets(0, 5));
    // Our commit never landed: the next owner started at 0 and has committed 8.
    s.consumer.committedByOther(0, 8n, [[0n, "nobody"]]);
    await s.join([]);
    assert.deepEqual(await s.queue.partition(TOPIC, 0), { next: 8n, committed: 8n });
    assert.equal((await s.queue.stats()).queuedRows, 0);
    assert.equal(s.consumer.commits.length, 0);
  });

  await t.step("pending rows whose commit landed are kept after a revoke", async () => {
    await using s = await setUp();
    await s.join([0]);
    await s.consumer.deliverUncommitted(0, offsets(0, 5));
    // Our commit of 5 landed before the reply was lost: the next owner started there.
    s.consumer.committedByOther(0, 9n, [[5n, s.queue.instanceId]]);
    await s.join([]);
    assert.deepEqual(await s.queue.partition(TOPIC, 0), { next: 9n, committed: 9n });
    assert.equal((await s.queue.stats()).queuedRows, 5);
    assert.equal(s.owned(), 1);
    assert.equal(s.consumer.commits.length, 0);
  });

  await t.step("pending rows nobody else consumed are fenced with our own commit", async () => {
    await using s = await setUp();
    await s.join([0]);
    await s.consumer.deliverUncommitted(0, offsets(0, 5));
    await s.join([0]);
    assert.deepEqual(s.consumer.commits.map((c) => [c.partition, c.offset]), [[0, 5n]]);
    assert.deepEqual(await s.queue.partition(TOPIC, 0), { next: 5n, committed: 5n });
  });

  await t.step("partitions are reported as assigned in order", async () => {
    await using s = await setUp();
    await s.join([2, 0, 1]);
    assert.deepEqual(s.source.status().assigned, [0, 1, 2]);
    assert.equal(s.source.status().joined, true);
  });
});

Deno.test("KafkaSource holds a batch while KV refuses writes, and resumes", async (t) => {
  let full = true;
  const refusing = (queue: KvQueue): KvQueue =>
    new Proxy(queue, {
      get(target, key) {
        if (key === "append" && full) {
          return () =>
            Promise.reject(
              new QueueError("Cannot append to partition 0 of http_log in KV: disk is full", {
                code: "disk_full",
                retriable: true,
              }),
            );
        }
        const value = Reflect.get(target, key, target);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });

  await t.step("paused: nothing queued or committed, heartbeats sent, then resumed", async () => {
    full = true;
    await using s = await setUp(refusing);
    await s.join([0]);
    const seen: Array<{ backpressure: boolean; commits: number; queued: number }> = [];
    await s.consumer.deliver(0, offsets(0, 5), {
      heartbeat: async () => {
        seen.push({
          backpressure: s.source.status().backpressure,
          commits: s.consumer.commits.length,
          queued: (await s.queue.stats()).queuedRows,
        });
        full = false;
      },
    });
    assert.deepEqual(seen, [{ backpressure: true, commits: 0, queued: 0 }]);
    assert.equal(s.source.status().backpressure, false);
    assert.deepEqual(s.consumer.commits.map((c) => c.offset), [5n]);
    assert.equal((await s.queue.stats()).queuedRows, 5);
  });

  await t.step("a batch rebalanced away while paused is abandoned uncommitted", async () => {
    full = true;
    await using s = await setUp(refusing);
    await s.join([0]);
    await s.consumer.deliver(0, offsets(0, 5), { isStale: () => true });
    assert.equal(s.source.status().backpressure, true);
    assert.deepEqual(s.consumer.commits, []);
    assert.equal(await s.queue.partition(TOPIC, 0), null);
    assert.deepEqual(s.events, []);
  });
});

Deno.test("KafkaSource tells the slot schedule who is in the group", async (t) => {
  const schedule = new SlotSchedule();
  await using s = await setUp((q) => q, schedule);
  await t.step("a join shares the members the coordinator describes", async () => {
    s.consumer.memberIds = ["member-2", "member-1"];
    await s.join([0, 1]);
    await until(() => schedule.members.length === 2);
    assert.deepEqual(schedule.members, ["member-1", "member-2"]);
  });
  await t.step("a rebalance withdraws the view until the next join", async () => {
    s.consumer.rebalance();
    assert.deepEqual(schedule.members, []);
    assert.equal(schedule.slotAt(Date.now()), null);
    s.consumer.memberIds = ["member-1"];
    await s.join([0, 1, 2]);
    await until(() => schedule.members.length === 1);
    s.consumer.beat();
    assert.notEqual(schedule.slotAt(Date.now()), null);
  });
});

/** Resolves once `ok()` holds, checking every 10 ms for up to 2 s. */
async function until(ok: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(ok(), "condition not met within 2 s");
}
