/**
 * The crash-recovery paths of the ownership protocol (lib/_commit_metadata.ts),
 * each built deterministically from real parts: real Kafka group offsets, a
 * real KV file and the real service as a child process.
 *
 * Instance A "crashed" with rows of partition {@linkcode P} appended to its KV
 * but not settled: owned rows `[0, c)` (its commit of `c` was recorded) and
 * pending rows `[c, n)`. The test writes that KV with `openQueue()` and the
 * rows `messageToRow()` makes of the very Kafka messages at those offsets, and
 * sets the group's commit with a kafkajs consumer in the same group, as the
 * crashed instance would have left it. Then:
 *
 * - **drop**: the group's commit is `c`, not A's; instance B consumes `[c, end)`
 *   and commits. A restarted must drop its pending copies, store its owned rows,
 *   and leave B's commit alone.
 * - **promote**: A's commit of `n` landed (A's metadata), then B consumed
 *   `[n, end)`, its commits carrying the handover `[n, A]`. A restarted must
 *   promote and store `[c, n)`, which only its KV holds.
 * - **fence**: nobody moved; A restarted commits `n` itself and stores
 *   everything once, queueing nothing twice.
 *
 * A takes partition P either alone (B stopped: it holds P but no batch of P
 * will ever come, as B consumed it all) or not at all (B running, its member
 * id sorted first, so the round-robin assigner leaves it two partitions, P
 * among them on this broker: asserted). Either way only the cron watchdog's
 * `settlePending()` can settle the rows, within a minute.
 */
import assert from "node:assert/strict";
import { Kafka, logLevel } from "kafkajs";
import { formatMetadata, parseMetadata } from "../lib/_commit_metadata.ts";
import { partitionKey } from "../lib/_keys.ts";
import { openQueue, type PartitionState, type QueueEntry } from "../lib/kv_queue.ts";
import { messageToRow } from "../lib/message_to_row.ts";
import type { HttpLogRecord } from "../lib/types.ts";
import { keepLog } from "./_feed.ts";
import { groupOffsets } from "./_kafka_group.ts";
import {
  freeLoopbackPort,
  type LiveService,
  scrapeMetric,
  spawnLiveService,
} from "./_live_service.ts";
import {
  assertExactlyOnce,
  createWorld,
  delay,
  produceRecords,
  storedCount,
  type World,
} from "./_pipeline.ts";
import { progress } from "./_progress.ts";
import { clickhouseQuery, KAFKA_BROKERS } from "./_stack.ts";

/** The partition A left unsettled. */
const P = 0;
/** Records produced over the 3 partitions. */
const COUNT = 1_500;
/** Round-robin sorts members by id (`<client id>-<uuid>`): B's sorts first and gets two partitions. */
const CLIENT_B = "handover-1-b";
const CLIENT_A = "handover-2-a";

/** One Kafka message of partition P, read back, with the row the service makes of it. */
interface Message {
  offset: bigint;
  entry: QueueEntry;
}

/** What a scenario starts from. */
interface Setup {
  world: World;
  records: HttpLogRecord[];
  /** Partition P's messages, by offset. */
  messages: Message[];
  /** End offset per partition. */
  ends: Map<number, bigint>;
  kvA: string;
  kvB: string;
}

function kafka(clientId: string): Kafka {
  return new Kafka({ clientId, brokers: KAFKA_BROKERS.split(","), logLevel: logLevel.NOTHING });
}

/** Polls `check` until it returns a value other than `undefined`. */
async function until<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = 120_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let reported = Date.now();
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`Cannot see ${what} within ${timeoutMs} ms`);
    if (Date.now() - reported > 15_000) {
      reported = Date.now();
      progress(`  … still waiting for ${what}`);
    }
    await delay(250);
  }
}

/** Produces the records and reads every message back from Kafka, to know partition P's offsets. */
async function setUp(world: World, seed: number): Promise<Setup> {
  const { records } = await produceRecords(world, { count: COUNT, seed });
  const consumer = kafka("handover-test-reader").consumer({ groupId: `${world.group}_reader` });
  const read: Array<{ offset: bigint; value: Uint8Array | null }> = [];
  let seen = 0;
  await consumer.connect();
  try {
    await consumer.subscribe({ topic: world.topic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatch: ({ batch }) => {
        seen += batch.messages.length;
        if (batch.partition === P) {
          for (const m of batch.messages) {
            read.push({
              offset: BigInt(m.offset),
              value: m.value === null ? null : new Uint8Array(m.value),
            });
          }
        }
        return Promise.resolve();
      },
    });
    await until(
      "every produced message read back",
      () => Promise.resolve(seen >= COUNT || undefined),
      60_000,
    );
  } finally {
    await consumer.disconnect();
  }
  assert.equal(seen, COUNT);
  const messages: Message[] = read.map(({ offset, value }) => {
    const result = messageToRow(value);
    assert.ok(result.ok, `message ${offset} of partition ${P} is invalid`);
    return { offset, entry: { offset, row: result.row } };
  });
  messages.sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
  assert.deepEqual(
    messages.map((m) => m.offset),
    messages.map((_, i) => BigInt(i)),
    `partition ${P} holds offsets 0..end without gaps`,
  );
  const ids = new Set(records.map((r) => r.resourceId));
  assert.ok(messages.every((m) => ids.has(m.entry.row.resourceId)), "rows come from the records");
  const ends = new Map(
    (await groupOffsets(world.topic, world.group)).map((o) => [o.partition, BigInt(o.end)]),
  );
  assert.equal(ends.get(P), BigInt(messages.length));
  assert.ok(messages.length >= 30, `partition ${P} got ${messages.length} of ${COUNT} records`);
  return {
    world,
    records,
    messages,
    ends,
    kvA: `${world.dir}/a/queue.kv`,
    kvB: `${world.dir}/b/queue.kv`,
  };
}

/**
 * Writes A's KV as a crash left it: rows `[0, c)` appended and promoted (its
 * commit of `c` was recorded), rows `[c, n)` appended and pending. Returns A's
 * instance id.
 */
async function prepareQueueA(s: Setup, c: bigint, n: bigint): Promise<string> {
  await Deno.mkdir(`${s.world.dir}/a`, { recursive: true });
  await using queue = await openQueue(s.kvA);
  const slice = (from: bigint, to: bigint) =>
    s.messages.filter((m) => m.offset >= from && m.offset < to).map((m) => m.entry);
  if (c > 0n) {
    assert.equal(await queue.append(s.world.topic, P, slice(0n, c), { next: c }), Number(c));
    await queue.promote(s.world.topic, P, c);
  }
  assert.equal(await queue.append(s.world.topic, P, slice(c, n), { next: n }), Number(n - c));
  // Pending: appended (next) but not owned (committed).
  assert.deepEqual(await queue.partition(s.world.topic, P), { committed: c, next: n });
  assert.equal((await queue.stats()).queuedRows, Number(n));
  return queue.instanceId;
}

/** Commits `offset` of partition P with `metadata` as a member of the world's group, then leaves. */
async function commitAsMember(
  world: World,
  offset: bigint,
  metadata: string | null,
): Promise<void> {
  const consumer = kafka("handover-test-committer").consumer({ groupId: world.group });
  const { promise: joined, resolve } = Promise.withResolvers<void>();
  consumer.on(consumer.events.GROUP_JOIN, () => resolve());
  await consumer.connect();
  try {
    await consumer.subscribe({ topic: world.topic, fromBeginning: true });
    // It fetches but never commits on its own: only the one commit below reaches the group.
    await consumer.run({ autoCommit: false, eachBatch: () => Promise.resolve() });
    await joined;
    await consumer.commitOffsets([
      { topic: world.topic, partition: P, offset: String(offset), metadata },
    ]);
  } finally {
    await consumer.disconnect();
  }
}

/** Asserts the group has a commit of partition P only, at `offset` (`-1n`: none at all). */
async function assertOnlyPCommitted(world: World, offset: bigint): Promise<void> {
  const offsets = await groupOffsets(world.topic, world.group);
  assert.deepEqual(
    offsets.map((o) => [o.partition, o.committed]),
    offsets.map((o) => [o.partition, o.partition === P ? Number(offset) : -1]),
  );
}

/** The group's last commit of partition P. */
async function groupCommit(world: World): Promise<{ offset: bigint; metadata: string | null }> {
  const admin = kafka("handover-test-admin").admin();
  await admin.connect();
  try {
    const [t] = await admin.fetchOffsets({ groupId: world.group, topics: [world.topic] });
    const p = t?.partitions.find((x) => x.partition === P);
    return { offset: BigInt(p?.offset ?? "-1"), metadata: p?.metadata ?? null };
  } finally {
    await admin.disconnect();
  }
}

/** Partition P's state in the KV file at `path`, read without touching anything else. */
async function readPartitionState(s: Setup, path: string): Promise<PartitionState | null> {
  const kv = await Deno.openKv(path);
  try {
    return (await kv.get<PartitionState>(partitionKey(s.world.topic, P))).value;
  } finally {
    kv.close();
  }
}

/** A running instance with its metrics address. */
interface Instance {
  svc: LiveService;
  metrics: string;
  exited: boolean;
}

async function spawnInstance(
  s: Setup,
  name: string,
  kvPath: string,
  clientId: string,
): Promise<Instance> {
  const metrics = `127.0.0.1:${freeLoopbackPort()}`;
  const svc = await spawnLiveService(s.world, {
    name,
    overrides: { KV_PATH: kvPath, KAFKA_CLIENT_ID: clientId, METRICS_LISTEN: metrics },
  });
  const instance = { svc, metrics, exited: false };
  svc.exited.finally(() => instance.exited = true);
  return instance;
}

/** The instance id the service logs at start. */
async function loggedInstanceId(svc: LiveService): Promise<string> {
  const { match } = await svc.waitForLog(/anonymizer "?(anonymizer-[0-9a-f-]+)"? consuming/);
  return match[1]!;
}

/** Partition set of the first "Joined group" line at or after `from` in the log. */
async function joined(svc: LiveService, from = 0): Promise<{ partitions: number[]; at: number }> {
  const { match, seenAt } = await svc.waitForLog(
    /Joined group \S+ with partitions "?([\d,]+|none)"?/,
    { from, timeoutMs: 90_000 },
  );
  const partitions = match[1] === "none" ? [] : match[1]!.split(",").map(Number);
  return { partitions, at: seenAt };
}

/** Waits until every partition's commit is at its end, `rows` are stored and `i`'s queue is empty. */
async function waitForDrained(s: Setup, i: Instance, rows: number): Promise<void> {
  await until(`every partition committed to its end and ${rows} rows stored`, async () => {
    if (i.exited) {
      throw new Error(`${i.svc.name} exited; its log ends:\n${i.svc.log().slice(-2000)}`);
    }
    const offsets = await groupOffsets(s.world.topic, s.world.group);
    if (offsets.some((o) => o.committed !== o.end)) return undefined;
    if (await storedCount(s.world.database) < rows) return undefined;
    const queued = await scrapeMetric(i.metrics, "anonymizer_queue_rows").catch(() => null);
    return queued === 0 ? true : undefined;
  }, 180_000);
}

/** Waits until A's pending rows of P are settled (next === committed) and its queue is empty. */
async function waitForSettled(s: Setup, a: Instance): Promise<PartitionState> {
  const state = await until(`A settling its pending rows of partition ${P}`, async () => {
    const st = await readPartitionState(s, s.kvA);
    return st !== null && st.next === st.committed ? st : undefined;
  }, 150_000);
  // Up to a minute more: a wake-up of the flusher can be lost, and the next cron tick repeats it.
  await until("A's queue draining", async () => {
    const queued = await scrapeMetric(a.metrics, "anonymizer_queue_rows").catch(() => null);
    return queued === 0 ? true : undefined;
  }, 90_000);
  // Anything the settlement wrongly kept would be sealed and sent by now; let it show.
  await delay(3_000);
  return state;
}

/**
 * Waits, if needed, until early in a minute: the cron watchdog fires on the
 * minute, and A must hold partition P before it does for the "A takes P"
 * cases to test what they claim.
 */
async function earlyInMinute(): Promise<void> {
  const s = (Date.now() % 60_000) / 1000;
  if (s > 25) {
    progress(`  … waiting ${Math.ceil(62 - s)} s for the next minute to start A early in it`);
    await delay((62 - s) * 1000);
  }
}

/** Start of the minute after `t`. */
function nextMinute(t: number): number {
  return Math.floor(t / 60_000) * 60_000 + 60_000;
}

/** Resource ids of partition P's messages in `[from, to)`. */
function idsOf(s: Setup, from: bigint, to: bigint): Set<bigint> {
  return new Set(
    s.messages.filter((m) => m.offset >= from && m.offset < to).map((m) => m.entry.row.resourceId),
  );
}

/** Batch ids of every "Flushed batch" line of `svc`. */
function flushedBatches(svc: LiveService): Set<string> {
  return new Set([...svc.log().matchAll(/Flushed batch "?(\d+)"?:/g)].map((m) => m[1]!));
}

/** The batch ids ClickHouse stored the rows of `ids` with. */
async function batchIdsOf(s: Setup, ids: Set<bigint>): Promise<Set<string>> {
  const text = await clickhouseQuery(
    `SELECT DISTINCT batch_id FROM ${s.world.database}.http_log WHERE resource_id IN (${
      [...ids].join(",")
    })`,
  );
  return new Set(text.trim().split("\n").filter((l) => l !== ""));
}

async function assertGroupAtEnd(s: Setup): Promise<void> {
  const offsets = await groupOffsets(s.world.topic, s.world.group);
  assert.deepEqual(
    offsets.map((o) => [o.partition, o.committed]),
    offsets.map((o) => [o.partition, o.end]),
    "the group's commits are at the end offsets",
  );
}

async function stopCleanly(i: Instance): Promise<void> {
  const status = await i.svc.kill("SIGTERM");
  assert.equal(
    status.code,
    0,
    `${i.svc.name} exit code; its log ends:\n${i.svc.log().slice(-2000)}`,
  );
  assert.match(i.svc.log(), /Stopped cleanly/);
}

/** Runs `fn`, then stops every instance it spawned (SIGKILL if SIGTERM hangs) and keeps its log. */
async function withInstances(
  fn: (spawned: Instance[]) => Promise<void>,
): Promise<void> {
  const spawned: Instance[] = [];
  try {
    await fn(spawned);
  } finally {
    for (const i of spawned) {
      await Promise.race([i.svc.kill("SIGTERM"), delay(20_000)]);
      await i.svc.kill("SIGKILL");
      progress(`  ${i.svc.name} log kept at ${await keepLog(i.svc.logPath)}`);
    }
  }
}

/** Splits partition P's `end` into `c = end/3` and `n = 2·end/3`. */
function cuts(end: bigint): [bigint, bigint] {
  return [end / 3n, (2n * end) / 3n];
}

function without(records: HttpLogRecord[], ids: Set<bigint>): HttpLogRecord[] {
  return records.filter((r) => !ids.has(r.resourceId));
}

for (const bRuns of [false, true]) {
  Deno.test({
    name: `KafkaSource drops pending rows another owner stored after a crash before commit (${
      bRuns ? "B keeps P, the watchdog settles" : "B stopped, A takes P"
    })`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      const started = Date.now();
      await using world = await createWorld();
      const s = await setUp(world, bRuns ? 9102 : 9101);
      const end = s.ends.get(P)!;
      const [c, n] = cuts(end);
      progress(`  partition ${P}: end ${end}, A owns [0, ${c}), pending [${c}, ${n})`);
      await withInstances(async (spawned) => {
        let idA = "";
        const prepared = await t.step(
          "A's KV holds owned [0, c) and pending [c, n); the group's commit of P is c, not A's",
          async () => {
            idA = await prepareQueueA(s, c, n);
            await commitAsMember(world, c, null);
            await assertOnlyPCommitted(world, c);
            assert.equal(parseMetadata((await groupCommit(world)).metadata), null);
          },
        );
        if (!prepared) return;

        let b: Instance | undefined;
        let idB = "";
        const consumed = await t.step("B consumes from c onward and stores it", async () => {
          b = await spawnInstance(s, "b", s.kvB, CLIENT_B);
          spawned.push(b);
          idB = await loggedInstanceId(b.svc);
          assert.notEqual(idB, idA);
          const expected = without(s.records, idsOf(s, 0n, c));
          await waitForDrained(s, b, expected.length);
          await assertExactlyOnce(world.database, expected);
          const g = await groupCommit(world);
          assert.equal(g.offset, end);
          // The commit B took over had no metadata: no handover to record.
          assert.deepEqual(parseMetadata(g.metadata), { committer: idB, handovers: [] });
          if (!bRuns) await stopCleanly(b);
        });
        if (!consumed) return;

        let a: Instance | undefined;
        const aStarted = await t.step(
          bRuns
            ? "A restarts on its KV while B runs; B keeps P"
            : "A restarts on its KV alone and takes P before the watchdog's next tick",
          async () => {
            if (!bRuns) await earlyInMinute();
            const joinsB = b!.svc.log().length;
            a = await spawnInstance(s, "a", s.kvA, CLIENT_A);
            spawned.push(a);
            assert.equal(await loggedInstanceId(a.svc), idA);
            const ja = await joined(a.svc);
            progress(`  A joined with partitions ${ja.partitions.join(",") || "none"}`);
            if (bRuns) {
              const jb = await joined(b!.svc, joinsB);
              assert.ok(!ja.partitions.includes(P), `A got partition ${P}: ${ja.partitions}`);
              assert.ok(jb.partitions.includes(P), `B kept partition ${P}: ${jb.partitions}`);
            } else {
              assert.deepEqual(ja.partitions, [0, 1, 2]);
              assert.ok(ja.at < nextMinute(a.svc.spawnedAt), "A joined before the watchdog ticked");
              // Nothing settled the rows yet: no batch of P will come, B consumed it all.
              assert.deepEqual(await readPartitionState(s, s.kvA), { committed: c, next: n });
            }
          },
        );
        if (!aStarted) return;

        await t.step("A drops its pending copies and resumes P where B's commit is", async () => {
          const t0 = Date.now();
          const state = await waitForSettled(s, a!);
          progress(`  A settled partition ${P} after ${Math.round((Date.now() - t0) / 1000)} s`);
          assert.deepEqual(state, { committed: end, next: end });
          const m = /Partition "?0"?: dropped "?(\d+)"? pending rows another owner stored/.exec(
            a!.svc.log(),
          );
          assert.ok(m, `A logged no drop; its log ends:\n${a!.svc.log().slice(-2000)}`);
          progress(`  A's log: ${m[0]}`);
          assert.equal(BigInt(m[1]!), n - c);
        });

        await t.step("every record is stored exactly once; [c, n) came from B", async () => {
          await assertExactlyOnce(world.database, s.records);
          const fromB = flushedBatches(b!.svc);
          const fromA = flushedBatches(a!.svc);
          for (const id of await batchIdsOf(s, idsOf(s, c, n))) {
            assert.ok(fromB.has(id) && !fromA.has(id), `batch ${id} of [c, n) is B's`);
          }
          for (const id of await batchIdsOf(s, idsOf(s, 0n, c))) {
            assert.ok(fromA.has(id), `batch ${id} of [0, c) is A's`);
          }
        });

        await t.step("the group's commits stay at the end; P's is still B's", async () => {
          await assertGroupAtEnd(s);
          assert.equal(parseMetadata((await groupCommit(world)).metadata)?.committer, idB);
        });

        await t.step("the instances stop cleanly; A's KV landed only its owned rows", async () => {
          await stopCleanly(a!);
          if (bRuns) await stopCleanly(b!);
          await using queue = await openQueue(s.kvA);
          const stats = await queue.stats();
          assert.equal(stats.landedRows, Number(c));
          assert.equal(stats.queuedRows, 0);
        });
      });
      progress(`  took ${Math.round((Date.now() - started) / 1000)} s`);
    },
  });
}

for (const bRuns of [false, true]) {
  Deno.test({
    name: `KafkaSource promotes pending rows whose commit landed before a crash (${
      bRuns ? "B keeps P, the watchdog settles" : "B stopped, A takes P"
    })`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      const started = Date.now();
      await using world = await createWorld();
      const s = await setUp(world, bRuns ? 9202 : 9201);
      const end = s.ends.get(P)!;
      const [c, n] = cuts(end);
      progress(`  partition ${P}: end ${end}, A owns [0, ${c}), pending [${c}, ${n})`);
      await withInstances(async (spawned) => {
        let idA = "";
        const prepared = await t.step(
          "A's KV holds owned [0, c) and pending [c, n); the group's commit of P is A's n",
          async () => {
            idA = await prepareQueueA(s, c, n);
            await commitAsMember(world, n, formatMetadata({ committer: idA, handovers: [] }));
            await assertOnlyPCommitted(world, n);
            const g = await groupCommit(world);
            assert.deepEqual(parseMetadata(g.metadata), { committer: idA, handovers: [] });
          },
        );
        if (!prepared) return;

        let b: Instance | undefined;
        let idB = "";
        const consumed = await t.step(
          "B takes over at n: it stores [n, end) and never [c, n); its commit records [n, A]",
          async () => {
            b = await spawnInstance(s, "b", s.kvB, CLIENT_B);
            spawned.push(b);
            idB = await loggedInstanceId(b.svc);
            const expected = without(s.records, idsOf(s, 0n, n));
            await waitForDrained(s, b, expected.length);
            await assertExactlyOnce(world.database, expected);
            const g = await groupCommit(world);
            assert.equal(g.offset, end);
            assert.deepEqual(parseMetadata(g.metadata), { committer: idB, handovers: [[n, idA]] });
            if (!bRuns) await stopCleanly(b);
          },
        );
        if (!consumed) return;

        let a: Instance | undefined;
        const aStarted = await t.step(
          bRuns
            ? "A restarts on its KV while B runs; B keeps P"
            : "A restarts on its KV alone and takes P before the watchdog's next tick",
          async () => {
            if (!bRuns) await earlyInMinute();
            const joinsB = b!.svc.log().length;
            a = await spawnInstance(s, "a", s.kvA, CLIENT_A);
            spawned.push(a);
            assert.equal(await loggedInstanceId(a.svc), idA);
            const ja = await joined(a.svc);
            progress(`  A joined with partitions ${ja.partitions.join(",") || "none"}`);
            if (bRuns) {
              const jb = await joined(b!.svc, joinsB);
              assert.ok(!ja.partitions.includes(P), `A got partition ${P}: ${ja.partitions}`);
              assert.ok(jb.partitions.includes(P), `B kept partition ${P}: ${jb.partitions}`);
            } else {
              assert.deepEqual(ja.partitions, [0, 1, 2]);
              assert.ok(ja.at < nextMinute(a.svc.spawnedAt), "A joined before the watchdog ticked");
              assert.deepEqual(await readPartitionState(s, s.kvA), { committed: c, next: n });
            }
          },
        );
        if (!aStarted) return;

        await t.step("A promotes [c, n) and resumes P where B's commit is", async () => {
          const t0 = Date.now();
          const state = await waitForSettled(s, a!);
          progress(`  A settled partition ${P} after ${Math.round((Date.now() - t0) / 1000)} s`);
          assert.deepEqual(state, { committed: end, next: end });
          const m =
            /Partition "?0"?: kept rows below "?(\d+)"?, dropped "?(\d+)"? stored by another owner/
              .exec(a!.svc.log());
          assert.ok(m, `A logged no promotion; its log ends:\n${a!.svc.log().slice(-2000)}`);
          progress(`  A's log: ${m[0]}`);
          assert.equal(BigInt(m[1]!), n);
          assert.equal(m[2], "0");
        });

        await t.step("every record is stored exactly once; [0, n) came from A", async () => {
          await assertExactlyOnce(world.database, s.records);
          const fromA = flushedBatches(a!.svc);
          const fromB = flushedBatches(b!.svc);
          for (const id of await batchIdsOf(s, idsOf(s, 0n, n))) {
            assert.ok(fromA.has(id) && !fromB.has(id), `batch ${id} of [0, n) is A's`);
          }
        });

        await t.step("the group's commits stay at the end; P's is still B's", async () => {
          await assertGroupAtEnd(s);
          assert.equal(parseMetadata((await groupCommit(world)).metadata)?.committer, idB);
        });

        await t.step("the instances stop cleanly; A's KV landed [0, n)", async () => {
          await stopCleanly(a!);
          if (bRuns) await stopCleanly(b!);
          await using queue = await openQueue(s.kvA);
          const stats = await queue.stats();
          assert.equal(stats.landedRows, Number(n));
          assert.equal(stats.queuedRows, 0);
        });
      });
      progress(`  took ${Math.round((Date.now() - started) / 1000)} s`);
    },
  });
}

for (const committedC of [true, false]) {
  Deno.test({
    name: `KafkaSource fences pending rows nobody else consumed with its own commit (${
      committedC ? "the group's commit is A's c" : "the group has no commit"
    })`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      const started = Date.now();
      await using world = await createWorld();
      const s = await setUp(world, committedC ? 9301 : 9302);
      const end = s.ends.get(P)!;
      const [c, n] = committedC ? cuts(end) : [0n, cuts(end)[1]];
      progress(`  partition ${P}: end ${end}, A owns [0, ${c}), pending [${c}, ${n})`);
      await withInstances(async (spawned) => {
        let idA = "";
        const prepared = await t.step(
          committedC
            ? "A's KV holds owned [0, c) and pending [c, n); the group's commit of P is A's c"
            : "A's KV holds pending [0, n); the group has no commit",
          async () => {
            idA = await prepareQueueA(s, c, n);
            if (committedC) {
              await commitAsMember(world, c, formatMetadata({ committer: idA, handovers: [] }));
            }
            await assertOnlyPCommitted(world, committedC ? c : -1n);
          },
        );
        if (!prepared) return;

        let a: Instance | undefined;
        await t.step("A restarts alone and stores every record exactly once", async () => {
          a = await spawnInstance(s, "a", s.kvA, CLIENT_A);
          spawned.push(a);
          assert.deepEqual((await joined(a.svc)).partitions, [0, 1, 2]);
          const t0 = Date.now();
          await waitForDrained(s, a, COUNT);
          progress(`  A drained in ${Math.round((Date.now() - t0) / 1000)} s`);
          await delay(3_000);
          await assertExactlyOnce(world.database, s.records);
        });
        if (a === undefined) return;

        await t.step(
          "A queued nothing twice: Kafka's [c, n) was skipped as already queued",
          async () => {
            const metric = (name: string) => scrapeMetric(a!.metrics, name);
            const redelivered = await metric("anonymizer_records_redelivered_total");
            const queued = await metric("anonymizer_records_queued_total");
            progress(`  A's metrics: redelivered ${redelivered}, queued ${queued}`);
            assert.equal(redelivered, Number(n - c));
            assert.equal(queued, COUNT - Number(n));
            assert.equal(await metric("anonymizer_records_consumed_total"), COUNT - Number(n));
            assert.equal(await metric("anonymizer_records_flushed_total"), COUNT);
          },
        );

        await t.step("the group's commits are at the end; P's is A's", async () => {
          await assertGroupAtEnd(s);
          assert.equal(parseMetadata((await groupCommit(world)).metadata)?.committer, idA);
        });

        await t.step("A stops cleanly; its KV landed every record", async () => {
          await stopCleanly(a!);
          await using queue = await openQueue(s.kvA);
          assert.deepEqual(await queue.partition(world.topic, P), { committed: end, next: end });
          const stats = await queue.stats();
          assert.equal(stats.landedRows, COUNT);
          assert.equal(stats.queuedRows, 0);
        });
      });
      progress(`  took ${Math.round((Date.now() - started) / 1000)} s`);
    },
  });
}
