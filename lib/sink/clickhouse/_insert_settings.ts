/**
 * The settings every INSERT carries. anonymizer's exactly-once rests on them,
 * so none is left to a server or profile default: ClickHouse 26.9 in chDB, for
 * one, defaults `async_insert` to 1, which would acknowledge a buffered insert
 * and deduplicate it by other rules.
 *
 * @module
 */
import type { ServerProfile } from "./server_version.ts";

/** How an unknown outcome is resolved; see `CLICKHOUSE_DEDUP`. */
export type DedupStrategy = "check" | "token";

/**
 * URL settings of the INSERT of batch `batchId` on a server of `profile`.
 * 18.16 gets none: it has neither asynchronous inserts nor deduplication for
 * non-replicated tables, and refuses settings it does not know.
 *
 * @example
 * ```ts
 * import { insertSettings } from "./_insert_settings.ts";
 * import { serverProfile } from "./server_version.ts";
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(insertSettings(serverProfile("18.16.1"), { dedup: "check", batchId: 7n }), {});
 * assert.deepEqual(insertSettings(serverProfile("26.9.2.1"), { dedup: "token", batchId: 7n }), {
 *   async_insert: "0",
 *   insert_deduplicate: "1",
 *   deduplicate_blocks_in_dependent_materialized_views: "1",
 *   insert_deduplication_token: "7",
 * });
 * ```
 */
export function insertSettings(
  profile: ServerProfile,
  options: { dedup: DedupStrategy; batchId: bigint },
): Record<string, string> {
  if (!profile.modern) return {};
  const settings: Record<string, string> = {
    // The INSERT must answer only once its part is written, so that 200 means stored.
    async_insert: "0",
    // A resend of a batch whose outcome was lost must be dropped by the tables' windows.
    insert_deduplicate: "1",
    // ...and by the totals tables' own windows, or a resend would count twice there.
    deduplicate_blocks_in_dependent_materialized_views: "1",
  };
  if (options.dedup === "token") settings.insert_deduplication_token = String(options.batchId);
  return settings;
}
