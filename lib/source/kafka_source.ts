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
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { type Consumer, type EachBatchPayload, Kafka, type KafkaConfig, logLevel } from "kafkajs";
import { type ErrorCode, QueueError } from "../errors.ts";
import type { KvQueue, QueueEntry } from "../queue/kv_queue.ts";
import type { HttpLogRow } from "../record/types.ts";
import { formatMetadata, parseMetadata, resolvePending, takeOver } from "./_commit_metadata.ts";
import { kafkaLogCreator } from "./_kafka_log.ts";

const log = getLogger(["anonymizer", "kafka"]);

/** The result of turning one message into a row. */
export type MessageResult =
  | { ok: true; row: HttpLogRow }
  | { ok: false; code: ErrorCode; message: string };

/** Where a consumer group without committed offsets starts. */
export type OffsetReset = "earliest" | "latest" | { timestamp: number };

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

/** SASL credentials for the Kafka connection. */
export interface KafkaSasl {
  /** The mechanism, as `KAFKA_SASL_MECHANISM` names it. */
  mechanism: "plain" | "scram-sha-256" | "scram-sha-512";
  /** User name. */
  username: string;
  /** Password; never logged. */
  password: string;
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

/** Where {@linkcode KafkaSource} sends what it cannot store, e.g. the dead-letter producer. */
export interface DeadLetterSink {
  /** Writes `letters` durably (acks=all); resolves only once every one is stored. */
  send(letters: readonly DeadLetterMessage[]): Promise<void>;
}

/** Options of {@linkcode KafkaSource}. */
export interface KafkaSourceOptions {
  /** Turns a message value into a row or a rejection. Required in practice; default: rejects everything. */
  toRow?: (value: Uint8Array | null) => MessageResult;
  /** Topic to consume. Default: `"http_log"`. */
  topic?: string;
  /** Consumer group. Default: `"anonymizer"`. */
  groupId?: string;
  /** Kafka client id. Default: `"anonymizer"`. */
  clientId?: string;
  /** Start position for partitions without a committed offset. Default: `"earliest"`. */
  offsetReset?: OffsetReset;
  /** Where invalid messages go. Required in practice; default: none, and a batch with an invalid message fails. */
  deadLetters?: DeadLetterSink;
  /** TLS: `true` or options passed to kafkajs. Default: `false`. */
  ssl?: boolean;
  /** SASL credentials passed to kafkajs. Default: none. */
  sasl?: KafkaSasl;
  /** Consumer session timeout, ms. Default: `30_000`. */
  sessionTimeoutMs?: number;
  /** Called after each Kafka batch. Default: none. */
  onBatch?: (event: SourceBatchEvent) => void;
  /** Called when rows became owned (sealable). Default: none. */
  onOwned?: () => void;
  /** Called while KV refuses writes (e.g. disk full): `true` when paused, `false` when resumed. Default: none. */
  onBackpressure?: (paused: boolean) => void;
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
 * import { openQueue } from "../queue/kv_queue.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await using queue = await openQueue(`${dir}/q.sqlite3`);
 * const source = new KafkaSource(["127.0.0.1:9092"], queue, { topic: "http_log" });
 * assert.equal(source.status().joined, false);
 * ```
 */
export class KafkaSource {
  readonly #queue: KvQueue;
  readonly #kafka: Kafka;
  readonly #consumer: Consumer;
  readonly #deadLetters: DeadLetterSink | undefined;
  readonly #opts: Required<
    Pick<KafkaSourceOptions, "topic" | "groupId" | "offsetReset" | "toRow">
  >;
  readonly #hooks: Pick<KafkaSourceOptions, "onBatch" | "onOwned" | "onBackpressure">;
  readonly #reconciled = new Set<number>();
  readonly #locks = new Map<number, Promise<unknown>>();
  #handovers = new Map<number, Array<[bigint, string]>>();
  #status: SourceStatus = { joined: false, assigned: [], lag: {}, backpressure: false };
  #stopping = false;
  #listening = false;

  /** A source reading from `brokers` into `queue`. */
  constructor(brokers: string[], queue: KvQueue, options: KafkaSourceOptions = {}) {
    this.#queue = queue;
    this.#opts = {
      topic: options.topic ?? "http_log",
      groupId: options.groupId ?? "anonymizer",
      offsetReset: options.offsetReset ?? "earliest",
      toRow: options.toRow ??
        (() => ({ ok: false, code: "no_decoder", message: "no decoder configured" })),
    };
    this.#hooks = options;
    this.#kafka = new Kafka({
      brokers,
      clientId: options.clientId ?? "anonymizer",
      ssl: options.ssl,
      // kafkajs types each mechanism apart; every one takes a user name and a password.
      sasl: options.sasl as KafkaConfig["sasl"],
      logLevel: logLevel.INFO,
      logCreator: kafkaLogCreator,
    });
    this.#consumer = this.#kafka.consumer({
      groupId: this.#opts.groupId,
      sessionTimeout: options.sessionTimeoutMs ?? 30_000,
      heartbeatInterval: 3_000,
      // Larger, less frequent fetches make fewer, fuller KV chunks (a seal takes at most 900),
      // for at most a second of added latency.
      minBytes: 65_536,
      maxWaitTimeInMs: 1_000,
      retry: {
        retries: Number.MAX_SAFE_INTEGER,
        maxRetryTime: 10_000,
        // A join cut short by stop() crashes the runner; it must not start again.
        restartOnFailure: () => Promise.resolve(!this.#stopping),
      },
    });
    this.#deadLetters = options.deadLetters;
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
    const c = this.#consumer;
    if (!this.#listening) {
      this.#listen();
      this.#listening = true;
    }
    if (typeof this.#opts.offsetReset === "object") {
      await this.#resetToTimestamp(this.#opts.offsetReset.timestamp);
    }
    await c.connect();
    await c.subscribe({
      topic: this.#opts.topic,
      fromBeginning: this.#opts.offsetReset !== "latest",
    });
    c.run({
      autoCommit: false,
      eachBatchAutoResolve: true,
      partitionsConsumedConcurrently: 1,
      eachBatch: (payload) => this.#eachBatch(payload),
    }).catch((err) => log.error("Kafka consumer stopped: {error}", { error: String(err) }));
  }

  #listen(): void {
    const c = this.#consumer;
    c.on(c.events.GROUP_JOIN, (e) => {
      this.#reconciled.clear();
      const assigned = e.payload.memberAssignment[this.#opts.topic] ?? [];
      this.#status.joined = true;
      this.#status.assigned = [...assigned].sort((a, b) => a - b);
      log.info("Joined group {groupId} with partitions {partitions}", {
        groupId: this.#opts.groupId,
        partitions: this.#status.assigned.join(",") || "none",
      });
      // Rows left pending from before the join are settled now, not at the next watchdog tick.
      this.settlePending().catch((err) =>
        log.warn("Cannot settle pending rows after joining yet: {error}", { error: String(err) })
      );
    });
    c.on(c.events.CRASH, (e) => {
      this.#status.joined = false;
      log.error("Kafka consumer crashed (restart: {restart}): {error}", {
        restart: e.payload.restart,
        error: String(e.payload.error),
      });
    });
    c.on(c.events.STOP, () => {
      this.#status.joined = false;
    });
  }

  /**
   * Stops fetching, lets the batch in progress finish its KV append and
   * offset commit, then disconnects.
   */
  async stop(): Promise<void> {
    this.#stopping = true;
    const disconnected = this.#consumer.disconnect();
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
    for (const p of await this.#queue.partitions()) {
      if (p.topic !== this.#opts.topic || p.next === p.committed) continue;
      await this.#withPartition(p.partition, async () => {
        const state = await this.#queue.partition(p.topic, p.partition);
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
   * Gives partitions without a committed offset a starting offset by time,
   * before this consumer joins: seeking after the first fetch could let rows
   * from the wrong start be queued.
   */
  async #resetToTimestamp(timestamp: number): Promise<void> {
    const admin = this.#kafka.admin();
    await admin.connect();
    try {
      const [committed] = await admin.fetchOffsets({
        groupId: this.#opts.groupId,
        topics: [this.#opts.topic],
      });
      const ends = await admin.fetchTopicOffsets(this.#opts.topic);
      // No message at or after the time: start at the end, like "latest".
      const byTime = (await admin.fetchTopicOffsetsByTimestamp(this.#opts.topic, timestamp)).map((
        t,
      ) =>
        t.offset === "-1"
          ? { ...t, offset: ends.find((e) => e.partition === t.partition)?.high ?? "0" }
          : t
      );
      const partitions = byTime.filter((t) =>
        (committed?.partitions.find((c) => c.partition === t.partition)?.offset ?? "-1") === "-1"
      );
      if (partitions.length === 0) return;
      try {
        await admin.setOffsets({
          groupId: this.#opts.groupId,
          topic: this.#opts.topic,
          partitions,
        });
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

  async #groupOffset(partition: number): Promise<{ offset: bigint; metadata: string | null }> {
    const admin = this.#kafka.admin();
    await admin.connect();
    try {
      const [t] = await admin.fetchOffsets({
        groupId: this.#opts.groupId,
        topics: [this.#opts.topic],
      });
      const p = t?.partitions.find((x) => x.partition === partition);
      return { offset: BigInt(p?.offset ?? "-1"), metadata: p?.metadata ?? null };
    } finally {
      await admin.disconnect();
    }
  }

  /**
   * Settles pending rows of `partition` against the group's last commit, and
   * learns the handover history to commit with from now on.
   */
  async #reconcile(partition: number, options: { fence: boolean }): Promise<void> {
    const topic = this.#opts.topic;
    const self = this.#queue.instanceId;
    const group = await this.#groupOffset(partition);
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
      await this.#consumer.commitOffsets([
        { topic: this.#opts.topic, partition, offset: String(offset), metadata },
      ]);
    } catch (err) {
      // The rows stay pending; a later commit or the reconcile step settles them.
      log.warn("Cannot commit offset {offset} of partition {partition}: {error}", {
        offset: String(offset),
        partition,
        error: String(err),
      });
      return false;
    }
    await this.#queue.promote(this.#opts.topic, partition, offset);
    this.#hooks.onOwned?.();
    return true;
  }

  #eachBatch(payload: EachBatchPayload): Promise<void> {
    return this.#withPartition(payload.batch.partition, () => this.#handleBatch(payload));
  }

  async #handleBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, heartbeat, isRunning, isStale } = payload;
    const { partition } = batch;
    if (batch.messages.length === 0 || this.#stopping) return;
    if (!this.#reconciled.has(partition)) {
      await this.#reconcile(partition, { fence: true });
      this.#reconciled.add(partition);
    }
    const state = await this.#queue.partition(this.#opts.topic, partition);
    const skipBelow = state?.next ?? -1n;
    const entries: QueueEntry[] = [];
    const dead: DeadLetterMessage[] = [];
    let skipped = 0;
    for (const m of batch.messages) {
      const offset = BigInt(m.offset);
      if (offset < skipBelow) {
        skipped++;
        continue;
      }
      const value = m.value === null
        ? null
        : new Uint8Array(m.value.buffer, m.value.byteOffset, m.value.byteLength);
      const result = this.#opts.toRow(value);
      if (result.ok) entries.push({ offset, row: result.row });
      else {
        const key = m.key === null
          ? null
          : new Uint8Array(m.key.buffer, m.key.byteOffset, m.key.byteLength);
        dead.push({
          partition,
          offset: m.offset,
          key,
          value,
          code: result.code,
          message: result.message,
        });
      }
    }
    const next = BigInt(batch.lastOffset()) + 1n;
    if (next <= skipBelow) {
      this.#report(partition, batch.messages.length, skipped, 0, dead, batch.offsetLag());
      return;
    }
    if (dead.length > 0) {
      if (this.#deadLetters === undefined) {
        throw new Error(
          `Cannot dead-letter ${dead.length} messages of partition ${partition}: no dead-letter producer`,
        );
      }
      await this.#deadLetters.send(dead);
    }
    const queued = await this.#appendWithBackpressure(partition, entries, next, {
      heartbeat,
      isRunning,
      isStale,
    });
    if (queued === null) return;
    await this.#commit(partition, next);
    this.#report(partition, batch.messages.length, skipped, queued, dead, batch.offsetLag());
  }

  #report(
    partition: number,
    received: number,
    skipped: number,
    queued: number,
    dead: Array<{ code: ErrorCode }>,
    lag: string,
  ): void {
    const deadLetterCodes: Partial<Record<ErrorCode, number>> = {};
    for (const d of dead) deadLetterCodes[d.code] = (deadLetterCodes[d.code] ?? 0) + 1;
    this.#status.lag[partition] = Number(lag);
    this.#hooks.onBatch?.({
      partition,
      received,
      skipped,
      queued,
      deadLettered: dead.length,
      deadLetterCodes,
      lag: Number(lag),
    });
  }

  /**
   * Appends to KV, retrying while KV refuses writes (disk full). Kafka keeps
   * the unread messages meanwhile; heartbeats keep the group membership.
   * Returns `null` if the batch was abandoned (stopping or rebalanced).
   */
  async #appendWithBackpressure(
    partition: number,
    entries: QueueEntry[],
    next: bigint,
    ctl: Pick<EachBatchPayload, "heartbeat" | "isRunning" | "isStale">,
  ): Promise<number | null> {
    let warnedAt = 0;
    for (;;) {
      try {
        const n = await this.#queue.append(this.#opts.topic, partition, entries, { next });
        if (this.#status.backpressure) {
          this.#status.backpressure = false;
          this.#hooks.onBackpressure?.(false);
          log.info("KV accepts writes again; consumption resumed");
        }
        return n;
      } catch (err) {
        if (!(err instanceof QueueError) || !err.retriable) throw err;
        if (!this.#status.backpressure) {
          this.#status.backpressure = true;
          this.#hooks.onBackpressure?.(true);
        }
        if (Date.now() - warnedAt > 60_000) {
          warnedAt = Date.now();
          log.error("Consumption paused as KV refuses writes ({code}); retrying: {error}", {
            code: err.code,
            error: err.message,
          });
        }
        if (this.#stopping || !ctl.isRunning() || ctl.isStale()) return null;
        await ctl.heartbeat();
        await new Promise((r) => setTimeout(r, 2_000));
      }
    }
  }
}
