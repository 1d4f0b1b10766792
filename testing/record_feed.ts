/**
 * One sequence of distinct-id synthetic records produced to a world's topic
 * in bursts. Separate `produce()` calls with different seeds may repeat a
 * resource id (ids are distinct only within one sequence), which an
 * exactly-once check would take for a duplicate; slices of one sequence
 * cannot.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { logLevel, Partitioners, type Producer } from "kafkajs";
import { kafkaClient } from "../lib/source/kafka_client.ts";
import { encodeRecord } from "../tools/encode_record.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { KAFKA_BROKERS } from "./stack.ts";

/** A sequence of records and how much of it was produced. */
export interface RecordFeed extends AsyncDisposable {
  /** Every record of the sequence, produced or not. */
  readonly records: readonly HttpLogRecord[];
  /** How many were acknowledged by Kafka so far (a prefix of `records`). */
  readonly sent: number;
  /** The records acknowledged so far. */
  produced(): HttpLogRecord[];
  /**
   * Produces the next `count` records (fewer at the end), acknowledged by all
   * replicas, at `rate` records per second (default 0: as fast as Kafka acknowledges).
   */
  send(count: number, options?: { rate?: number }): Promise<number>;
  /** Disconnects the producer. */
  close(): Promise<void>;
}

/** Opens a producer for `topic` and generates `total` records from `seed`. */
export async function openRecordFeed(
  topic: string,
  options: { total: number; seed: number; now?: number },
): Promise<RecordFeed> {
  const records = syntheticRecords({
    seed: options.seed,
    now: options.now ?? Date.now(),
    distinctResourceIds: true,
  }).take(options.total).toArray();
  const producer: Producer = kafkaClient(KAFKA_BROKERS.split(","), {
    clientId: "anonymizer-tests-feed",
    kafkajs: { logLevel: logLevel.NOTHING },
  }).producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false,
  });
  await producer.connect();
  let sent = 0;
  let closed: Promise<void> | undefined;
  const close = () => closed ??= producer.disconnect();
  return {
    records,
    get sent() {
      return sent;
    },
    produced: () => records.slice(0, sent),
    async send(count, opts = {}) {
      const end = Math.min(records.length, sent + count);
      const start = sent;
      const rate = opts.rate ?? 0;
      // A paced run sends 20 requests a second.
      const step = rate > 0 ? Math.max(1, Math.round(rate / 20)) : 500;
      const t0 = performance.now();
      for (let i = start; i < end; i += step) {
        if (rate > 0) {
          const due = t0 + ((i - start) / rate) * 1000;
          const wait = due - performance.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        }
        const messages = records.slice(i, Math.min(end, i + step)).map((r) => {
          const bytes = encodeRecord(r);
          return { value: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
        });
        await producer.send({ topic, acks: -1, messages });
        sent = i + messages.length;
      }
      return end - start;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
