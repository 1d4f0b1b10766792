/**
 * Helpers of the bad-input tests: raw Kafka produce and read-back, what
 * ClickHouse holds, the exactly-once check for rows whose addresses are not
 * all IPv4, and sums over /metrics series.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { CompressionTypes, Partitioners } from "kafkajs";
import { clickhouseQuery, kafkaClient, withKafkaAdmin } from "./stack.ts";
import type { StoredForm, TestMessage } from "./malformed.ts";
import type { Scrape } from "./pipeline.ts";
import { seededRandom } from "./seeded_random.ts";

/** A message as produced: its test message, Kafka key, and where it landed. */
export interface Produced {
  /** The test message. */
  message: TestMessage;
  /** Kafka key: `"<keyPrefix><n>"`, unique per run. */
  key: string;
  /** Source partition. */
  partition: number;
  /** Source offset. */
  offset: string;
}

/** A message read back from a topic. */
export interface ReadMessage {
  /** Partition. */
  partition: number;
  /** Offset. */
  offset: string;
  /** Key as UTF-8, `null` when absent. */
  key: string | null;
  /** Value bytes, `null` for a tombstone. */
  value: Uint8Array | null;
  /** Headers as UTF-8 strings. */
  headers: Record<string, string>;
}

/**
 * Produces `messages` to `topic` byte for byte, keyed `<keyPrefix><index>`, each to a
 * seeded random partition of `partitions`, in requests of at most
 * `requestBytes` of values (default 700 KB: the broker refuses a record batch
 * over 1 MB), optionally gzip-compressed as many edge producers do, then reads
 * the topic back to learn every message's partition and offset.
 */
export async function produceRaw(
  topic: string,
  messages: readonly TestMessage[],
  options: {
    partitions: number;
    seed: number;
    keyPrefix?: string;
    requestBytes?: number;
    gzip?: boolean;
  },
): Promise<Produced[]> {
  const prefix = options.keyPrefix ?? "m-";
  const requestBytes = options.requestBytes ?? 700_000;
  const random = seededRandom(options.seed);
  const producer = kafkaClient("anonymizer-tests-raw").producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false,
  });
  await producer.connect();
  try {
    let chunk: Array<{ key: string; value: Buffer | null; partition: number }> = [];
    let bytes = 0;
    const send = async () => {
      if (chunk.length === 0) return;
      await producer.send({
        topic,
        acks: -1,
        messages: chunk,
        compression: options.gzip ? CompressionTypes.GZIP : CompressionTypes.None,
      });
      chunk = [];
      bytes = 0;
    };
    for (let i = 0; i < messages.length; i++) {
      const v = messages[i]!.value;
      const size = (v?.length ?? 0) + 64;
      if (bytes + size > requestBytes) await send();
      chunk.push({
        key: `${prefix}${i}`,
        value: v === null ? null : Buffer.from(v),
        partition: Math.floor(random() * options.partitions),
      });
      bytes += size;
    }
    await send();
  } finally {
    await producer.disconnect();
  }
  const back = (await readTopic(topic)).filter((m) => m.key?.startsWith(prefix));
  assert.equal(back.length, messages.length, "the source topic holds exactly what was produced");
  const produced: Produced[] = new Array(messages.length);
  for (const m of back) {
    const i = Number(m.key!.slice(prefix.length));
    assert.ok(m.key === `${prefix}${i}` && produced[i] === undefined, `unexpected key ${m.key}`);
    const original = messages[i]!.value;
    assert.deepEqual(m.value, original, `message ${m.key} reads back unchanged`);
    produced[i] = { message: messages[i]!, key: m.key!, partition: m.partition, offset: m.offset };
  }
  return produced;
}

/** Whether consumer group `group` has committed every partition of `topic` up to its high watermark. */
export async function groupCaughtUp(group: string, topic: string): Promise<boolean> {
  return await withKafkaAdmin(async (admin) => {
    const high = await admin.fetchTopicOffsets(topic);
    const [committed] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
    return high.every((p) => {
      const c = committed?.partitions.find((x) => x.partition === p.partition);
      return p.high === p.low || c?.offset === p.high;
    });
  }, { clientId: "anonymizer-tests-admin" });
}

/** Reads every message of `topic` below the high watermarks seen at the call. */
export async function readTopic(topic: string, timeoutMs = 60_000): Promise<ReadMessage[]> {
  const k = kafkaClient("anonymizer-tests-reader");
  const admin = k.admin();
  await admin.connect();
  let offsets;
  try {
    offsets = await admin.fetchTopicOffsets(topic);
  } finally {
    await admin.disconnect();
  }
  const remaining = new Map<number, bigint>();
  for (const p of offsets) {
    if (BigInt(p.high) > BigInt(p.low)) remaining.set(p.partition, BigInt(p.high));
  }
  const out: ReadMessage[] = [];
  if (remaining.size === 0) return out;
  const consumer = k.consumer({
    groupId: `reader_${crypto.randomUUID()}`,
    maxBytesPerPartition: 4 * 1024 * 1024,
  });
  await consumer.connect();
  const { promise: done, resolve } = Promise.withResolvers<void>();
  const decoder = new TextDecoder();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: ({ partition, message }) => {
        const high = remaining.get(partition);
        if (high === undefined || BigInt(message.offset) >= high) return Promise.resolve();
        const headers: Record<string, string> = {};
        for (const [name, v] of Object.entries(message.headers ?? {})) {
          headers[name] = v === undefined ? "" : decoder.decode(v as Uint8Array);
        }
        out.push({
          partition,
          offset: message.offset,
          key: message.key === null ? null : decoder.decode(message.key),
          value: message.value === null ? null : new Uint8Array(message.value),
          headers,
        });
        if (BigInt(message.offset) + 1n >= high) remaining.delete(partition);
        if (remaining.size === 0) resolve();
        return Promise.resolve();
      },
    });
    const timer = setTimeout(resolve, timeoutMs);
    await done;
    clearTimeout(timer);
  } finally {
    await consumer.disconnect();
  }
  assert.equal(remaining.size, 0, `read all of ${topic} within ${timeoutMs} ms`);
  return out;
}

/** Polls `f` until it returns true or `timeoutMs` passes; returns the last result. */
export async function waitUntil(
  f: () => Promise<boolean>,
  timeoutMs: number,
  intervalMs = 500,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await f()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Every row of `database.http_log` by resource id (throws on a duplicate id). */
export async function storedRows(database: string): Promise<Map<bigint, StoredForm>> {
  const text = await clickhouseQuery(
    `SELECT toUInt32(timestamp) AS ts, toString(resource_id) AS id, toString(bytes_sent) AS b, ` +
      `toString(request_time_milli) AS rt, response_status, cache_status, method, remote_addr, ` +
      `url FROM ${database}.http_log FORMAT JSONEachRow`,
  );
  const rows = new Map<bigint, StoredForm>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const r = JSON.parse(line);
    const id = BigInt(r.id);
    assert.ok(!rows.has(id), `resource id ${id} is stored twice`);
    rows.set(id, {
      timestamp: Number(r.ts),
      resourceId: id,
      bytesSent: BigInt(r.b),
      requestTimeMilli: BigInt(r.rt),
      responseStatus: Number(r.response_status),
      cacheStatus: r.cache_status,
      method: r.method,
      remoteAddr: r.remote_addr,
      url: r.url,
    });
  }
  return rows;
}

/**
 * Asserts `database.http_log` holds exactly the `expected` rows, each once and
 * in its documented form: like `assertExactlyOnce` of testing/pipeline.ts, but
 * also for masked IPv6 (`…::X`) and `invalid` addresses, which that helper
 * refuses since it expects every address to end in `.X`.
 */
export async function assertStoredExactly(
  database: string,
  expected: readonly StoredForm[],
): Promise<void> {
  const rows = await storedRows(database);
  const want = new Map(expected.map((r) => [r.resourceId, r]));
  assert.equal(want.size, expected.length, "expected rows have distinct resource ids");
  const missing = [...want.keys()].filter((id) => !rows.has(id));
  const extra = [...rows.keys()].filter((id) => !want.has(id));
  assert.deepEqual(
    { missing: missing.slice(0, 5), extra: extra.slice(0, 5) },
    { missing: [], extra: [] },
    `stored ${rows.size} rows, expected ${want.size}: ${missing.length} missing, ${extra.length} extra`,
  );
  const wrong: string[] = [];
  for (const [id, w] of want) {
    const got = rows.get(id)!;
    for (const k of Object.keys(w) as Array<keyof StoredForm>) {
      if (got[k] !== w[k]) {
        wrong.push(
          `${id}.${k}: ${JSON.stringify(String(got[k]).slice(0, 60))} != ${
            JSON.stringify(String(w[k]).slice(0, 60))
          }`,
        );
      }
    }
  }
  assert.deepEqual(
    wrong.slice(0, 10),
    [],
    `${wrong.length} stored values differ from the documented form`,
  );
  assert.equal(rows.size, expected.length);
}

/** Sum of every series of metric `name` (all label sets), 0 when absent. */
export function metricSum(s: Scrape, name: string): number {
  let n = 0;
  for (const [key, v] of s) if (key === name || key.startsWith(`${name}{`)) n += v;
  return n;
}

/** Prints figures of a run (counts, durations) to stderr, indented under the test step. */
export function report(line: string): void {
  // deno-lint-ignore no-console -- the figures of a long end-to-end run are its evidence
  console.error(`  ${line}`);
}
