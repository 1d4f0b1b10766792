/**
 * The dry run of the dead-letter replay: the same pass, from the replay
 * group's committed offsets, into a scratch queue in a temporary folder and
 * a scratch consumer group, both deleted at the end. The service's queue and
 * the replay group's offsets are not touched, so it may run while the
 * service runs.
 *
 * @module
 */
import type { Config } from "../config.ts";
import { openQueue } from "../queue/kv_queue.ts";
import { type DlqSummary, replayGroupId, runDlq } from "./_dlq_run.ts";
import type { ReplayOptions } from "./dlq_replay.ts";

/**
 * Counts what {@linkcode replayDeadLetters} would do now with `config`,
 * by code, queueing and committing nothing. `summary.groupId` names the
 * replay group whose offsets it started at.
 *
 * @example An aborted count stops before reaching Kafka
 * ```ts
 * import { countDeadLetters } from "./dlq_count.ts";
 * import { loadConfig } from "../config.ts";
 * import assert from "node:assert/strict";
 *
 * const config = loadConfig({}, []);
 * // With Kafka up: const { byCode } = await countDeadLetters(config, { filter: { code: "timestamp_too_old" } });
 * const signal = AbortSignal.abort(new Error("stopped by the operator"));
 * await assert.rejects(countDeadLetters(config, { signal }), /stopped by the operator/);
 * ```
 */
export async function countDeadLetters(
  config: Config,
  options: ReplayOptions = {},
): Promise<DlqSummary> {
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-dlq-dry-run-" });
  try {
    await using queue = await openQueue(`${dir}/scratch.kv`);
    const replayGroup = replayGroupId(config);
    const summary = await runDlq(queue, config, {
      ...options,
      groupId: `${replayGroup}-dry-run-${crypto.randomUUID().slice(0, 8)}`,
      scratchOf: replayGroup,
    });
    return { ...summary, groupId: replayGroup };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
