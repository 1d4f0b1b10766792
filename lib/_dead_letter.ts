/**
 * Writes dead letters to Kafka and waits for all in-sync replicas to
 * acknowledge them, so a source offset is committed only after its dead
 * letter is durable. Raw message bytes stay inside Kafka; nothing about them
 * is written to local disk or ClickHouse.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { Kafka, type KafkaConfig, logLevel, Partitioners, type Producer } from "kafkajs";
import { kafkaLogCreator } from "./_kafka_log.ts";
import type { HttpLogRow } from "./types.ts";

const log = getLogger(["anonymizer", "dlq"]);

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
    await this.#producer.send({
      topic: this.#topic,
      acks: -1,
      messages: letters.map((d) => ({
        key: d.key === null ? null : Buffer.from(d.key),
        value: d.value === null ? null : Buffer.from(d.value),
        headers: {
          "anonymizer.source.topic": this.#sourceTopic,
          "anonymizer.source.partition": String(d.partition),
          "anonymizer.source.offset": d.offset,
          "anonymizer.error.code": d.code,
          "anonymizer.error.message": d.message,
        },
      })),
    });
    for (const d of letters) {
      log.warn("Dead-lettered offset {offset} of partition {partition}: {code}: {message}", {
        offset: d.offset,
        partition: d.partition,
        code: d.code,
        message: d.message,
      });
    }
  }

  /**
   * Sends one row ClickHouse rejected. The row is already anonymized; it is
   * sent as JSON since its source bytes are no longer kept.
   */
  async sendRow(row: HttpLogRow, error: Error & { code?: string }): Promise<void> {
    await this.#producer.send({
      topic: this.#topic,
      acks: -1,
      messages: [{
        key: null,
        value: JSON.stringify(row, (_, v) => typeof v === "bigint" ? String(v) : v),
        headers: {
          "anonymizer.source.topic": this.#sourceTopic,
          "anonymizer.error.code": "clickhouse_rejected",
          "anonymizer.error.message": error.message.slice(0, 500),
          "content-type": "application/json",
        },
      }],
    });
  }
}
