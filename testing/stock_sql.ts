/**
 * Server-side generation of stock rows: one `INSERT … SELECT … FROM numbers(n)` draws rows from
 * the same distributions as tools/synthetic_records.ts (tools/stock_distribution.ts), so a bench can
 * load 100M rows without shipping them over HTTP. tests/stock_sql_test.ts checks that its bytes
 * per row on disk match the TypeScript generator's within 5% on each server.
 *
 * @module
 */
import {
  EXTENSIONS,
  METHODS,
  PATH_WORDS,
  RESOURCE_ID_MIN,
  RESOURCE_ID_SPAN,
  SEGMENT_ALPHABET,
  SEGMENT_MIN,
  SEGMENT_SKEW,
  SEGMENT_SPAN,
  STATUSES,
} from "../tools/stock_distribution.ts";
import { CACHE_STATUSES } from "../lib/record/vocabulary.ts";

/** Options of {@linkcode stockInsertSql}. */
export interface StockInsertOptions {
  /** Last second (Unix time) of the uniform timestamp range. Default: the current second. */
  last?: number;
  /** First second (Unix time) of the uniform timestamp range. Default: `last - 3599`. */
  first?: number;
  /** Value of `batch_id` for every row. Default: `1`. */
  batchId?: number;
}

const list = (values: readonly (string | number)[]) =>
  `[${values.map((v) => typeof v === "number" ? String(v) : `'${v}'`).join(",")}]`;

/**
 * The statement inserting `rows` stock rows into `table`, with timestamps uniform over
 * `[first, last]` (Unix seconds) and the client address anonymized as the service stores it.
 * It runs on ClickHouse 18.16 and on modern servers.
 *
 * @example
 * ```ts
 * import { stockInsertSql } from "./stock_sql.ts";
 * import assert from "node:assert/strict";
 *
 * const sql = stockInsertSql("db.http_log", 1000, { last: 1_700_000_000 });
 * assert.match(sql, /^INSERT INTO db\.http_log/);
 * assert.match(sql, /FROM numbers\(1000\)$/);
 * ```
 */
export function stockInsertSql(
  table: string,
  rows: number,
  options: StockInsertOptions = {},
): string {
  const last = options.last ?? Math.floor(Date.now() / 1000);
  const first = options.first ?? last - 3599;
  // rand(n) with distinct n keeps ClickHouse from folding the calls into one value; inside a
  // lambda each array element draws anew.
  const pick = (values: readonly (string | number)[], n: number) =>
    `${list(values)}[rand(${n}) % ${values.length} + 1]`;
  const u = (n: number) => `(rand(${n}) / 4294967296.)`;
  const segmentLength = `${SEGMENT_MIN} + toUInt32(floor(${SEGMENT_SPAN} * pow(${
    u(20)
  }, ${SEGMENT_SKEW})))`;
  const words = `arrayStringConcat(arrayMap(i -> concat('/', ${
    list(PATH_WORDS)
  }[rand(i) % ${PATH_WORDS.length} + 1]), range(1 + rand(21) % 6)))`;
  const segment =
    `arrayStringConcat(arrayMap(i -> substring('${SEGMENT_ALPHABET}', rand(i + 1000) % ${SEGMENT_ALPHABET.length} + 1, 1), range(${segmentLength})))`;
  // As many draws give "" as give an extension, as in the TypeScript generator.
  const extension = `${list([...EXTENSIONS, ...EXTENSIONS.map(() => "")])}[rand(22) % ${
    2 * EXTENSIONS.length
  } + 1]`;
  return `INSERT INTO ${table}
    (timestamp, resource_id, bytes_sent, request_time_milli, response_status, cache_status,
     method, remote_addr, url, batch_id)
SELECT
    toDateTime(${first} + rand(1) % ${last - first + 1}),
    ${RESOURCE_ID_MIN} + rand64(2) % ${RESOURCE_ID_SPAN},
    rand(3) % 2097152,
    rand(4) % 30001,
    ${pick(STATUSES, 5)},
    ${pick(CACHE_STATUSES, 6)},
    ${pick(METHODS, 7)},
    concat(toString(rand(8) % 256), '.', toString(rand(9) % 256), '.', toString(rand(10) % 256),
        '.X'),
    concat(${words}, '/', ${segment}, ${extension}),
    ${options.batchId ?? 1}
FROM numbers(${rows})`;
}
