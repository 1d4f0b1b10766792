/**
 * The Kafka channel on which instances sharing ch-proxy's slots hand an
 * unused slot to the next member of their group.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { Consumer, Kafka, Producer } from "kafkajs";
import type { SlotYield } from "../slot_schedule.ts";
import { FetchSockets } from "./_fetch_sockets.ts";
import { kafkaClient, type KafkaSasl } from "./kafka_client.ts";

const log = getLogger(["anonymizer", "slots"]);

/** Options of {@linkcode SlotYieldChannel}. */
export interface SlotYieldChannelOptions {
  /** Topic of the hand-overs, created with one partition if missing. Default: `"anonymizer_slots"`. */
  topic?: string;
  /** Consumer group of the service; the channel reads with a private group derived from it. Default: `"anonymizer"`. */
  groupId?: string;
  /** Kafka client id. Default: `"anonymizer"`. */
  clientId?: string;
  /** TLS: `true` or options passed to kafkajs. Default: `false`. */
  ssl?: boolean;
  /** SASL credentials passed to kafkajs. Default: none. */
  sasl?: KafkaSasl;
}

/** A hand-over is useless a minute later; an hour keeps the topic small. */
const RETENTION_MS = 3_600_000;

/**
 * Publishes this instance's hand-overs and delivers everyone's to `onYield`.
 * Every instance reads every hand-over; the schedule keeps those addressed to
 * it.
 *
 * @example Construct without connecting
 * ```ts
 * import { SlotYieldChannel } from "./slot_yields.ts";
 * import assert from "node:assert/strict";
 *
 * const channel = new SlotYieldChannel(["127.0.0.1:9092"]);
 * assert.equal(channel.topic, "anonymizer_slots");
 * ```
 */
export class SlotYieldChannel {
  readonly #kafka: Kafka;
  readonly #sockets = new FetchSockets();
  readonly #topic: string;
  readonly #groupId: string;
  #producer: Producer | null = null;
  #consumer: Consumer | null = null;

  /** A channel on `brokers`; nothing connects until {@linkcode SlotYieldChannel.start}. */
  constructor(brokers: string[], options: SlotYieldChannelOptions = {}) {
    this.#topic = options.topic ?? "anonymizer_slots";
    this.#groupId = `${options.groupId ?? "anonymizer"}-slots-${crypto.randomUUID()}`;
    this.#kafka = kafkaClient(brokers, {
      clientId: options.clientId ?? "anonymizer",
      ssl: options.ssl ?? false,
      sasl: options.sasl,
      kafkajs: { socketFactory: this.#sockets.factory },
    });
  }

  /** The hand-over topic. */
  get topic(): string {
    return this.#topic;
  }

  /**
   * Creates the topic if missing, then reads it from its end, calling
   * `onYield` for every hand-over.
   */
  async start(onYield: (y: SlotYield) => void): Promise<void> {
    const admin = this.#kafka.admin();
    await admin.connect();
    try {
      if (!(await admin.listTopics()).includes(this.#topic)) {
        await admin.createTopics({
          waitForLeaders: true,
          topics: [{
            topic: this.#topic,
            numPartitions: 1,
            configEntries: [{ name: "retention.ms", value: String(RETENTION_MS) }],
          }],
        });
      }
    } finally {
      await admin.disconnect();
    }
    this.#producer = this.#kafka.producer({ allowAutoTopicCreation: false });
    await this.#producer.connect();
    // A private group reading from the end: old hand-overs are of no use, and
    // nothing is committed. The broker answers a fetch as soon as a hand-over
    // arrives, so the wait only bounds empty polls: at 100 ms they were ten
    // requests a second; a stop does not wait for the poll in flight.
    this.#consumer = this.#kafka.consumer({ groupId: this.#groupId, maxWaitTimeInMs: 5_000 });
    await this.#consumer.connect();
    await this.#consumer.subscribe({ topic: this.#topic, fromBeginning: false });
    await this.#consumer.run({
      autoCommit: false,
      eachMessage: ({ message }) => {
        const y = parseYield(message.value);
        if (y === null) {
          log.warn("Ignoring a malformed slot hand-over on {topic}", { topic: this.#topic });
        } else {
          onYield(y);
        }
        return Promise.resolve();
      },
    });
  }

  /** Publishes a hand-over. */
  async publish(y: SlotYield): Promise<void> {
    if (this.#producer === null) {
      throw new Error(
        `Cannot hand over slot ${y.at} as the channel on ${this.#topic} is not started`,
      );
    }
    await this.#producer.send({
      topic: this.#topic,
      acks: -1,
      messages: [{ value: JSON.stringify(y) }],
    });
  }

  /** Disconnects. */
  async stop(): Promise<void> {
    if (this.#consumer !== null) await this.#sockets.disconnect(this.#consumer);
    await this.#producer?.disconnect();
  }
}

function parseYield(value: Uint8Array | Buffer | null): SlotYield | null {
  if (value === null) return null;
  try {
    const y = JSON.parse(new TextDecoder().decode(value));
    if (typeof y?.view === "string" && typeof y?.from === "string" && Number.isSafeInteger(y?.at)) {
      return { view: y.view, from: y.from, at: y.at };
    }
  } catch {
    // Not JSON: reported by the caller as malformed.
  }
  return null;
}
