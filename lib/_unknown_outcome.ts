/**
 * Resolving an unknown outcome by a check: whether a batch whose INSERT may
 * or may not have been applied landed, and repairing it when it partly did.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { BatchMeta } from "./queue/kv_queue.ts";
import type { CheckResult } from "./sink/sink.ts";

const log = getLogger(["anonymizer", "flusher"]);

/** The paced requests {@linkcode checkUnknown} spends slots on. */
export interface CheckRequests {
  /** Sends the check; `null` when it failed (already reported). */
  check(): Promise<CheckResult | null>;
  /** Deletes the batch's stored rows; `false` when it failed (already reported). */
  repair(): Promise<boolean>;
  /** Slots the resolution cost so far, for the log line. */
  slots(): number;
}

/**
 * What a check found: `"landed"` (every row stored), `"resend"` (none
 * stored, or the partly stored rows were deleted), or `"pending"` (the check
 * or repair failed, or the INSERT is still running: check again next slot).
 */
export type CheckVerdict = "landed" | "resend" | "pending";

/** Checks `batch`, repairing it when partly stored. */
export async function checkUnknown(
  batch: BatchMeta,
  requests: CheckRequests,
): Promise<CheckVerdict> {
  const found = await requests.check();
  if (found === null) return "pending";
  const batchId = String(batch.id);
  if (found.running) {
    log.warn(
      "Batch {batchId}: its INSERT is still running in ClickHouse; checking again next slot",
      { batchId },
    );
    return "pending";
  }
  const slots = requests.slots();
  if (found.stored === batch.rows) {
    log.info(
      "Batch {batchId} was stored before its outcome was lost; not resending: unknown " +
        "outcome resolved by check, all {rows} rows stored; it cost {slots} slots",
      { batchId, rows: batch.rows, slots },
    );
    return "landed";
  }
  if (found.stored === 0) {
    log.info(
      "Batch {batchId}: unknown outcome resolved by check: none of its {rows} rows were " +
        "stored; sending it again next slot (split in two if it was too large); the check " +
        "cost {slots} slots",
      { batchId, rows: batch.rows, slots },
    );
    return "resend";
  }
  log.error("Batch {batchId} is partly stored ({stored} of {rows} rows); deleting it to resend", {
    batchId,
    stored: found.stored,
    rows: batch.rows,
  });
  if (!await requests.repair()) return "pending";
  log.info(
    "Batch {batchId}: unknown outcome resolved by repair: deleted {stored} partly stored " +
      "rows; sending it again next slot (split in two if it was too large); check and " +
      "repair cost {slots} slots",
    { batchId, stored: found.stored, slots: slots + 1 },
  );
  return "resend";
}

/** Says that resolving the unknown outcome of `batch` starts, and how: by a `check`, or a token resend. */
export function logResolving(batch: BatchMeta, check: boolean): void {
  log.info(
    "Batch {batchId} ({rows} rows, {attempts} sends) has an unknown outcome (state {state}: " +
      "{lastError}); resolving it by {how}",
    {
      batchId: String(batch.id),
      rows: batch.rows,
      attempts: batch.attempts,
      state: batch.state,
      lastError: batch.lastError ?? "the process stopped during the send",
      how: check
        ? "a check SELECT of its rows (one slot)"
        : "resending it with its insert_deduplication_token",
    },
  );
}
