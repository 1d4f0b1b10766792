/**
 * Writes dead letters to Kafka and waits for all in-sync replicas to
 * acknowledge them, so a source offset is committed only after its dead
 * letter is durable. Raw message bytes stay inside Kafka; nothing about them
 * is written to local disk or ClickHouse.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { CompressionTypes, type Kafka, type Message, Partitioners, type Producer } from "kafkajs";
import { StartupError } from "../errors.ts";
import { redactUserinfo } from "../redact.ts";
import { kafkaClient, type KafkaSasl } from "./kafka_client.ts";
import type { DeadLetterMessage } from "./kafka_source.ts";
import type { HttpLogRow } from "../record/types.ts";

const log = getLogger(["anonymizer", "dlq"]);

/**
 * Most bytes of dead letters per produce request. The broker refuses a record
 * batch over `message.max.bytes` (1 MB by default), and a Kafka batch of small
 * invalid messages makes several times its size in dead letters once headers
 * are added.
 */
const MAX_REQUEST_BYTES = 512 * 1024;
/** Headers and record overhead of one dead letter, besides key, value and message. */
const LETTER_OVERHEAD_BYTES = 256;

/**
 * kafkajs errors that mean the broker could not be reached or answered too
 * late: retried at start-up, unlike a refusal, which an operator must fix.
 */
const UNREACHABLE = new Set([
  "KafkaJSConnectionError",
  "KafkaJSNumberOfRetriesExceeded",
  "KafkaJSRequestTimeoutError",
  "KafkaJSBrokerNotFound",
  "KafkaJSConnectionClosedError",
  "KafkaJSNonRetriableError",
]);

/**
 * Whether `err` says Kafka was out of reach, so the step may be tried again.
 *
 * @example
 * ```ts
 * import { isUnreachable } from "./dead_letters.ts";
 * import assert from "node:assert/strict";
 *
 * const timeout = Object.assign(new Error("Request timed out"), { name: "KafkaJSRequestTimeoutError" });
 * assert.equal(isUnreachable(timeout), true);
 * assert.equal(isUnreachable(new Error("Topic authorization failed")), false);
 * ```
 */
export function isUnreachable(err: unknown): boolean {
  return err instanceof Error && UNREACHABLE.has(err.name);
}

/** What {@linkcode DeadLetterProducer.ensureTopic} creates a missing topic with. */
export interface DlqTopicOptions {
  /** Partitions (`KAFKA_DLQ_PARTITIONS`). */
  partitions: number;
  /** `retention.ms` (`KAFKA_DLQ_RETENTION_MS`). */
  retentionMs: number;
}

/** The dead-letter producer. */
export class DeadLetterProducer {
  readonly #producer: Producer;
  readonly #kafka: Kafka;
  readonly #topic: string;
  readonly #sourceTopic: string;
  readonly #scrub: (text: string) => string;

  constructor(
    brokers: string[],
    options: {
      topic: string;
      sourceTopic: string;
      clientId: string;
      ssl?: boolean;
      sasl?: KafkaSasl;
      /** Hides secrets in the error-message header. Default: URL userinfo only. */
      scrub?: (text: string) => string;
    },
  ) {
    this.#scrub = options.scrub ?? redactUserinfo;
    this.#topic = options.topic;
    this.#sourceTopic = options.sourceTopic;
    this.#kafka = kafkaClient(brokers, {
      clientId: `${options.clientId}-dlq`,
      ssl: options.ssl ?? false,
      sasl: options.sasl,
    });
    this.#producer = this.#kafka.producer({
      // ensureTopic() creates it with a bounded retention; broker defaults would keep
      // raw bytes for a week, and with auto-create off the first dead letter would stall.
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
  }

  async connect(): Promise<void> {
    await this.#producer.connect();
  }

  /**
   * Checks that the dead-letter topic exists, or creates it with
   * `options.partitions` and `retention.ms` = `options.retentionMs`. An
   * existing topic is left as it is; a longer retention than asked is
   * logged as a warning. Throws a {@linkcode StartupError} naming the setting
   * when Kafka refuses; rethrows kafkajs's error when Kafka is out of reach.
   * Returns whether the topic was created.
   */
  async ensureTopic(options: DlqTopicOptions): Promise<boolean> {
    const topic = this.#topic;
    const admin = this.#kafka.admin();
    await admin.connect();
    const refused = (what: string, cause: unknown) =>
      new StartupError(
        "KAFKA_DLQ_TOPIC",
        `Cannot start as the dead-letter topic KAFKA_DLQ_TOPIC=${JSON.stringify(topic)} ${what} ` +
          `(KAFKA_DLQ_PARTITIONS=${options.partitions}, KAFKA_DLQ_RETENTION_MS=${options.retentionMs}): ` +
          `${errorText(cause)}`,
        { cause },
      );
    try {
      let topics: string[];
      try {
        topics = await admin.listTopics();
      } catch (err) {
        if (isUnreachable(err)) throw err;
        throw refused("cannot be checked", err);
      }
      if (topics.includes(topic)) {
        await this.#checkRetention(admin, options.retentionMs);
        return false;
      }
      try {
        await admin.createTopics({
          waitForLeaders: true,
          topics: [{
            topic,
            numPartitions: options.partitions,
            configEntries: [{ name: "retention.ms", value: String(options.retentionMs) }],
          }],
        });
      } catch (err) {
        if (isUnreachable(err)) throw err;
        throw refused("cannot be created", err);
      }
      log.info(
        "Created dead-letter topic {topic} with {partitions} partitions, retention {retentionMs} ms",
        { topic, partitions: options.partitions, retentionMs: options.retentionMs },
      );
      return true;
    } finally {
      await admin.disconnect();
    }
  }

  async #checkRetention(admin: ReturnType<Kafka["admin"]>, wanted: number): Promise<void> {
    let retention: number | null = null;
    try {
      const described = await admin.describeConfigs({
        includeSynonyms: false,
        resources: [{ type: 2, /* TOPIC */ name: this.#topic, configNames: ["retention.ms"] }],
      });
      const value = described.resources[0]?.configEntries.find((e) =>
        e.configName === "retention.ms"
      )?.configValue;
      retention = value === undefined ? null : Number(value);
    } catch (err) {
      log.warn("Cannot read retention.ms of dead-letter topic {topic}: {error}", {
        topic: this.#topic,
        error: errorText(err),
      });
      return;
    }
    if (retention !== null && (retention < 0 || retention > wanted)) {
      log.warn(
        "Dead-letter topic {topic} keeps messages for retention.ms={retention}, longer than " +
          "KAFKA_DLQ_RETENTION_MS={wanted}; dead letters can hold raw client addresses, so " +
          "lower the topic's retention.ms",
        { topic: this.#topic, retention, wanted },
      );
    }
  }

  async disconnect(): Promise<void> {
    await this.#producer.disconnect();
  }

  /** Sends messages that failed decoding or validation. */
  async send(letters: readonly DeadLetterMessage[]): Promise<void> {
    if (letters.length === 0) return;
    let chunk: Message[] = [];
    let bytes = 0;
    for (const d of letters) {
      const size = (d.key?.length ?? 0) + (d.value?.length ?? 0) + d.message.length +
        LETTER_OVERHEAD_BYTES;
      if (chunk.length > 0 && bytes + size > MAX_REQUEST_BYTES) {
        await this.#sendChunk(chunk);
        chunk = [];
        bytes = 0;
      }
      chunk.push({
        key: d.key === null ? null : Buffer.from(d.key),
        value: d.value === null ? null : Buffer.from(d.value),
        headers: {
          "anonymizer.source.topic": this.#sourceTopic,
          "anonymizer.source.partition": String(d.partition),
          "anonymizer.source.offset": d.offset,
          "anonymizer.error.code": d.code,
          "anonymizer.error.message": this.#scrub(d.message),
        },
      });
      bytes += size;
    }
    await this.#sendChunk(chunk);
    for (const d of letters) {
      log.warn("Dead-lettered offset {offset} of partition {partition}: {code}: {message}", {
        offset: d.offset,
        partition: d.partition,
        code: d.code,
        message: d.message,
      });
    }
  }

  async #sendChunk(messages: Message[]): Promise<void> {
    // Compressed, as a source message may have come compressed and be large once inflated.
    await this.#producer.send({
      topic: this.#topic,
      acks: -1,
      compression: CompressionTypes.GZIP,
      messages,
    });
  }

  /**
   * Sends one row ClickHouse rejected. The row is already anonymized; it is
   * sent as JSON since its source bytes are no longer kept.
   */
  async sendRow(
    row: HttpLogRow,
    error: Error,
    source: { topic: string; partition: number; offset: bigint },
  ): Promise<void> {
    await this.#producer.send({
      topic: this.#topic,
      acks: -1,
      messages: [{
        key: null,
        value: JSON.stringify(row, (_, v) => typeof v === "bigint" ? String(v) : v),
        headers: {
          "anonymizer.source.topic": source.topic,
          "anonymizer.source.partition": String(source.partition),
          "anonymizer.source.offset": String(source.offset),
          "anonymizer.error.code": "clickhouse_rejected",
          "anonymizer.error.message": this.#scrub(error.message.slice(0, 500)),
          "content-type": "application/json",
        },
      }],
    });
  }
}

/** `Name: message` of an error, with kafkajs's per-topic errors of a failed admin call. */
function errorText(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const nested = (err as { errors?: unknown[] }).errors;
  const inner = Array.isArray(nested) && nested.length > 0
    ? ` (${nested.map((e) => errorText(e)).join("; ")})`
    : "";
  return `${err.name}: ${err.message}${inner}`;
}
