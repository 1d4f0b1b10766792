/**
 * The kafkajs consumer behind {@linkcode SourceConsumer}: manual commits,
 * one partition's batch at a time, retries without end while the service
 * runs, and a start position by time for a group without commits.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { AnonymizerError } from "../errors.ts";
import type { Consumer, EachBatchPayload, Kafka } from "kafkajs";
import { FetchSockets } from "./_fetch_sockets.ts";
import { MAX_FETCH_WAIT_MS } from "./_fetch_wait.ts";
import { kafkaClient, type KafkaSasl } from "./kafka_client.ts";
import type { ConsumerHandlers, SourceBatch, SourceConsumer } from "./source_consumer.ts";

const log = getLogger(["anonymizer", "kafka"]);

/** Where a consumer group without committed offsets starts. */
export type OffsetReset = "earliest" | "latest" | { timestamp: number };

/** Options of {@linkcode kafkaConsumer}. */
export interface KafkaConsumerOptions {
  /** Topic to consume. Default: `"http_log"`. */
  topic?: string;
  /** Consumer group. Default: `"anonymizer"`. */
  groupId?: string;
  /** Kafka client id. Default: `"anonymizer"`. */
  clientId?: string;
  /** Start position for partitions without a committed offset. Default: `"earliest"`. */
  offsetReset?: OffsetReset;
  /** Connect over TLS. Default: `false`. */
  ssl?: boolean;
  /** SASL credentials. Default: none. */
  sasl?: KafkaSasl;
  /**
   * Longest a fetch waits for data, ms; a stop does not wait for it
   * (`_fetch_sockets.ts`). The service derives it from the proxy's spacing
   * (`_fetch_wait.ts`). Default: `10000`.
   */
  fetchWaitMs?: number;
}

/**
 * A kafkajs consumer group member for `brokers`, adapted to
 * {@linkcode SourceConsumer}. Nothing connects until `start()`. Throws
 * {@linkcode AnonymizerError} with code `"invalid_option"` when `fetchWaitMs`
 * is not an integer of at least 1.
 *
 * @example Create without connecting
 * ```ts
 * import { kafkaConsumer } from "./kafka_consumer.ts";
 * import assert from "node:assert/strict";
 *
 * const consumer = kafkaConsumer(["127.0.0.1:9092"], { topic: "http_log", groupId: "example" });
 * assert.equal(consumer.topic, "http_log");
 * assert.equal(consumer.groupId, "example");
 * ```
 */
export function kafkaConsumer(
  brokers: string[],
  options: KafkaConsumerOptions = {},
): SourceConsumer {
  const wait = options.fetchWaitMs;
  if (wait !== undefined && !(Number.isSafeInteger(wait) && wait >= 1)) {
    throw new AnonymizerError(
      `Cannot create a Kafka consumer as option fetchWaitMs must be an integer of at least 1: current value is ${
        JSON.stringify(String(wait))
      }`,
      { code: "invalid_option" },
    );
  }
  return new KafkaConsumer(brokers, options);
}

class KafkaConsumer implements SourceConsumer {
  readonly topic: string;
  readonly groupId: string;
  readonly #offsetReset: OffsetReset;
  readonly #kafka: Kafka;
  readonly #consumer: Consumer;
  readonly #sockets = new FetchSockets();
  #handlers: ConsumerHandlers | null = null;
  #stopping = false;

  constructor(brokers: string[], options: KafkaConsumerOptions) {
    this.topic = options.topic ?? "http_log";
    this.groupId = options.groupId ?? "anonymizer";
    this.#offsetReset = options.offsetReset ?? "earliest";
    this.#kafka = kafkaClient(brokers, {
      clientId: options.clientId ?? "anonymizer",
      ssl: options.ssl ?? false,
      sasl: options.sasl,
      kafkajs: { socketFactory: this.#sockets.factory },
    });
    this.#consumer = this.#kafka.consumer({
      groupId: this.groupId,
      sessionTimeout: 30_000,
      heartbeatInterval: 3_000,
      // Each fetch's batches cost a KV append that recompresses the partition's last chunk, a
      // Kafka commit and a KV promote, whatever their size: waiting for a full 1 MiB, or the
      // fetch wait, keeps that work rare at live rates. A backlog fills 1 MiB at once.
      minBytes: 1_048_576,
      maxWaitTimeInMs: options.fetchWaitMs ?? MAX_FETCH_WAIT_MS,
      retry: {
        retries: Number.MAX_SAFE_INTEGER,
        maxRetryTime: 10_000,
        // A join cut short by stop() crashes the runner; it must not start again.
        restartOnFailure: () => Promise.resolve(!this.#stopping),
      },
    });
  }

  async start(handlers: ConsumerHandlers): Promise<void> {
    const c = this.#consumer;
    if (this.#handlers === null) {
      this.#handlers = handlers;
      this.#listen(handlers);
    }
    if (typeof this.#offsetReset === "object") {
      await this.#resetToTimestamp(this.#offsetReset.timestamp);
    }
    await c.connect();
    await c.subscribe({ topic: this.topic, fromBeginning: this.#offsetReset !== "latest" });
    const own = this.#handlers;
    c.run({
      autoCommit: false,
      eachBatchAutoResolve: true,
      partitionsConsumedConcurrently: 1,
      eachBatch: (payload) => own.batch(toSourceBatch(payload)),
    }).catch((err) => log.error("Kafka consumer stopped: {error}", { error: String(err) }));
  }

  #listen(handlers: ConsumerHandlers): void {
    const c = this.#consumer;
    c.on(c.events.GROUP_JOIN, (e) => {
      handlers.joined([...(e.payload.memberAssignment[this.topic] ?? [])], e.payload.memberId);
    });
    c.on(c.events.REBALANCING, () => handlers.rebalancing());
    c.on(c.events.HEARTBEAT, () => handlers.heartbeat());
    c.on(c.events.CRASH, (e) => handlers.crashed(e.payload.error, e.payload.restart));
    c.on(c.events.STOP, () => handlers.stopped());
  }

  stop(): Promise<void> {
    this.#stopping = true;
    return this.#sockets.disconnect(this.#consumer);
  }

  async commit(partition: number, offset: bigint, metadata: string): Promise<void> {
    await this.#consumer.commitOffsets([
      { topic: this.topic, partition, offset: String(offset), metadata },
    ]);
  }

  async members(): Promise<string[]> {
    return (await this.#consumer.describeGroup()).members.map((m) => m.memberId);
  }

  async committed(partition: number): Promise<{ offset: bigint; metadata: string | null }> {
    const admin = this.#kafka.admin();
    await admin.connect();
    try {
      const [t] = await admin.fetchOffsets({ groupId: this.groupId, topics: [this.topic] });
      const p = t?.partitions.find((x) => x.partition === partition);
      return { offset: BigInt(p?.offset ?? "-1"), metadata: p?.metadata ?? null };
    } finally {
      await admin.disconnect();
    }
  }

  /**
   * Gives partitions without a committed offset a starting offset by time,
   * before this consumer joins: seeking after the first fetch could let rows
   * from the wrong start be queued.
   */
  async #resetToTimestamp(timestamp: number): Promise<void> {
    const admin = this.#kafka.admin();
    await admin.connect();
    try {
      const [committed] = await admin.fetchOffsets({
        groupId: this.groupId,
        topics: [this.topic],
      });
      const ends = await admin.fetchTopicOffsets(this.topic);
      // No message at or after the time: start at the end, like "latest".
      const byTime = (await admin.fetchTopicOffsetsByTimestamp(this.topic, timestamp)).map((t) =>
        t.offset === "-1"
          ? { ...t, offset: ends.find((e) => e.partition === t.partition)?.high ?? "0" }
          : t
      );
      const partitions = byTime.filter((t) =>
        (committed?.partitions.find((c) => c.partition === t.partition)?.offset ?? "-1") === "-1"
      );
      if (partitions.length === 0) return;
      try {
        await admin.setOffsets({ groupId: this.groupId, topic: this.topic, partitions });
      } catch (err) {
        // A running member of the group already owns these partitions and their positions.
        log.warn("Cannot set start offsets by time as the group is active: {error}", {
          error: String(err),
        });
        return;
      }
      log.info("Partitions {partitions} had no committed offset; starting at time {time}", {
        partitions: partitions.map((p) => `${p.partition}@${p.offset}`).join(","),
        time: new Date(timestamp).toISOString(),
      });
    } finally {
      await admin.disconnect();
    }
  }
}

function toSourceBatch({ batch, heartbeat, isRunning, isStale }: EachBatchPayload): SourceBatch {
  return {
    partition: batch.partition,
    // Plain views, not Buffers: the decoder and the dead-letter producer take Uint8Array.
    messages: batch.messages.map((m) => ({
      offset: BigInt(m.offset),
      key: m.key === null ? null : new Uint8Array(m.key.buffer, m.key.byteOffset, m.key.byteLength),
      value: m.value === null
        ? null
        : new Uint8Array(m.value.buffer, m.value.byteOffset, m.value.byteLength),
      timestamp: m.timestamp,
      headers: m.headers ?? {},
    })),
    lastOffset: BigInt(batch.lastOffset()),
    lag: Number(batch.offsetLag()),
    heartbeat,
    isRunning,
    isStale,
  };
}
