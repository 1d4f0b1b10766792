/**
 * produce() against the real Kafka of the local stack (`deno task stack:up`):
 * what it writes, read back with a kafkajs consumer and decodeRecord(), is
 * exactly the seeded sequence of syntheticRecords().
 *
 * Without Kafka on its port the test is skipped with a message, except in CI
 * (CI=true), where it must run and so fails.
 */
import assert from "node:assert/strict";
import { logLevel } from "kafkajs";
import { kafkaClient } from "../lib/source/kafka_client.ts";
import { decodeRecord } from "../lib/record/decode.ts";
import { produce } from "../tools/produce.ts";
import { main } from "../tools/produce_command.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { createTopic, KAFKA_BROKERS, uniqueName } from "../testing/stack.ts";

const COUNT = 1_000;
const SEED = 20_240_601;
const NOW = 1_700_000_000_000;
const BROKERS = KAFKA_BROKERS.split(",");

async function listening(hostPort: string): Promise<boolean> {
  const url = new URL(`tcp://${hostPort}`);
  try {
    const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port) });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

const kafkaUp = await listening(BROKERS[0]!);
const skip = !kafkaUp && Deno.env.get("CI") !== "true";
if (skip) {
  // deno-lint-ignore no-console -- says why the test is skipped
  console.warn(
    `tests/produce_roundtrip_test.ts skipped: no Kafka listening on ${
      BROKERS[0]
    } (start it with deno task stack:up)`,
  );
}

/** In CI the test runs without Kafka only to fail, with this message rather than kafkajs's retries. */
function requireKafka(): void {
  assert.ok(kafkaUp, `no Kafka listening on ${BROKERS[0]}: CI=true needs the stack up`);
}

/** Every field, so that records compare by content whatever order partitions deliver them in. */
function contentKey(r: HttpLogRecord): string {
  return JSON.stringify([
    String(r.timestampEpochMilli),
    String(r.resourceId),
    String(r.bytesSent),
    String(r.requestTimeMilli),
    r.responseStatus,
    r.cacheStatus,
    r.method,
    r.remoteAddr,
    r.url,
  ]);
}

interface Consumed {
  partition: number;
  key: Uint8Array | null;
  record: HttpLogRecord;
}

async function consumeAll(topic: string, expected: number): Promise<Consumed[]> {
  const errors: string[] = [];
  const consumer = kafkaClient(BROKERS, {
    clientId: "produce-roundtrip-test",
    kafkajs: {
      logLevel: logLevel.ERROR,
      logCreator: () => ({ namespace, log }) => errors.push(`${namespace}: ${log.message}`),
    },
  }).consumer({ groupId: uniqueName("produce_roundtrip") });
  const consumed: Consumed[] = [];
  const { promise: done, resolve, reject } = Promise.withResolvers<void>();
  const timer = setTimeout(() => {
    reject(
      new Error(
        `read ${consumed.length} of ${expected} messages from ${topic} in 60 s; kafkajs errors: ${
          errors.join("; ") || "none"
        }`,
      ),
    );
  }, 60_000);
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: ({ partition, message }) => {
        try {
          assert.ok(
            message.value !== null,
            `partition ${partition} offset ${message.offset}: null value`,
          );
          consumed.push({ partition, key: message.key, record: decodeRecord(message.value) });
        } catch (err) {
          reject(err);
        }
        if (consumed.length >= expected) resolve();
        return Promise.resolve();
      },
    });
    await done;
  } finally {
    clearTimeout(timer);
    await consumer.disconnect();
  }
  return consumed;
}

Deno.test({
  name: "produce() writes exactly the seeded records, spread over all partitions",
  ignore: skip,
  // kafkajs keeps timers of its own after disconnect.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    requireKafka();
    const topic = await createTopic(uniqueName("produce_roundtrip"), 3);
    const expected = syntheticRecords({ seed: SEED, now: NOW, distinctResourceIds: true })
      .take(COUNT).toArray();
    const progress: number[] = [];

    await t.step("produce() sends 1,000 records and reports them", async () => {
      const summary = await produce(BROKERS, {
        topic,
        count: COUNT,
        seed: SEED,
        now: NOW,
        distinctResourceIds: true,
        rate: 0,
        maxBatch: 100,
        onProgress: ({ sent }) => progress.push(sent),
      });
      assert.deepEqual(
        { ...summary, elapsedMs: 0 },
        { topic, sent: COUNT, elapsedMs: 0, partitions: [0, 1, 2], seed: SEED, aborted: false },
      );
      assert.deepEqual(progress, Array.from({ length: 10 }, (_, i) => (i + 1) * 100));
    });

    const consumed = await consumeAll(topic, COUNT);

    await t.step("the consumer reads back every record exactly once", () => {
      assert.equal(consumed.length, COUNT);
      const want = new Map(expected.map((r) => [contentKey(r), r]));
      const got = new Map(consumed.map(({ record }) => [contentKey(record), record]));
      assert.equal(got.size, COUNT, "duplicates among the consumed records");
      const missing = [...want.keys()].filter((k) => !got.has(k));
      const unexpected = [...got.keys()].filter((k) => !want.has(k));
      assert.deepEqual({ missing, unexpected }, { missing: [], unexpected: [] });
    });

    await t.step("messages are keyless and round-robin over the 3 partitions", () => {
      assert.ok(consumed.every(({ key }) => key === null));
      const perPartition = [0, 1, 2].map((p) => consumed.filter((c) => c.partition === p).length);
      for (const n of perPartition) assert.ok(Math.abs(n - COUNT / 3) <= 1, `${perPartition}`);
    });

    await t.step("each partition keeps the generator's order", () => {
      const position = new Map(expected.map((r, i) => [contentKey(r), i]));
      for (const p of [0, 1, 2]) {
        const order = consumed.filter((c) => c.partition === p).map((c) =>
          position.get(contentKey(c.record))!
        );
        assert.deepEqual(order, [...order].sort((a, b) => a - b), `partition ${p}`);
      }
    });
  },
});

Deno.test({
  name: "produce() keeps under its rate and stops when aborted",
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    requireKafka();
    const topic = await createTopic(uniqueName("produce_rate"), 3);
    await t.step("never faster than rate (a lower bound on time, not a speed target)", async () => {
      const summary = await produce(BROKERS, { topic, count: 60, rate: 200, seed: 1 });
      assert.equal(summary.sent, 60);
      assert.ok(summary.elapsedMs >= (59 / 200) * 1000, `${summary.elapsedMs} ms`);
    });
    await t.step("an abort ends an unbounded run with a summary", async () => {
      const controller = new AbortController();
      const summary = await produce(BROKERS, {
        topic,
        rate: 100,
        seed: 2,
        signal: controller.signal,
        onProgress: ({ sent }) => {
          if (sent >= 20) controller.abort();
        },
      });
      assert.equal(summary.aborted, true);
      assert.ok(summary.sent >= 20 && summary.sent <= 30, `${summary.sent} sent`);
    });
  },
});

Deno.test({
  name: "main() runs `produce` against Kafka with progress and a summary line",
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    requireKafka();
    const topic = await createTopic(uniqueName("produce_command"), 3);
    const out: string[] = [];
    const err: string[] = [];
    const status = await main(
      [
        "--kafka-brokers",
        KAFKA_BROKERS,
        "--kafka-topic",
        topic,
        "--count",
        "40",
        "--rate",
        "100",
        "--seed",
        "9",
      ],
      {
        stdout: (line) => out.push(line),
        stderr: (line) => err.push(line),
        progressIntervalMs: 100,
      },
    );
    await t.step("exits 0 without errors", () => {
      assert.deepEqual(err, []);
      assert.equal(status, 0);
    });
    await t.step("prints progress lines, then the summary", () => {
      const summary = out.pop()!;
      assert.match(
        summary,
        new RegExp(
          `^produce: done, 40 records to ${topic} \\(partitions 0,1,2\\) in [\\d.]+ s, [\\d.]+ msg/s, seed 9$`,
        ),
      );
      assert.ok(out.length >= 1, "no progress line");
      for (const line of out) assert.match(line, /^produce: sent \d+ records, [\d.]+ msg\/s$/);
    });
  },
});
