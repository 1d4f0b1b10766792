/**
 * What `KafkaSource` works with: the decoder's verdict on a
 * message, where it writes, and what it reports after each batch.
 *
 * @module
 */
import type { ErrorCode } from "../errors.ts";
import type { KvQueue } from "../queue/kv_queue.ts";
import type { HttpLogRow } from "../record/types.ts";
import type { MessageHeaders } from "./source_consumer.ts";

/** The result of turning one message into a row. */
export type MessageResult =
  | { ok: true; row: HttpLogRow }
  | { ok: false; code: ErrorCode; message: string };

/** Counters the source reports after each Kafka batch. */
export interface SourceBatchEvent {
  /** Partition. */
  partition: number;
  /** Messages received, including skipped ones. */
  received: number;
  /** Messages skipped as already queued. */
  skipped: number;
  /** Rows appended to the queue. */
  queued: number;
  /** Messages dead-lettered. */
  deadLettered: number;
  /** Dead letters by error code. */
  deadLetterCodes: Partial<Record<ErrorCode, number>>;
  /** Messages between this batch and the partition's high watermark. */
  lag: number;
}

/** A message that cannot be stored, with where it came from and why. */
export interface DeadLetterMessage {
  /** Source partition. */
  partition: number;
  /** Source offset. */
  offset: string;
  /** Original key. */
  key: Uint8Array | null;
  /** Original value, unchanged. */
  value: Uint8Array | null;
  /** Machine-readable reason. */
  code: ErrorCode;
  /** One line without payload or address. */
  message: string;
}

/** Where `KafkaSource` sends what it cannot store, e.g. the dead-letter producer. */
export interface DeadLetterSink {
  /** Writes `letters` durably (acks=all); resolves only once every one is stored. */
  send(letters: readonly DeadLetterMessage[]): Promise<void>;
}

/**
 * What a message carries besides its value, for a `toRow` that needs it
 * (the dead-letter replay reads the code a letter was written with).
 */
export interface MessageContext {
  /** Partition. */
  partition: number;
  /** Offset, as a decimal string. */
  offset: string;
  /** Broker or producer timestamp, epoch ms as a decimal string. */
  timestamp: string;
  /** Headers as received. */
  headers: MessageHeaders;
}

/** What `KafkaSource` writes to: the queue, the row decoder, the dead letters. */
export interface SourceTargets {
  /** The durable queue rows are appended to. */
  queue: KvQueue;
  /** Turns a message value into a row or a rejection; `context` says where it came from. */
  toRow: (value: Uint8Array | null, context: MessageContext) => MessageResult;
  /** Where invalid messages go. */
  deadLetters: DeadLetterSink;
}
