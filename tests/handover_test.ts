/**
 * The crash-recovery paths of the ownership protocol (lib/source/commit_metadata.ts),
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
import { formatMetadata, parseMetadata } from "../lib/source/commit_metadata.ts";
import { partitionKey } from "../lib/queue/keys.ts";
import { openQueue, type PartitionState, type QueueEntry } from "../lib/queue/kv_queue.ts";
import { messageToRow } from "../lib/record/message_to_row.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { keepLog } from "../testing/feed.ts";
import { groupOffsets } from "../testing/kafka_group.ts";
import {
  assertExactlyOnce,
  assertStopsCleanly,
  createWorld,
  delay,
  JOINED_GROUP,
  partitionsOf,
  produceRecords,
  type ServiceProcess,
  spawnService,
  storedCount,
  until,
  type World,
} from "../testing/pipeline.ts";
import { progress } from "../testing/progress.ts";
import { clickhouseQuery, kafkaClient, withKafkaAdmin } from "../testing/stack.ts";

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

/** Produces the records and reads every message back from Kafka, to know partition P's offsets. */
async function setUp(world: World, seed: number): Promise<Setup> {
  const { records } = await produceRecords(world, { count: COUNT, seed });
  const consumer = kafkaClient("handover-test-reader").consumer({
    groupId: `${world.group}_reader`,
  });
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
    await until("every produced message read back", () => seen >= COUNT || undefined, 60_000);
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
  const consumer = kafkaClient("handover-test-committer").consumer({ groupId: world.group });
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
  const [t] = await withKafkaAdmin(
    (admin) => admin.fetchOffsets({ groupId: world.group, topics: [world.topic] }),
    { clientId: "handover-test-admin" },
  );
  const p = t?.partitions.find((x) => x.partition === P);
  return { offset: BigInt(p?.offset ?? "-1"), metadata: p?.metadata ?? null };
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

/** Starts an instance on `kvPath` as Kafka client `clientId`, serving /metrics. */
function spawnInstance(
  s: Setup,
  name: string,
  kvPath: string,
  clientId: string,
): Promise<ServiceProcess> {
  return spawnService(s.world, {
    name,
    overrides: { KV_PATH: kvPath, KAFKA_CLIENT_ID: clientId },
    metrics: true,
  });
}

/** The instance id the service logs at start. */
async function loggedInstanceId(svc: ServiceProcess): Promise<string> {
  const { match } = await svc.waitForLog(/anonymizer "?(anonymizer-[0-9a-f-]+)"? consuming/);
  return match[1]!;
}

/** Partition set of the first "Joined group" line at or after `from` in the log. */
async function joined(
  svc: ServiceProcess,
  from = 0,
): Promise<{ partitions: number[]; at: number }> {
  const { match, seenAt } = await svc.waitForLog(JOINED_GROUP, { from, timeoutMs: 90_000 });
  return { partitions: partitionsOf(match[1]!), at: seenAt };
}

/** Waits until every partition's commit is at its end, `rows` are stored and `i`'s queue is empty. */
async function waitForDrained(s: Setup, i: ServiceProcess, rows: number): Promise<void> {
  await until(`every partition committed to its end and ${rows} rows stored`, async () => {
    if (i.hasExited) {
      throw new Error(`${i.name} exited; its log ends:\n${i.log().slice(-2000)}`);
    }
    const offsets = await groupOffsets(s.world.topic, s.world.group);
    if (offsets.some((o) => o.committed !== o.end)) return undefined;
    if (await storedCount(s.world.database) < rows) return undefined;
    const queued = await i.metric("anonymizer_queue_rows").catch(() => null);
    return queued === 0 ? true : undefined;
  }, 180_000);
}

/** Waits until A's pending rows of P are settled (next === committed) and its queue is empty. */
async function waitForSettled(s: Setup, a: ServiceProcess): Promise<PartitionState> {
  const state = await until(`A settling its pending rows of partition ${P}`, async () => {
    const st = await readPartitionState(s, s.kvA);
    return st !== null && st.next === st.committed ? st : undefined;
  }, 150_000);
  // Up to a minute more: a wake-up of the flusher can be lost, and the next cron tick repeats it.
  await until("A's queue draining", async () => {
    const queued = await a.metric("anonymizer_queue_rows").catch(() => null);
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
function flushedBatches(svc: ServiceProcess): Set<string> {
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

/** Where partition P is cut: A owns `[0, c)`, its rows `[c, n)` are pending, `end` is P's end. */
interface Cut {
  end: bigint;
  c: bigint;
  n: bigint;
}

/**
 * One scenario on a fresh world: the records of `seed` produced, partition
 * P's end cut by `cut`, then `body`; every instance it spawns is stopped
 * afterwards and its log kept.
 */
async function scenario(
  seed: number,
  cut: (end: bigint) => [bigint, bigint],
  body: (s: Setup, cut: Cut, spawned: ServiceProcess[]) => Promise<void>,
): Promise<void> {
  const started = Date.now();
  await using world = await createWorld();
  const s = await setUp(world, seed);
  const end = s.ends.get(P)!;
  const [c, n] = cut(end);
  progress(`  partition ${P}: end ${end}, A owns [0, ${c}), pending [${c}, ${n})`);
  await withInstances((spawned) => body(s, { end, c, n }, spawned));
  progress(`  took ${Math.round((Date.now() - started) / 1000)} s`);
}

/**
 * B's turn while A is down: B starts on its own KV, stores everything of the
 * group's commit onward (all records but the ids of P's `[0, from)`), and
 * commits P's end with `handovers` in its metadata. B stops cleanly unless
 * `keepRunning`.
 */
async function bConsumes(
  s: Setup,
  spawned: ServiceProcess[],
  options: { from: bigint; end: bigint; handovers: Array<[bigint, string]>; keepRunning: boolean },
): Promise<{ b: ServiceProcess; idB: string }> {
  const b = await spawnInstance(s, "b", s.kvB, CLIENT_B);
  spawned.push(b);
  const idB = await loggedInstanceId(b);
  const expected = without(s.records, idsOf(s, 0n, options.from));
  await waitForDrained(s, b, expected.length);
  await assertExactlyOnce(s.world.database, expected);
  const g = await groupCommit(s.world);
  assert.equal(g.offset, options.end);
  assert.deepEqual(parseMetadata(g.metadata), { committer: idB, handovers: options.handovers });
  if (!options.keepRunning) await assertStopsCleanly(b);
  return { b, idB };
}

/**
 * The step in which A restarts on its KV after B's turn. With B running, B
 * keeps P; alone, A takes every partition before the watchdog's next tick,
 * with its pending rows of P still unsettled. Returns A, or `undefined` when
 * the step failed.
 */
async function stepARestarts(
  t: Deno.TestContext,
  s: Setup,
  spawned: ServiceProcess[],
  options: { cut: Cut; b: ServiceProcess; idA: string; bRuns: boolean },
): Promise<ServiceProcess | undefined> {
  const { cut: { c, n }, b, idA, bRuns } = options;
  let a: ServiceProcess | undefined;
  const passed = await t.step(
    bRuns
      ? "A restarts on its KV while B runs; B keeps P"
      : "A restarts on its KV alone and takes P before the watchdog's next tick",
    async () => {
      if (!bRuns) await earlyInMinute();
      const joinsB = b.log().length;
      a = await spawnInstance(s, "a", s.kvA, CLIENT_A);
      spawned.push(a);
      assert.equal(await loggedInstanceId(a), idA);
      const ja = await joined(a);
      progress(`  A joined with partitions ${ja.partitions.join(",") || "none"}`);
      if (bRuns) {
        const jb = await joined(b, joinsB);
        assert.ok(!ja.partitions.includes(P), `A got partition ${P}: ${ja.partitions}`);
        assert.ok(jb.partitions.includes(P), `B kept partition ${P}: ${jb.partitions}`);
      } else {
        assert.deepEqual(ja.partitions, [0, 1, 2]);
        assert.ok(ja.at < nextMinute(a.spawnedAt), "A joined before the watchdog ticked");
        // Nothing settled the rows yet: no batch of P will come, B consumed it all.
        assert.deepEqual(await readPartitionState(s, s.kvA), { committed: c, next: n });
      }
    },
  );
  return passed ? a : undefined;
}

/**
 * Waits until A settled P, asserts P's state is at `end`, and returns the
 * match of `logged`, the line saying how A settled (`what` names it).
 */
async function aSettles(
  s: Setup,
  a: ServiceProcess,
  end: bigint,
  logged: { line: RegExp; what: string },
): Promise<RegExpExecArray> {
  const t0 = Date.now();
  // A settles in two KV writes (promote, then drop what another owner stored) and logs after
  // both: read its state only then, or the moment between the two looks settled.
  await until(`A logging its ${logged.what}`, () => logged.line.test(a.log()) || undefined, 150_000)
    .catch(() => undefined);
  const state = await waitForSettled(s, a);
  progress(`  A settled partition ${P} after ${Math.round((Date.now() - t0) / 1000)} s`);
  const m = logged.line.exec(a.log());
  assert.ok(m, `A logged no ${logged.what}; its log ends:\n${a.log().slice(-2000)}`);
  assert.deepEqual(state, { committed: end, next: end });
  progress(`  A's log: ${m[0]}`);
  return m;
}

/** Asserts the group's commits are at the end offsets, P's made by `committer`. */
async function assertCommitsAtEnd(s: Setup, committer: string): Promise<void> {
  const offsets = await groupOffsets(s.world.topic, s.world.group);
  assert.deepEqual(
    offsets.map((o) => [o.partition, o.committed]),
    offsets.map((o) => [o.partition, o.end]),
    "the group's commits are at the end offsets",
  );
  assert.equal(parseMetadata((await groupCommit(s.world)).metadata)?.committer, committer);
}

/** Stops `instances` cleanly in order, then asserts A's KV landed `landed` rows and queues none. */
async function stopAndAssertLanded(
  s: Setup,
  instances: ServiceProcess[],
  landed: number,
): Promise<void> {
  for (const i of instances) await assertStopsCleanly(i);
  await using queue = await openQueue(s.kvA);
  const stats = await queue.stats();
  assert.equal(stats.landedRows, landed);
  assert.equal(stats.queuedRows, 0);
}

/** Runs `fn`, then stops every instance it spawned (SIGKILL if SIGTERM hangs) and keeps its log. */
async function withInstances(
  fn: (spawned: ServiceProcess[]) => Promise<void>,
): Promise<void> {
  const spawned: ServiceProcess[] = [];
  try {
    await fn(spawned);
  } finally {
    for (const i of spawned) {
      await Promise.race([i.kill("SIGTERM"), delay(20_000)]);
      await i.kill("SIGKILL");
      progress(`  ${i.name} log kept at ${await keepLog(i.logPath)}`);
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
      await scenario(bRuns ? 9102 : 9101, cuts, async (s, cut, spawned) => {
        const { world } = s;
        const { end, c, n } = cut;
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

        let b: ServiceProcess | undefined;
        let idB = "";
        const consumed = await t.step("B consumes from c onward and stores it", async () => {
          // The commit B took over had no metadata: no handover to record.
          ({ b, idB } = await bConsumes(s, spawned, {
            from: c,
            end,
            handovers: [],
            keepRunning: bRuns,
          }));
          assert.notEqual(idB, idA);
        });
        if (!consumed) return;

        const a = await stepARestarts(t, s, spawned, { cut, b: b!, idA, bRuns });
        if (a === undefined) return;

        await t.step("A drops its pending copies and resumes P where B's commit is", async () => {
          const m = await aSettles(s, a, end, {
            line: /Partition "?0"?: dropped "?(\d+)"? pending rows another owner stored/,
            what: "drop",
          });
          assert.equal(BigInt(m[1]!), n - c);
        });

        await t.step("every record is stored exactly once; [c, n) came from B", async () => {
          await assertExactlyOnce(world.database, s.records);
          const fromB = flushedBatches(b!);
          const fromA = flushedBatches(a);
          for (const id of await batchIdsOf(s, idsOf(s, c, n))) {
            assert.ok(fromB.has(id) && !fromA.has(id), `batch ${id} of [c, n) is B's`);
          }
          for (const id of await batchIdsOf(s, idsOf(s, 0n, c))) {
            assert.ok(fromA.has(id), `batch ${id} of [0, c) is A's`);
          }
        });

        await t.step("the group's commits stay at the end; P's is still B's", async () => {
          await assertCommitsAtEnd(s, idB);
        });

        await t.step("the instances stop cleanly; A's KV landed only its owned rows", async () => {
          await stopAndAssertLanded(s, bRuns ? [a, b!] : [a], Number(c));
        });
      });
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
      await scenario(bRuns ? 9202 : 9201, cuts, async (s, cut, spawned) => {
        const { world } = s;
        const { end, c, n } = cut;
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

        let b: ServiceProcess | undefined;
        let idB = "";
        const consumed = await t.step(
          "B takes over at n: it stores [n, end) and never [c, n); its commit records [n, A]",
          async () => {
            ({ b, idB } = await bConsumes(s, spawned, {
              from: n,
              end,
              handovers: [[n, idA]],
              keepRunning: bRuns,
            }));
          },
        );
        if (!consumed) return;

        const a = await stepARestarts(t, s, spawned, { cut, b: b!, idA, bRuns });
        if (a === undefined) return;

        await t.step("A promotes [c, n) and resumes P where B's commit is", async () => {
          const m = await aSettles(s, a, end, {
            line:
              /Partition "?0"?: kept rows below "?(\d+)"?, dropped "?(\d+)"? stored by another owner/,
            what: "promotion",
          });
          assert.equal(BigInt(m[1]!), n);
          assert.equal(m[2], "0");
        });

        await t.step("every record is stored exactly once; [0, n) came from A", async () => {
          await assertExactlyOnce(world.database, s.records);
          const fromA = flushedBatches(a);
          const fromB = flushedBatches(b!);
          for (const id of await batchIdsOf(s, idsOf(s, 0n, n))) {
            assert.ok(fromA.has(id) && !fromB.has(id), `batch ${id} of [0, n) is A's`);
          }
        });

        await t.step("the group's commits stay at the end; P's is still B's", async () => {
          await assertCommitsAtEnd(s, idB);
        });

        await t.step("the instances stop cleanly; A's KV landed [0, n)", async () => {
          await stopAndAssertLanded(s, bRuns ? [a, b!] : [a], Number(n));
        });
      });
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
      const cut = (end: bigint): [bigint, bigint] => committedC ? cuts(end) : [0n, cuts(end)[1]];
      await scenario(committedC ? 9301 : 9302, cut, async (s, { end, c, n }, spawned) => {
        const { world } = s;
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

        let a: ServiceProcess | undefined;
        await t.step("A restarts alone and stores every record exactly once", async () => {
          a = await spawnInstance(s, "a", s.kvA, CLIENT_A);
          spawned.push(a);
          assert.deepEqual((await joined(a)).partitions, [0, 1, 2]);
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
            const metric = (name: string) => a!.metric(name);
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
          await assertCommitsAtEnd(s, idA);
        });

        await t.step("A stops cleanly; its KV landed every record", async () => {
          await assertStopsCleanly(a!);
          await using queue = await openQueue(s.kvA);
          assert.deepEqual(await queue.partition(world.topic, P), { committed: end, next: end });
          const stats = await queue.stats();
          assert.equal(stats.landedRows, COUNT);
          assert.equal(stats.queuedRows, 0);
        });
      });
    },
  });
}
