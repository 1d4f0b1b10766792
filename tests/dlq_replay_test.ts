/**
 * Dead-letter replay on the real stack: records too old for MAX_PAST_AGE_MS
 * are dead-lettered by a running service; with the setting raised, `dlq
 * replay` (run as an operator types it) queues the ones that pass now, and
 * the service lands each of them exactly once. A dry run and a second replay
 * queue nothing, and nothing is ever written to the dead-letter topic again.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../lib/config.ts";
import type { ErrorCode } from "../lib/errors.ts";
import { openQueue } from "../lib/queue/kv_queue.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { startService } from "../lib/service.ts";
import { encodeRecord } from "../tools/encode_record.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import { produceRaw, report, waitUntil } from "../testing/bad_input.ts";
import { runCli } from "../testing/cli.ts";
import { goodMessages, interleave, type TestMessage } from "../testing/malformed.ts";
import { assertExactlyOnce, createWorld, storedCount } from "../testing/pipeline.ts";
import { createTopic, topicMessageCount, withKafkaAdmin } from "../testing/stack.ts";

const DAY_MS = 86_400_000;
const GOOD = 300;
/** 40 days old: dead at the default 30 days, replayable at 60. */
const OLD = 20;
/** 400 days old: dead at 60 days too. */
const ANCIENT = 10;
/** responseStatus 600: dead whatever the age limit. */
const BAD_STATUS = 10;
const DEAD = OLD + ANCIENT + BAD_STATUS;

/** A record dead-lettered with `code` under the default settings. */
function deadMessage(code: ErrorCode, r: HttpLogRecord): TestMessage {
  return {
    kind: code,
    value: encodeRecord(r),
    resourceId: r.resourceId,
    remoteAddr: r.remoteAddr,
    url: r.url,
    expected: { outcome: "dead_lettered", code },
  };
}

/** Counts of one code in a `dlq replay` table: replayed, still dead, skipped by filter. */
function countsOf(stdout: string, code: string): [number, number, number] | undefined {
  const m = new RegExp(`^${code}\\s+(\\d+)\\s+(\\d+)\\s+(\\d+)$`, "m").exec(stdout);
  return m === null ? undefined : [Number(m[1]), Number(m[2]), Number(m[3])];
}

Deno.test({
  name: "dlq replay queues each dead letter that passes now exactly once, and nothing twice",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld({ prefix: "dlq" });
    // Two partitions, so the replay's fencing is per partition as on the main path.
    const dlqTopic = await createTopic(`${world.topic}_dlq2`, 2);
    const env: Record<string, string> = { ...world.env, KAFKA_DLQ_TOPIC: dlqTopic };
    const raised = { ...env, MAX_PAST_AGE_MS: String(60 * DAY_MS) };
    const replayGroup = `${world.group}-dlq-replay`;
    const now = Date.now();
    const records = syntheticRecords({ seed: 1401, now, distinctResourceIds: true })
      .take(GOOD + DEAD).toArray();
    const good = records.slice(0, GOOD);
    const old = records.slice(GOOD, GOOD + OLD).map((r) => ({
      ...r,
      timestampEpochMilli: r.timestampEpochMilli - BigInt(40 * DAY_MS),
    }));
    const ancient = records.slice(GOOD + OLD, GOOD + OLD + ANCIENT).map((r) => ({
      ...r,
      timestampEpochMilli: r.timestampEpochMilli - BigInt(400 * DAY_MS),
    }));
    const badStatus = records.slice(GOOD + OLD + ANCIENT).map((r) => ({
      ...r,
      responseStatus: 600,
    }));
    const dead = [
      ...old.map((r) => deadMessage("timestamp_too_old", r)),
      ...ancient.map((r) => deadMessage("timestamp_too_old", r)),
      ...badStatus.map((r) => deadMessage("status_out_of_range", r)),
    ];
    const replay = (args: string[], settings: Record<string, string>) =>
      runCli(["dlq", "replay", ...args], settings, { timeoutMs: 120_000 });

    await t.step(`produce ${GOOD} good and ${DEAD} invalid records`, async () => {
      await produceRaw(world.topic, interleave(goodMessages(good), dead, 1403), {
        partitions: 3,
        seed: 1404,
      });
    });

    const service = await startService(loadConfig(env, []));
    let stopped = false;
    try {
      await t.step("the service stores the good records and dead-letters the rest", async () => {
        const done = await waitUntil(
          async () =>
            await storedCount(world.database) >= GOOD &&
            await topicMessageCount(dlqTopic) >= DEAD,
          120_000,
        );
        assert.ok(done, "good records stored and bad ones dead-lettered within 120 s");
        assert.equal(await storedCount(world.database), GOOD);
        assert.equal(await topicMessageCount(dlqTopic), DEAD);
      });

      await t.step("dlq replay refuses while the service holds the queue", async () => {
        const run = await replay([], raised);
        assert.equal(run.code, 1, run.stderr);
        assert.match(run.stderr, /KV_PATH is in use by another process/);
        assert.match(run.stderr, /stop the service on this KV_PATH first/);
      });

      await t.step("dlq replay --dry-run counts beside the running service", async () => {
        const run = await replay(["--dry-run"], raised);
        assert.equal(run.code, 0, run.stderr);
        report(run.stdout.split("\n").filter((l) => !/^\d{4}-\d\d-\d\d /.test(l)).join("\n"));
        assert.match(
          run.stdout,
          new RegExp(`dry run: nothing queued or committed\\): ${DEAD} read`),
        );
        assert.deepEqual(countsOf(run.stdout, "timestamp_too_old"), [OLD, ANCIENT, 0]);
        assert.deepEqual(countsOf(run.stdout, "status_out_of_range"), [0, BAD_STATUS, 0]);
        const filtered = await replay(["--dry-run", "--code", "status_out_of_range"], raised);
        assert.equal(filtered.code, 0, filtered.stderr);
        assert.deepEqual(countsOf(filtered.stdout, "timestamp_too_old"), [0, 0, OLD + ANCIENT]);
        assert.deepEqual(countsOf(filtered.stdout, "status_out_of_range"), [0, BAD_STATUS, 0]);
        const later = await replay(["--dry-run", "--since", "1h"], raised);
        assert.equal(later.code, 0, later.stderr);
        assert.deepEqual(countsOf(later.stdout, "timestamp_too_old"), [OLD, ANCIENT, 0]);
        const future = await replay(
          ["--dry-run", "--since", new Date(now + DAY_MS).toISOString()],
          raised,
        );
        assert.equal(future.code, 0, future.stderr);
        assert.deepEqual(countsOf(future.stdout, "timestamp_too_old"), [0, 0, OLD + ANCIENT]);
      });

      await service.stop();
      stopped = true;
    } finally {
      if (!stopped) await service.stop();
    }

    await t.step("the dry runs committed nothing, left no group, and wrote nothing", async () => {
      await withKafkaAdmin(async (admin) => {
        const [offsets] = await admin.fetchOffsets({ groupId: replayGroup, topics: [dlqTopic] });
        assert.ok(offsets?.partitions.every((p) => p.offset === "-1"), "no replay commit");
        const { groups } = await admin.listGroups();
        assert.deepEqual(groups.filter((g) => g.groupId.startsWith(`${replayGroup}-dry-run`)), []);
      }, { clientId: "anonymizer-tests-admin" });
      await using queue = await openQueue(env.KV_PATH!);
      assert.deepEqual((await queue.partitions()).filter((p) => p.topic === dlqTopic), []);
      assert.equal(await topicMessageCount(dlqTopic), DEAD);
    });

    await t.step("dlq replay queues what passes now and leaves the rest dead", async () => {
      const run = await replay([], raised);
      assert.equal(run.code, 0, run.stderr);
      report(run.stdout.split("\n").filter((l) => !/^\d{4}-\d\d-\d\d /.test(l)).join("\n"));
      assert.deepEqual(countsOf(run.stdout, "timestamp_too_old"), [OLD, ANCIENT, 0]);
      assert.deepEqual(countsOf(run.stdout, "status_out_of_range"), [0, BAD_STATUS, 0]);
      assert.equal(await topicMessageCount(dlqTopic), DEAD, "nothing dead-lettered again");
      await using queue = await openQueue(env.KV_PATH!);
      const states = (await queue.partitions()).filter((p) => p.topic === dlqTopic);
      assert.ok(states.every((p) => p.next === p.committed), "every replayed row is owned");
      assert.equal((await queue.stats()).queuedRows, OLD);
    });

    await t.step("a second replay reads and queues nothing", async () => {
      const run = await replay([], raised);
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout, /: 0 read/);
      assert.equal(await topicMessageCount(dlqTopic), DEAD);
      await using queue = await openQueue(env.KV_PATH!);
      assert.equal((await queue.stats()).queuedRows, OLD);
    });

    await t.step("the service lands every replayed record exactly once", async () => {
      const again = await startService(loadConfig(env, []));
      try {
        const done = await waitUntil(
          async () => await storedCount(world.database) >= GOOD + OLD,
          120_000,
        );
        assert.ok(done, `${GOOD + OLD} rows within 120 s`);
        await assertExactlyOnce(world.database, [...good, ...old]);
      } finally {
        await again.stop();
      }
    });
  },
});

Deno.test({
  name: "dlq replay killed with SIGKILL mid-way and run again queues every letter exactly once",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const COUNT = 20_000;
    await using world = await createWorld({ prefix: "dlqkill" });
    const dlqTopic = await createTopic(`${world.topic}_dlq2`, 2);
    const env: Record<string, string> = { ...world.env, KAFKA_DLQ_TOPIC: dlqTopic };
    const raised = { ...env, MAX_PAST_AGE_MS: String(60 * DAY_MS) };
    const replayGroup = `${world.group}-dlq-replay`;
    const old = syntheticRecords({ seed: 1411, now: Date.now(), distinctResourceIds: true })
      .take(COUNT).toArray().map((r) => ({
        ...r,
        timestampEpochMilli: r.timestampEpochMilli - BigInt(40 * DAY_MS),
      }));

    await t.step(`the service dead-letters ${COUNT} records 40 days old`, async () => {
      await produceRaw(world.topic, old.map((r) => deadMessage("timestamp_too_old", r)), {
        partitions: 3,
        seed: 1412,
      });
      const service = await startService(loadConfig(env, []));
      try {
        assert.ok(
          await waitUntil(async () => await topicMessageCount(dlqTopic) >= COUNT, 180_000),
          `${COUNT} dead letters within 180 s`,
        );
      } finally {
        await service.stop();
      }
      assert.equal(await storedCount(world.database), 0);
    });

    const committed = () =>
      withKafkaAdmin(async (admin) => {
        const [offsets] = await admin.fetchOffsets({ groupId: replayGroup, topics: [dlqTopic] });
        return (offsets?.partitions ?? []).reduce((n, p) => n + Math.max(0, Number(p.offset)), 0);
      }, { clientId: "anonymizer-tests-admin" });

    await t.step(
      "a replay killed after its first commits leaves the rest for the next",
      async () => {
        const child = new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            ...["--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-sys"],
            "main.ts",
            "dlq",
            "replay",
          ],
          cwd: new URL("..", import.meta.url),
          clearEnv: true,
          env: { PATH: Deno.env.get("PATH") ?? "", HOME: Deno.env.get("HOME") ?? "", ...raised },
          stdin: "null",
          stdout: "null",
          stderr: "null",
        }).spawn();
        let seen = 0;
        const deadline = Date.now() + 120_000;
        while (seen === 0 && Date.now() < deadline) {
          seen = await committed();
          if (seen === 0) await new Promise((r) => setTimeout(r, 20));
        }
        child.kill("SIGKILL");
        await child.status;
        const atKill = await committed();
        report(`  killed the replay with ${atKill} of ${COUNT} dead letters committed`);
        assert.ok(seen > 0, "the replay committed within 120 s");
        assert.ok(atKill < COUNT, "the kill came before the replay finished");
      },
    );

    await t.step("the next replay queues the rest, each letter once", async () => {
      const run = await runCli(["dlq", "replay"], raised, { timeoutMs: 120_000 });
      assert.equal(run.code, 0, run.stderr);
      const counts = countsOf(run.stdout, "timestamp_too_old");
      report(`  second replay: ${JSON.stringify(counts)} (replayed, still dead, skipped)`);
      assert.equal(await committed(), COUNT);
      await using queue = await openQueue(env.KV_PATH!);
      const states = (await queue.partitions()).filter((p) => p.topic === dlqTopic);
      assert.ok(states.every((p) => p.next === p.committed), "every replayed row is owned");
      assert.equal((await queue.stats()).queuedRows, COUNT);
    });

    await t.step("the service lands all of them exactly once", async () => {
      const service = await startService(loadConfig(env, []));
      try {
        assert.ok(
          await waitUntil(async () => await storedCount(world.database) >= COUNT, 180_000),
          `${COUNT} rows within 180 s`,
        );
        await assertExactlyOnce(world.database, old);
      } finally {
        await service.stop();
      }
    });
  },
});
