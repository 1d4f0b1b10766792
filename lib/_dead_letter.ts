/**
 * Writes dead letters to Kafka and waits for all in-sync replicas to
 * acknowledge them, so a source offset is committed only after its dead
 * letter is durable. Raw message bytes stay inside Kafka; nothing about them
 * is written to local disk or ClickHouse.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import {
  CompressionTypes,
  Kafka,
  type KafkaConfig,
  logLevel,
  type Message,
  Partitioners,
  type Producer,
} from "kafkajs";
import { kafkaLogCreator } from "./_kafka_log.ts";
import type { HttpLogRow } from "./types.ts";

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

/** A message that cannot be stored, with where it came from and why. */
export interface DeadLetter {
  /** Source partition. */
  partition: number;
  /** Source offset. */
  offset: string;
  /** Original key. */
  key: Uint8Array | null;
  /** Original value, unchanged. */
  value: Uint8Array | null;
  /** Machine-readable reason. */
  code: string;
  /** One line without payload or address. */
  message: string;
}

/** The dead-letter producer. */
export class DeadLetterProducer {
  readonly #producer: Producer;
  readonly #topic: string;
  readonly #sourceTopic: string;

  constructor(
    brokers: string[],
    options: {
      topic: string;
      sourceTopic: string;
      clientId: string;
      ssl?: KafkaConfig["ssl"];
      sasl?: KafkaConfig["sasl"];
    },
  ) {
    this.#topic = options.topic;
    this.#sourceTopic = options.sourceTopic;
    this.#producer = new Kafka({
      brokers,
      clientId: `${options.clientId}-dlq`,
      ssl: options.ssl,
      sasl: options.sasl,
      logLevel: logLevel.INFO,
      logCreator: kafkaLogCreator,
    }).producer({
      allowAutoTopicCreation: true,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
  }

  async connect(): Promise<void> {
    await this.#producer.connect();
  }

  async disconnect(): Promise<void> {
    await this.#producer.disconnect();
  }

  /** Sends messages that failed decoding or validation. */
  async send(letters: readonly DeadLetter[]): Promise<void> {
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
          "anonymizer.error.message": d.message,
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
          "anonymizer.error.message": error.message.slice(0, 500),
          "content-type": "application/json",
        },
      }],
    });
  }
}
