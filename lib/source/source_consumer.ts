/**
 * The consumer seam of {@linkcode KafkaSource}: the few things it needs from
 * a Kafka consumer group member. `kafkaConsumer()` adapts kafkajs to it;
 * unit tests drive the source through a fake.
 *
 * @module
 */

/** One message as the source sees it. */
export interface SourceMessage {
  /** Offset within the partition. */
  offset: bigint;
  /** Key, or `null`. */
  key: Uint8Array | null;
  /** Value, or `null` (a tombstone). */
  value: Uint8Array | null;
  /** Broker or producer timestamp, epoch ms as a decimal string. */
  timestamp: string;
  /** Headers as received; a value is bytes, text, or a list of either. */
  headers: MessageHeaders;
}

/** Kafka message headers as received. */
export type MessageHeaders = Readonly<
  Record<string, Uint8Array | string | ReadonlyArray<Uint8Array | string> | undefined>
>;

/** One fetched batch of one partition, with the controls valid while it is handled. */
export interface SourceBatch {
  /** Partition. */
  partition: number;
  /** Messages in offset order; may be empty. */
  messages: readonly SourceMessage[];
  /** Offset of the last message of the batch, including ones the broker filtered out. */
  lastOffset: bigint;
  /** Messages between the end of this batch and the partition's high watermark. */
  lag: number;
  /** Tells the group this member is alive while the batch takes long. */
  heartbeat(): Promise<void>;
  /** Whether the consumer is still running (not stopping). */
  isRunning(): boolean;
  /** Whether a rebalance took the partition away since the batch was fetched. */
  isStale(): boolean;
}

/** What a {@linkcode SourceConsumer} reports to its user. */
export interface ConsumerHandlers {
  /**
   * Called on each join of the group, with the partitions of the topic now
   * assigned and this member's id in the group.
   */
  joined(partitions: number[], memberId: string): void;
  /** Called when the consumer learns that the group is rebalancing. */
  rebalancing(): void;
  /** Called after each heartbeat the group coordinator answered. */
  heartbeat(): void;
  /** Called when the consumer crashed; `restart` says whether it restarts by itself. */
  crashed(error: unknown, restart: boolean): void;
  /** Called when the consumer stopped. */
  stopped(): void;
  /**
   * Handles one batch. The next batch of the same partition waits for it;
   * if it rejects, the consumer fetches the batch again.
   */
  batch(batch: SourceBatch): Promise<void>;
}

/**
 * A member of a consumer group of one topic, with offsets committed only
 * when its user says so.
 *
 * @example A consumer that never joins, as a unit test might start with
 * ```ts
 * import type { SourceConsumer } from "./source_consumer.ts";
 * import assert from "node:assert/strict";
 *
 * const commits: Array<[number, bigint]> = [];
 * const idle: SourceConsumer = {
 *   topic: "http_log",
 *   groupId: "anonymizer",
 *   start: () => Promise.resolve(),
 *   stop: () => Promise.resolve(),
 *   commit: (partition, offset) => {
 *     commits.push([partition, offset]);
 *     return Promise.resolve();
 *   },
 *   members: () => Promise.resolve([]),
 *   committed: () => Promise.resolve({ offset: -1n, metadata: null }),
 * };
 * await idle.commit(0, 10n, "{}");
 * assert.deepEqual(commits, [[0, 10n]]);
 * ```
 */
export interface SourceConsumer {
  /** Topic consumed. */
  readonly topic: string;
  /** Consumer group. */
  readonly groupId: string;
  /**
   * Connects and subscribes, then joins the group and consumes in the
   * background, reporting to `handlers`. May be called again after it
   * failed to reach Kafka; the handlers of the first call stay in place.
   */
  start(handlers: ConsumerHandlers): Promise<void>;
  /**
   * Stops fetching, lets the batch in progress finish, and leaves the
   * group. A consumer that crashes after this does not restart.
   */
  stop(): Promise<void>;
  /** Commits `offset` (the next to read) of `partition` with `metadata`. */
  commit(partition: number, offset: bigint, metadata: string): Promise<void>;
  /** Member ids of the group as the coordinator describes it now. */
  members(): Promise<string[]>;
  /** The group's last commit of `partition`: offset `-1n` and metadata `null` if none. */
  committed(partition: number): Promise<{ offset: bigint; metadata: string | null }>;
}
