/**
 * A continuous producer for end-to-end tests: distinct-id synthetic records at
 * a steady rate into a topic, that keeps every record it was given through
 * broker outages (retrying the same request until Kafka acknowledges it) and
 * knows exactly which records Kafka acknowledged.
 *
 * It never duplicates a record in Kafka: the producer is idempotent and every
 * request carries one partition's messages (record `i` goes to partition
 * `i % partitions`), so a retry is byte-for-byte the same request with the
 * same sequence number and the broker drops it if the first attempt landed.
 * `topicMessageCount()` of testing/stack.ts lets a test check that premise.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { logLevel } from "kafkajs";
import { kafkaClient } from "../lib/source/kafka_client.ts";
import { encodeRecord } from "../tools/encode_record.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";

/** Options of {@linkcode startFeed}. */
export interface FeedOptions {
  /** Records per second. Required. */
  rate: number;
  /** Seed of the record sequence. Required. */
  seed: number;
  /** Partitions of the topic; record `i` goes to partition `i % partitions`. Default: `3`. */
  partitions?: number;
  /** Name in progress lines. Default: `"feed"`. */
  name?: string;
}

/** A running feed. */
export interface Feed {
  /** Records Kafka acknowledged so far (the array grows while the feed runs). */
  readonly acked: readonly HttpLogRecord[];
  /** Produce requests that failed and were retried. */
  readonly failedRequests: number;
  /** Resolves once at least `count` records are acknowledged. */
  waitForAcked(count: number, timeoutMs?: number): Promise<void>;
  /**
   * Stops taking new records, waits until every record already taken is
   * acknowledged, disconnects, and returns all acknowledged records.
   */
  stop(): Promise<HttpLogRecord[]>;
}

/** Prints a progress line to stderr (long waits must show they are alive). */
export function progress(message: string): void {
  // deno-lint-ignore no-console -- progress of a long-running test
  console.error(`  … ${message}`);
}

/**
 * Copies a log the test's world will delete to a folder that outlives it
 * (`$TMPDIR/anonymizer-test-logs`) and returns the copy's path.
 */
export async function keepLog(path: string): Promise<string> {
  const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/anonymizer-test-logs`;
  await Deno.mkdir(dir, { recursive: true });
  const base = path.split("/").pop()!.replace(/\.log$/, "");
  const copy = `${dir}/${base}-${new Date().toISOString().replaceAll(":", "")}.log`;
  await Deno.copyFile(path, copy).catch(() => {});
  return copy;
}

/** Starts producing to `topic` on `brokers` (comma-separated). */
export async function startFeed(
  brokers: string,
  topic: string,
  options: FeedOptions,
): Promise<Feed> {
  const partitions = options.partitions ?? 3;
  const name = options.name ?? "feed";
  const producer = kafkaClient(brokers.split(","), {
    clientId: "anonymizer-tests-feed",
    kafkajs: { logLevel: logLevel.NOTHING, retry: { retries: 5, maxRetryTime: 2_000 } },
  }).producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false,
  });
  await producer.connect();
  const records = syntheticRecords({
    seed: options.seed,
    now: Date.now(),
    distinctResourceIds: true,
  });
  const acked: HttpLogRecord[] = [];
  const waiters = new Set<() => void>();
  let taken = 0;
  let failedRequests = 0;
  let stopping = false;
  let lastError = "";
  let reportedAt = Date.now();
  const perRequest = Math.max(1, Math.round(options.rate / 10));
  const started = performance.now();

  const sendPartition = async (partition: number, batch: HttpLogRecord[]) => {
    const messages = batch.map((r) => {
      const bytes = encodeRecord(r);
      return { partition, value: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
    });
    for (let attempt = 1;; attempt++) {
      try {
        await producer.send({ topic, acks: -1, messages });
        break;
      } catch (err) {
        failedRequests++;
        lastError = err instanceof Error ? err.message : String(err);
        if (attempt === 1 || attempt % 10 === 0) {
          progress(
            `${name}: a request to partition ${partition} failed (attempt ${attempt}), retrying: ${lastError}`,
          );
        }
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
    acked.push(...batch);
    for (const w of waiters) w();
  };

  const loop = (async () => {
    while (!stopping) {
      const due = started + ((taken + perRequest - 1) / options.rate) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      if (stopping) break;
      const byPartition = new Map<number, HttpLogRecord[]>();
      for (let i = 0; i < perRequest; i++, taken++) {
        const p = taken % partitions;
        let list = byPartition.get(p);
        if (list === undefined) byPartition.set(p, list = []);
        list.push(records.next().value);
      }
      for (const [p, batch] of byPartition) await sendPartition(p, batch);
      if (Date.now() - reportedAt > 15_000) {
        reportedAt = Date.now();
        progress(
          `${name}: ${acked.length} records acknowledged, ${failedRequests} requests retried`,
        );
      }
    }
  })();

  return {
    acked,
    get failedRequests() {
      return failedRequests;
    },
    async waitForAcked(count, timeoutMs = 120_000) {
      const deadline = Date.now() + timeoutMs;
      while (acked.length < count) {
        if (Date.now() > deadline) {
          throw new Error(
            `Cannot reach ${count} acknowledged records within ${timeoutMs} ms: ${acked.length} so far, ` +
              `last error: ${lastError || "none"}`,
          );
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, 1_000);
          function done() {
            clearTimeout(timer);
            waiters.delete(done);
            resolve();
          }
          waiters.add(done);
        });
      }
    },
    async stop() {
      stopping = true;
      await loop;
      await producer.disconnect();
      return [...acked];
    },
  };
}
