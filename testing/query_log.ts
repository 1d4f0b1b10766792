/**
 * Reads a modern ClickHouse server's `system.query_log` to prove what the
 * token path did: which INSERTs of one batch ran, the
 * `insert_deduplication_token` each carried, and whether the server dropped
 * the block as a duplicate. 18.16 has no tokens; these helpers are for the
 * modern server only.
 *
 * @module
 */
import assert from "node:assert/strict";
import { CLICKHOUSE_TARGET } from "./stack.ts";

/**
 * Whether this run's server resolves an unknown outcome by resending with the
 * batch's token (the modern server) rather than by a check SELECT (18.16).
 */
export const TOKEN_PATH: boolean = CLICKHOUSE_TARGET.name === "modern";

/** One finished INSERT of a batch, as `system.query_log` recorded it. */
export interface BatchInsert {
  /** `anonymizer-batch-<id>-<attempt>`. */
  queryId: string;
  /** The `insert_deduplication_token` it carried, `""` when none. */
  token: string;
  /** Blocks the server dropped as already inserted (the table and its views count separately). */
  duplicatedBlocks: number;
  /** Its `async_insert` setting as sent, `""` when the server default applied. */
  asyncInsert: string;
}

/**
 * Every INSERT of batch `batchId` that finished on the server, oldest first.
 * `query` runs SQL on the server directly and returns TSV.
 *
 * @example Needs the modern server of the stack
 * ```ts ignore
 * import { batchInserts } from "./query_log.ts";
 * import { clickhouseQuery } from "./stack.ts";
 *
 * console.log(await batchInserts((sql) => clickhouseQuery(sql), 123n));
 * ```
 */
export async function batchInserts(
  query: (sql: string) => Promise<string>,
  batchId: bigint | string,
): Promise<BatchInsert[]> {
  await query("SYSTEM FLUSH LOGS");
  const text = await query(
    "SELECT query_id, Settings['insert_deduplication_token'], " +
      "ProfileEvents['DuplicatedInsertedBlocks'], Settings['async_insert'] " +
      "FROM system.query_log " +
      `WHERE type = 'QueryFinish' AND startsWith(query_id, 'anonymizer-batch-${batchId}-') ` +
      "ORDER BY event_time_microseconds FORMAT TabSeparated",
  );
  return text.split("\n").filter((line) => line !== "").map((line) => {
    const [queryId = "", token = "", duplicated = "0", asyncInsert = ""] = line.split("\t");
    return { queryId, token, duplicatedBlocks: Number(duplicated), asyncInsert };
  });
}

/**
 * Asserts batch `batchId` was sent more than once, every send carried the
 * batch id as its token and `async_insert=0`, and every send after the first
 * was dropped by the server as a duplicate. Returns the sends.
 *
 * @example Needs the modern server of the stack
 * ```ts ignore
 * import { assertResentWithToken } from "./query_log.ts";
 * import { clickhouseQuery } from "./stack.ts";
 *
 * await assertResentWithToken((sql) => clickhouseQuery(sql), 123n);
 * ```
 */
export async function assertResentWithToken(
  query: (sql: string) => Promise<string>,
  batchId: bigint | string,
): Promise<BatchInsert[]> {
  const sends = await batchInserts(query, batchId);
  assert.ok(sends.length >= 2, `batch ${batchId} was sent ${sends.length} time(s), not resent`);
  for (const send of sends) {
    assert.equal(send.token, String(batchId), `${send.queryId} carried another token`);
    assert.equal(send.asyncInsert, "0", `${send.queryId} left async_insert to the server`);
  }
  assert.equal(sends[0]!.duplicatedBlocks, 0, `the first send of batch ${batchId} was a duplicate`);
  for (const send of sends.slice(1)) {
    assert.ok(send.duplicatedBlocks > 0, `${send.queryId} was written again, not deduplicated`);
  }
  return sends;
}

/**
 * Asserts every INSERT anonymizer made into `database` that reached the
 * server carried its own batch id as token and `async_insert=0`, and that
 * every batch stored rows through exactly one of them (the others dropped as
 * duplicates). Returns how many INSERTs and how many were resends.
 *
 * @example Needs the modern server of the stack
 * ```ts ignore
 * import { assertInsertsCarriedTokens } from "./query_log.ts";
 * import { clickhouseQuery } from "./stack.ts";
 *
 * console.log(await assertInsertsCarriedTokens((sql) => clickhouseQuery(sql), "e2e_x"));
 * ```
 */
export async function assertInsertsCarriedTokens(
  query: (sql: string) => Promise<string>,
  database: string,
): Promise<{ inserts: number; resends: number }> {
  await query("SYSTEM FLUSH LOGS");
  const text = await query(
    "SELECT query_id, Settings['insert_deduplication_token'], Settings['async_insert'], " +
      "ProfileEvents['DuplicatedInsertedBlocks'] FROM system.query_log " +
      `WHERE type = 'QueryFinish' AND query_kind = 'Insert' AND has(databases, '${database}') ` +
      "AND startsWith(query_id, 'anonymizer-batch-') ORDER BY event_time_microseconds " +
      "FORMAT TabSeparated",
  );
  const rows = text.split("\n").filter((line) => line !== "").map((line) => line.split("\t"));
  assert.ok(rows.length > 0, `no INSERT into ${database} in system.query_log`);
  const written = new Set<string>();
  let resends = 0;
  for (const [queryId = "", token, asyncInsert, duplicated] of rows) {
    const batchId = /^anonymizer-batch-(\d+)-\d+$/.exec(queryId)?.[1];
    assert.equal(token, batchId, `${queryId} carried token ${JSON.stringify(token)}`);
    assert.equal(asyncInsert, "0", `${queryId} left async_insert to the server`);
    if (Number(duplicated) > 0) {
      resends++;
    } else {
      assert.ok(!written.has(batchId!), `batch ${batchId} was written twice`);
      written.add(batchId!);
    }
  }
  return { inserts: rows.length, resends };
}
