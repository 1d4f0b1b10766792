/**
 * The Kafka edge: consumes `http_log` in a consumer group, turns each
 * message into an anonymized row or a dead letter, appends rows to the KV
 * queue, and only then commits offsets.
 *
 * Per Kafka batch of one partition:
 * 1. messages below the partition's `next` offset in KV are skipped (Kafka
 *    redelivered them after a crash or rebalance);
 * 2. invalid messages are sent to the dead-letter topic and acknowledged;
 * 3. rows and the new `next` offset are appended to KV (pending);
 * 4. the offset is committed with this instance's id as metadata;
 * 5. on success the rows become owned and the flusher may seal them.
 *
 * Kafka is reached through a {@linkcode SourceConsumer} (`kafkaConsumer()`
 * in the service), so unit tests drive the source with a fake consumer.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { type ErrorCode, QueueError } from "../errors.ts";
import type { KvQueue, QueueEntry } from "../queue/kv_queue.ts";
import { formatMetadata, parseMetadata, resolvePending, takeOver } from "./commit_metadata.ts";
import type { SlotSchedule } from "../slot_schedule.ts";
import { GroupView } from "./_group_view.ts";
import type { SourceBatch, SourceConsumer } from "./source_consumer.ts";
import type {
  DeadLetterMessage,
  DeadLetterSink,
  SourceBatchEvent,
  SourceTargets,
} from "./source_types.ts";

export type * from "./source_types.ts";

const log = getLogger(["anonymizer", "kafka"]);

/** Options of {@linkcode KafkaSource}. */
export interface KafkaSourceOptions {
  /** Called after each Kafka batch. Default: none. */
  onBatch?: (event: SourceBatchEvent) => void;
  /** Called when rows became owned (sealable). Default: none. */
  onOwned?: () => void;
  /**
   * Told the group's members after each join, each answered heartbeat, and
   * when membership is lost, so that instances behind one address share the
   * proxy's slots. Default: none (the flusher paces as if alone).
   */
  slotSchedule?: SlotSchedule;
}

/** Live state for readiness and metrics. */
export interface SourceStatus {
  /** Whether the consumer has joined its group. */
  joined: boolean;
  /** Partitions assigned in the current generation. */
  assigned: number[];
  /** Last known lag per partition. */
  lag: Record<number, number>;
  /** Whether consumption is paused because KV refuses writes. */
  backpressure: boolean;
}

/**
 * Consumes Kafka into the KV queue.
 *
 * @example Construct without connecting
 * ```ts
 * import { KafkaSource } from "./kafka_source.ts";
 * import { kafkaConsumer } from "./kafka_consumer.ts";
 * import { openQueue } from "../queue/kv_queue.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await using queue = await openQueue(`${dir}/q.sqlite3`);
 * const source = new KafkaSource(kafkaConsumer(["127.0.0.1:9092"], { topic: "http_log" }), {
 *   queue,
 *   toRow: () => ({ ok: false, code: "no_decoder", message: "rejects everything" }),
 *   deadLetters: { send: () => Promise.resolve() },
 * });
 * assert.equal(source.status().joined, false);
 * ```
 */
export class KafkaSource {
  readonly #consumer: SourceConsumer;
  readonly #queue: KvQueue;
  readonly #toRow: SourceTargets["toRow"];
  readonly #deadLetters: DeadLetterSink;
  readonly #hooks: KafkaSourceOptions;
  readonly #reconciled = new Set<number>();
  readonly #locks = new Map<number, Promise<unknown>>();
  #handovers = new Map<number, Array<[bigint, string]>>();
  #status: SourceStatus = { joined: false, assigned: [], lag: {}, backpressure: false };
  #stopping = false;
  readonly #group: GroupView | null;

  /** A source reading through `consumer` into `targets`. */
  constructor(consumer: SourceConsumer, targets: SourceTargets, options: KafkaSourceOptions = {}) {
    this.#consumer = consumer;
    this.#queue = targets.queue;
    this.#toRow = targets.toRow;
    this.#deadLetters = targets.deadLetters;
    this.#hooks = options;
    this.#group = options.slotSchedule === undefined
      ? null
      : new GroupView(consumer, options.slotSchedule, () => this.#stopping);
  }

  /** Live state. */
  status(): SourceStatus {
    return { ...this.#status, assigned: [...this.#status.assigned], lag: { ...this.#status.lag } };
  }

  /**
   * Connects and subscribes, then joins the group and consumes in the
   * background: after a crash the join waits for the dead member's session
   * to expire, and the service must stay stoppable meanwhile. May be called
   * again after it failed to reach Kafka.
   */
  async start(): Promise<void> {
    await this.#consumer.start({
      joined: (partitions, memberId) => this.#joined(partitions, memberId),
      rebalancing: () => this.#group?.lost(),
      heartbeat: () => this.#group?.heartbeat(),
      crashed: (error, restart) => {
        this.#group?.lost();
        this.#status.joined = false;
        log.error("Kafka consumer crashed (restart: {restart}): {error}", {
          restart,
          error: String(error),
        });
      },
      stopped: () => {
        this.#group?.lost();
        this.#status.joined = false;
      },
      batch: (batch) => this.#withPartition(batch.partition, () => this.#handleBatch(batch)),
    });
  }

  #joined(partitions: number[], memberId: string): void {
    this.#group?.joined(memberId);
    this.#reconciled.clear();
    this.#status.joined = true;
    this.#status.assigned = [...partitions].sort((a, b) => a - b);
    log.info("Joined group {groupId} with partitions {partitions}", {
      groupId: this.#consumer.groupId,
      partitions: this.#status.assigned.join(",") || "none",
    });
    // Rows left pending from before the join are settled now, not at the next watchdog tick.
    this.settlePending().catch((err) =>
      log.warn("Cannot settle pending rows after joining yet: {error}", { error: String(err) })
    );
  }

  /**
   * Stops fetching, lets the batch in progress finish its KV append and
   * offset commit, then disconnects.
   */
  async stop(): Promise<void> {
    this.#stopping = true;
    const disconnected = this.#consumer.stop();
    if (this.#status.joined) {
      await disconnected;
    } else {
      // Nothing is appended or committed before the join, and kafkajs holds
      // disconnect() until a pending JoinGroup is answered: up to a session
      // timeout after a crash. Let it finish on its own.
      disconnected.catch(() => {});
    }
    this.#status.joined = false;
  }

  /**
   * Settles pending rows that no Kafka batch will settle. On a partition
   * assigned and already reconciled in this generation (its last commit
   * failed and no data followed), commits again. On one assigned but not yet
   * reconciled (rows left from before the join, and no batch since), or no
   * longer assigned (a crash or a rebalance), reconciles with the group's
   * last commit first: committing `next` blindly could rewind another owner's
   * commit and store rows it already stored. Runs after each group join and
   * from the cron watchdog.
   */
  async settlePending(): Promise<void> {
    const topic = this.#consumer.topic;
    for (const p of await this.#queue.partitions()) {
      if (p.topic !== topic || p.next === p.committed) continue;
      await this.#withPartition(p.partition, async () => {
        const state = await this.#queue.partition(topic, p.partition);
        if (state === null || state.next === state.committed) return;
        if (!this.#status.assigned.includes(p.partition)) {
          await this.#reconcile(p.partition, { fence: false });
        } else if (this.#reconciled.has(p.partition)) {
          log.info("Partition {partition}: committing offset {offset} again for pending rows", {
            partition: p.partition,
            offset: String(state.next),
          });
          await this.#commit(p.partition, state.next);
        } else {
          await this.#reconcile(p.partition, { fence: true });
          this.#reconciled.add(p.partition);
        }
      });
    }
  }

  /**
   * Runs `fn` after every earlier operation on `partition`. Commits must not
   * interleave: Kafka stores the last commit, not the highest, and a stale
   * lower one would hand rows we already own to the next owner.
   */
  #withPartition<T>(partition: number, fn: () => Promise<T>): Promise<T> {
    const run = (this.#locks.get(partition) ?? Promise.resolve()).then(fn, fn);
    this.#locks.set(partition, run.catch(() => {}));
    return run;
  }

  /**
   * Settles pending rows of `partition` against the group's last commit, and
   * learns the handover history to commit with from now on.
   */
  async #reconcile(partition: number, options: { fence: boolean }): Promise<void> {
    const topic = this.#consumer.topic;
    const self = this.#queue.instanceId;
    const group = await this.#consumer.committed(partition);
    const meta = parseMetadata(group.metadata);
    if (options.fence) this.#handovers.set(partition, takeOver(self, group.offset, meta));
    const state = await this.#queue.partition(topic, partition);
    if (state === null || state.next === state.committed) return;
    const r = resolvePending(self, state, group.offset, meta);
    if (r.action === "promote") {
      await this.#queue.promote(topic, partition, r.upTo);
      if (r.dropFrom !== undefined || r.resumeAt !== undefined) {
        const dropped = await this.#queue.dropPending(topic, partition, r.resumeAt ?? r.upTo);
        log.info(
          "Partition {partition}: kept rows below {upTo}, dropped {dropped} stored by another owner",
          {
            partition,
            upTo: String(r.upTo),
            dropped,
          },
        );
      }
      this.#hooks.onOwned?.();
    } else if (r.action === "drop") {
      const dropped = await this.#queue.dropPending(topic, partition, r.resumeAt);
      log.info("Partition {partition}: dropped {dropped} pending rows another owner stored", {
        partition,
        dropped,
      });
    } else if (options.fence) {
      log.info("Partition {partition}: fencing pending rows below {offset} with our own commit", {
        partition,
        offset: String(state.next),
      });
      await this.#commit(partition, state.next);
    }
  }

  async #commit(partition: number, offset: bigint): Promise<boolean> {
    const metadata = formatMetadata({
      committer: this.#queue.instanceId,
      handovers: this.#handovers.get(partition) ?? [],
    });
    try {
      await this.#consumer.commit(partition, offset, metadata);
    } catch (err) {
      // The rows stay pending; a later commit or the reconcile step settles them.
      log.warn("Cannot commit offset {offset} of partition {partition}: {error}", {
        offset: String(offset),
        partition,
        error: String(err),
      });
      return false;
    }
    await this.#queue.promote(this.#consumer.topic, partition, offset);
    this.#hooks.onOwned?.();
    return true;
  }

  async #handleBatch(batch: SourceBatch): Promise<void> {
    const { partition } = batch;
    if (batch.messages.length === 0 || this.#stopping) return;
    if (!this.#reconciled.has(partition)) {
      await this.#reconcile(partition, { fence: true });
      this.#reconciled.add(partition);
    }
    const state = await this.#queue.partition(this.#consumer.topic, partition);
    const skipBelow = state?.next ?? -1n;
    const entries: QueueEntry[] = [];
    const dead: DeadLetterMessage[] = [];
    let skipped = 0;
    for (const m of batch.messages) {
      if (m.offset < skipBelow) {
        skipped++;
        continue;
      }
      const result = this.#toRow(m.value, {
        partition,
        offset: String(m.offset),
        timestamp: m.timestamp,
        headers: m.headers,
      });
      if (result.ok) entries.push({ offset: m.offset, row: result.row });
      else {
        dead.push({
          partition,
          offset: String(m.offset),
          key: m.key,
          value: m.value,
          code: result.code,
          message: result.message,
        });
      }
    }
    const next = batch.lastOffset + 1n;
    if (next <= skipBelow) {
      this.#report(partition, batch.messages.length, skipped, 0, dead, batch.lag);
      return;
    }
    if (dead.length > 0) await this.#deadLetters.send(dead);
    const queued = await this.#appendWithBackpressure(batch, entries, next);
    if (queued === null) return;
    await this.#commit(partition, next);
    this.#report(partition, batch.messages.length, skipped, queued, dead, batch.lag);
  }

  #report(
    partition: number,
    received: number,
    skipped: number,
    queued: number,
    dead: Array<{ code: ErrorCode }>,
    lag: number,
  ): void {
    const deadLetterCodes: Partial<Record<ErrorCode, number>> = {};
    for (const d of dead) deadLetterCodes[d.code] = (deadLetterCodes[d.code] ?? 0) + 1;
    this.#status.lag[partition] = lag;
    this.#hooks.onBatch?.({
      partition,
      received,
      skipped,
      queued,
      deadLettered: dead.length,
      deadLetterCodes,
      lag,
    });
  }

  /**
   * Appends to KV, retrying while KV refuses writes (disk full). Kafka keeps
   * the unread messages meanwhile; heartbeats keep the group membership.
   * Returns `null` if the batch was abandoned (stopping or rebalanced).
   */
  async #appendWithBackpressure(
    batch: SourceBatch,
    entries: QueueEntry[],
    next: bigint,
  ): Promise<number | null> {
    let warnedAt = 0;
    for (;;) {
      try {
        const n = await this.#queue.append(this.#consumer.topic, batch.partition, entries, {
          next,
        });
        if (this.#status.backpressure) {
          this.#status.backpressure = false;
          log.info("KV accepts writes again; consumption resumed");
        }
        return n;
      } catch (err) {
        if (!(err instanceof QueueError) || !err.retriable) throw err;
        this.#status.backpressure = true;
        if (Date.now() - warnedAt > 60_000) {
          warnedAt = Date.now();
          log.error("Consumption paused as KV refuses writes ({code}); retrying: {error}", {
            code: err.code,
            error: err.message,
          });
        }
        if (this.#stopping || !batch.isRunning() || batch.isStale()) return null;
        await batch.heartbeat();
        await new Promise((r) => setTimeout(r, 2_000));
      }
    }
  }
}
