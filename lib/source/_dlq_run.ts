/**
 * One pass over the dead-letter topic, shared by the replay and its dry run:
 * a {@linkcode KafkaSource} on the DLQ topic in a group of its own, whose
 * `toRow` unwraps each letter and re-validates it with today's settings, and
 * whose dead-letter sink drops what still fails (it is already in the DLQ).
 * Rows are fenced by the queue's per-partition offsets and the group's
 * commits exactly as on the main path. The pass ends once the group has
 * committed every partition up to the end offsets taken at its start and no
 * DLQ row is left pending.
 *
 * @module
 */
import type { Config } from "../config.ts";
import { kafkaAuthOptions } from "./kafka_auth.ts";
import { StartupError } from "../errors.ts";
import type { KvQueue } from "../queue/kv_queue.ts";
import { messageToRow } from "../record/message_to_row.ts";
import { type DlqFilter, judgeLetter, type Verdict } from "./_dead_letter_verdict.ts";
import { kafkaClient } from "./kafka_client.ts";
import { kafkaConsumer } from "./kafka_consumer.ts";
import { fetchWaitFor } from "./_fetch_wait.ts";
import { KafkaSource } from "./kafka_source.ts";

/** How often the pass checks the group's commits, ms. */
const POLL_MS = 500;

/** Dead letters of one code, by fate. */
export interface CodeCounts {
  /** Queued: they pass validation now. */
  replayed: number;
  /** Failing still; they stay in the DLQ, unduplicated. */
  stillDead: number;
  /** Left out by `--code` or `--since`; passed over by the replay group. */
  skipped: number;
}

/** What a pass did. */
export interface DlqSummary {
  /** The dead-letter topic read. */
  topic: string;
  /** Consumer group whose offsets fence the pass. */
  groupId: string;
  /** Dead letters read (each counted once, however often Kafka delivered it). */
  read: number;
  /** Counts by the code each letter was dead-lettered with, codes sorted. */
  byCode: Record<string, CodeCounts>;
  /** Still-dead letters by the code they fail with now, codes sorted. */
  stillDeadNow: Record<string, number>;
}

/** Progress of a pass. */
export interface DlqProgress {
  /** Dead letters read so far. */
  read: number;
  /** Dead letters left below the end offsets taken at the start. */
  remaining: number;
}

/** Options of {@linkcode runDlq}. */
export interface DlqRunOptions {
  /** Consumer group that reads and commits. */
  groupId: string;
  /**
   * A group whose committed offsets `groupId` starts at; `groupId` is then a
   * scratch group deleted at the end (the dry run). Default: none.
   */
  scratchOf?: string;
  /** Which letters to consider. Default: all. */
  filter?: DlqFilter;
  /** Called about every 500 ms. Default: none. */
  onProgress?: (progress: DlqProgress) => void;
  /** Ends the pass early: the source stops, and the promise rejects with the reason. Default: none. */
  signal?: AbortSignal;
}

/** The consumer group a replay commits its DLQ offsets in: `<KAFKA_GROUP_ID>-dlq-replay`. */
export function replayGroupId(config: Config): string {
  return `${config.kafkaGroupId}-dlq-replay`;
}

/** Reads `config.kafkaDlqTopic` once into `queue`; see the module doc. */
export async function runDlq(
  queue: KvQueue,
  config: Config,
  options: DlqRunOptions,
): Promise<DlqSummary> {
  options.signal?.throwIfAborted();
  const topic = config.kafkaDlqTopic;
  const { groupId } = options;
  const auth = kafkaAuthOptions(config);
  const clientId = `${config.kafkaClientId}-dlq-replay`;
  const admin = kafkaClient(config.kafkaBrokers, { clientId, ...auth }).admin();
  await admin.connect();
  const summary: DlqSummary = { topic, groupId, read: 0, byCode: {}, stillDeadNow: {} };
  try {
    if (!(await admin.listTopics()).includes(topic)) {
      throw new StartupError(
        "KAFKA_DLQ_TOPIC",
        `Cannot replay dead letters as the topic does not exist: KAFKA_DLQ_TOPIC is ${
          JSON.stringify(topic)
        }`,
      );
    }
    const committedOf = async (group: string) => {
      const [t] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
      return new Map((t?.partitions ?? []).map((p) => [p.partition, BigInt(p.offset)]));
    };
    const startGroup = options.scratchOf ?? groupId;
    const startAt = await committedOf(startGroup);
    const ends = (await admin.fetchTopicOffsets(topic)).map((p) => ({
      partition: p.partition,
      low: BigInt(p.low),
      end: BigInt(p.high),
    }));
    if (options.scratchOf !== undefined) {
      const seeded = [...startAt].filter(([, o]) => o >= 0n);
      if (seeded.length > 0) {
        await admin.setOffsets({
          groupId,
          topic,
          partitions: seeded.map(([partition, o]) => ({ partition, offset: String(o) })),
        });
      }
    }
    const remaining = (committed: Map<number, bigint>) =>
      ends.reduce((n, p) => {
        const at = committed.get(p.partition) ?? -1n;
        const from = at < p.low ? p.low : at;
        return n + (p.end > from ? Number(p.end - from) : 0);
      }, 0);
    const pendingRows = async () =>
      (await queue.partitions()).filter((p) => p.topic === topic && p.next !== p.committed);
    if (remaining(startAt) === 0 && (await pendingRows()).length === 0) return finish(summary);

    const filter = options.filter ?? {};
    const toRow = (value: Uint8Array | null) =>
      messageToRow(value, {
        maxPastAgeMs: config.maxPastAgeMs,
        maxFutureSkewMs: config.maxFutureSkewMs,
      });
    // Verdicts of the batch in progress, by partition and offset: a batch Kafka
    // delivers again overwrites them, so each letter is counted once, on commit.
    const inBatch = new Map<number, Map<string, Verdict>>();
    const consumer = kafkaConsumer(config.kafkaBrokers, {
      topic,
      groupId,
      clientId,
      offsetReset: "earliest",
      fetchWaitMs: fetchWaitFor(config.clickhouseSpacingMs),
      ...auth,
    });
    const source = new KafkaSource(consumer, {
      queue,
      toRow: (value, context) => {
        const verdict = judgeLetter(value, context, { filter, toRow });
        let batch = inBatch.get(context.partition);
        if (batch === undefined) inBatch.set(context.partition, batch = new Map());
        batch.set(context.offset, verdict);
        return verdict.outcome === "replayed"
          ? { ok: true, row: verdict.row }
          : { ok: false, code: "dead_letter_kept", message: verdict.code };
      },
      // What still fails is in the DLQ already: it is never written there again.
      deadLetters: { send: () => Promise.resolve() },
    }, {
      onBatch: (event) => {
        for (const v of inBatch.get(event.partition)?.values() ?? []) count(summary, v);
        inBatch.delete(event.partition);
      },
    });
    try {
      await source.start();
      for (;;) {
        options.signal?.throwIfAborted();
        const left = remaining(await committedOf(groupId));
        const pending = await pendingRows();
        if (left === 0 && pending.length === 0) break;
        // A commit that failed leaves rows pending; settle them before leaving.
        if (left === 0) await source.settlePending();
        options.onProgress?.({ read: summary.read, remaining: left });
        await delay(POLL_MS, options.signal);
      }
    } finally {
      await source.stop();
    }
    return finish(summary);
  } finally {
    if (options.scratchOf !== undefined) {
      await admin.deleteGroups([groupId]).catch(() => {});
    }
    await admin.disconnect();
  }
}

function count(summary: DlqSummary, verdict: Verdict): void {
  const c = summary.byCode[verdict.code] ??= { replayed: 0, stillDead: 0, skipped: 0 };
  summary.read++;
  if (verdict.outcome === "replayed") c.replayed++;
  else if (verdict.outcome === "skipped") c.skipped++;
  else {
    c.stillDead++;
    summary.stillDeadNow[verdict.now] = (summary.stillDeadNow[verdict.now] ?? 0) + 1;
  }
}

function finish(summary: DlqSummary): DlqSummary {
  const sorted = <T>(r: Record<string, T>) =>
    Object.fromEntries(Object.entries(r).sort(([a], [b]) => a.localeCompare(b)));
  return { ...summary, byCode: sorted(summary.byCode), stillDeadNow: sorted(summary.stillDeadNow) };
}

function delay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", aborted);
      resolve();
    }, ms);
    const aborted = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", aborted, { once: true });
  });
}
