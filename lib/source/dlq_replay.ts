/**
 * Dead-letter replay: re-reads the DLQ topic and queues, exactly once, every
 * dead letter that passes validation with the current settings (for example
 * a raised `MAX_PAST_AGE_MS`). The replay is a consumer of the DLQ in its own
 * group, `<KAFKA_GROUP_ID>-dlq-replay`, feeding the same KV queue as the
 * service: the queue's per-partition offsets and the group's commits fence
 * it as they fence the main path, so a second replay queues nothing again.
 * What still fails stays in the DLQ and is never written there again.
 *
 * The queue is the service's, so the replay holds its lock: it runs while
 * the service on that `KV_PATH` is stopped, and the service flushes the rows
 * when it starts again.
 *
 * @module
 */
import type { Config } from "../config.ts";
import type { KvQueue } from "../queue/kv_queue.ts";
import { type DlqProgress, type DlqSummary, replayGroupId, runDlq } from "./_dlq_run.ts";
import type { DlqFilter } from "./_dead_letter_verdict.ts";

export type { CodeCounts, DlqProgress, DlqSummary } from "./_dlq_run.ts";
export type { DlqFilter } from "./_dead_letter_verdict.ts";

/** Options of {@linkcode replayDeadLetters}. */
export interface ReplayOptions {
  /** Which letters to consider; the others are passed over for good. Default: all. */
  filter?: DlqFilter;
  /** Called about every 500 ms with the letters read and left. Default: none. */
  onProgress?: (progress: DlqProgress) => void;
  /** Ends the replay early; rows already queued stay queued and fenced. Default: none. */
  signal?: AbortSignal;
}

/**
 * Replays `config.kafkaDlqTopic` into `queue` up to the end offsets taken at
 * the start, and returns the counts by code. Rows are owned (committed) when
 * it resolves. Throws a `StartupError` when the DLQ topic does not exist.
 *
 * @example An aborted replay stops before reaching Kafka
 * ```ts
 * import { replayDeadLetters } from "./dlq_replay.ts";
 * import { loadConfig } from "../config.ts";
 * import { openQueue } from "../queue/kv_queue.ts";
 * import assert from "node:assert/strict";
 *
 * const config = loadConfig({ MAX_PAST_AGE_MS: String(90 * 86_400_000) }, []);
 * await using queue = await openQueue(`${await Deno.makeTempDir()}/q.kv`);
 * // With Kafka up: const { byCode } = await replayDeadLetters(queue, config);
 * const signal = AbortSignal.abort(new Error("stopped by the operator"));
 * await assert.rejects(replayDeadLetters(queue, config, { signal }), /stopped by the operator/);
 * ```
 */
export function replayDeadLetters(
  queue: KvQueue,
  config: Config,
  options: ReplayOptions = {},
): Promise<DlqSummary> {
  return runDlq(queue, config, { ...options, groupId: replayGroupId(config) });
}
