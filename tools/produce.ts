/**
 * Writes synthetic {@linkcode HttpLogRecord}s to Kafka, as the edge producers
 * would: one unpacked Cap'n Proto message per Kafka message, no key.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { Partitioners } from "kafkajs";
import { kafkaClient } from "../lib/source/kafka_client.ts";
import { encodeRecord } from "./encode_record.ts";
import { AnonymizerError } from "../lib/errors.ts";
import { syntheticRecords } from "./synthetic_records.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";

/** Options of {@linkcode produce}. */
export interface ProduceOptions {
  /** Kafka topic to write to. Default: `"http_log"`. */
  topic?: string;
  /** Messages per second; `0` sends as fast as Kafka acknowledges. Default: `200`. */
  rate?: number;
  /** Records to send, then stop. Default: `Infinity` (until `signal` aborts). */
  count?: number;
  /**
   * Seed of the record sequence (see {@linkcode syntheticRecords}); the
   * summary reports it so a run can be repeated. Default: a random uint32.
   */
  seed?: number;
  /**
   * The clock the record timestamps are drawn back from, in milliseconds since
   * the Unix epoch. Default: `Date.now()` at the call.
   */
  now?: number;
  /** Give every record a distinct `resourceId`. Default: `false`. */
  distinctResourceIds?: boolean;
  /** Most records in one produce request. Default: `500`. */
  maxBatch?: number;
  /**
   * Stops the run before the next request (one in flight completes first);
   * `produce` then resolves with the summary (`aborted: true`) rather than
   * rejecting. Connecting is not interrupted. Default: none.
   */
  signal?: AbortSignal;
  /** Called after every acknowledged request. Default: none. */
  onProgress?: (progress: ProduceProgress) => void;
}

/** Progress of a run, as passed to `onProgress`. */
export interface ProduceProgress {
  /** Records acknowledged by Kafka so far. */
  sent: number;
  /** Milliseconds since the producer connected. */
  elapsedMs: number;
}

/** What a run did. */
export interface ProduceSummary {
  /** Topic written to. */
  topic: string;
  /** Records acknowledged by all in-sync replicas (acks = -1). */
  sent: number;
  /** Milliseconds from connect to the last acknowledgement. */
  elapsedMs: number;
  /** Partitions that received records, ascending. */
  partitions: number[];
  /** Seed of the record sequence. */
  seed: number;
  /** Whether `signal` stopped the run before `count`. */
  aborted: boolean;
}

const DEFAULT_RATE = 200;
const DEFAULT_MAX_BATCH = 500;
/** A throttled run sends about this many requests per second, so the rate stays smooth. */
const REQUESTS_PER_SECOND = 20;

/**
 * Sends records from {@linkcode syntheticRecords} to Kafka at `options.rate`,
 * batched into requests of up to `options.maxBatch` records, each
 * acknowledged by all in-sync replicas (`acks: -1`). Messages have no key and
 * kafkajs's DefaultPartitioner spreads them round-robin over the topic's
 * partitions (from a random start). kafkajs's own logging goes to logtape
 * (see lib/source/kafka_client.ts), not to the console.
 *
 * Rejects with {@linkcode AnonymizerError} (code `"kafka_connect"` or
 * `"kafka_send"`, retriable) when Kafka cannot be reached or refuses a
 * request after kafkajs's retries, and with code `"invalid_option"` for an
 * option out of range. tests/produce_roundtrip_test.ts shows a run against
 * the local stack.
 *
 * @example Nothing to send, so Kafka is never contacted
 * ```ts
 * import { produce } from "./produce.ts";
 * import assert from "node:assert/strict";
 *
 * const summary = await produce(["127.0.0.1:1"], { count: 0, seed: 7 });
 * assert.deepEqual(summary, {
 *   topic: "http_log",
 *   sent: 0,
 *   elapsedMs: 0,
 *   partitions: [],
 *   seed: 7,
 *   aborted: false,
 * });
 * ```
 */
export async function produce(
  brokers: string[],
  options: ProduceOptions = {},
): Promise<ProduceSummary> {
  const topic = options.topic ?? "http_log";
  const rate = options.rate ?? DEFAULT_RATE;
  const count = options.count ?? Infinity;
  const maxBatch = options.maxBatch ?? DEFAULT_MAX_BATCH;
  const seed = options.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]!;
  const { signal, onProgress } = options;
  if (!(rate >= 0 && rate < Infinity)) invalidOption("rate", rate, "must be a finite number ≥ 0");
  if (!(count >= 0) || (count !== Infinity && !Number.isInteger(count))) {
    invalidOption("count", count, "must be an integer ≥ 0 or Infinity");
  }
  if (!Number.isInteger(maxBatch) || maxBatch < 1) {
    invalidOption("maxBatch", maxBatch, "must be an integer ≥ 1");
  }
  const records = syntheticRecords({
    seed,
    now: options.now,
    distinctResourceIds: options.distinctResourceIds,
  });
  const summary: ProduceSummary = {
    topic,
    sent: 0,
    elapsedMs: 0,
    partitions: [],
    seed,
    aborted: false,
  };
  if (count === 0 || signal?.aborted) return { ...summary, aborted: signal?.aborted ?? false };

  const producer = kafkaClient(brokers, { clientId: "anonymizer-produce" }).producer({
    // Named explicitly: kafkajs warns on every start when left to pick its default.
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false,
  });
  try {
    await producer.connect();
  } catch (cause) {
    throw new AnonymizerError(
      `Cannot connect to Kafka as no broker answered: brokers are ${brokers.join(",")} (${
        cause instanceof Error ? cause.message : String(cause)
      })`,
      { code: "kafka_connect", retriable: true, cause },
    );
  }
  const start = performance.now();
  const batch = rate === 0
    ? maxBatch
    : Math.max(1, Math.min(maxBatch, Math.round(rate / REQUESTS_PER_SECOND)));
  const partitions = new Set<number>();
  try {
    while (summary.sent < count) {
      const size = Math.min(batch, count - summary.sent);
      if (rate > 0) {
        // The batch leaves when its last record is due, so the rate is never exceeded.
        const due = start + ((summary.sent + size - 1) / rate) * 1000;
        await sleep(due - performance.now(), signal);
      }
      if (signal?.aborted) break;
      const messages = Array.from(
        { length: size },
        () => ({ value: toBuffer(records.next().value) }),
      );
      let acknowledged;
      try {
        acknowledged = await producer.send({ topic, acks: -1, messages });
      } catch (cause) {
        throw new AnonymizerError(
          `Cannot produce to topic ${topic} as Kafka refused a batch of ${size} records: ${
            cause instanceof Error ? cause.message : String(cause)
          }`,
          { code: "kafka_send", retriable: true, cause },
        );
      }
      for (const metadata of acknowledged) partitions.add(metadata.partition);
      summary.sent += size;
      summary.elapsedMs = performance.now() - start;
      onProgress?.({ sent: summary.sent, elapsedMs: summary.elapsedMs });
    }
  } finally {
    await producer.disconnect();
  }
  summary.partitions = [...partitions].sort((a, b) => a - b);
  summary.aborted = summary.sent < count;
  return summary;
}

function toBuffer(record: HttpLogRecord): Buffer {
  const bytes = encodeRecord(record);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  if (ms <= 0 || signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

function invalidOption(name: string, value: number, rule: string): never {
  throw new AnonymizerError(`Cannot produce as option ${name} ${rule}: value is ${value}`, {
    code: "invalid_option",
  });
}
