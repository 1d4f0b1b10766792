/**
 * Rows of the stock producer's distribution, validated and anonymized as the
 * service stores them, for tests and benchmarks of the body encodings.
 *
 * @module
 */
import { syntheticRecords } from "../tools/synthetic_records.ts";
import type { HttpLogRow } from "../lib/record/types.ts";
import { toRow } from "../lib/record/validate.ts";

/** The clock the rows are generated against, so a seed always gives the same rows. */
export const STOCK_NOW = 1_700_000_000_000;

/**
 * Rows built from `base` whose values sit at the edges of their column
 * types: zeros and empty strings, the largest values, non-ASCII text and a
 * URL at the validator's 8 KiB limit.
 *
 * @example
 * ```ts
 * import { edgeRows, stockRows } from "./stock_rows.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(edgeRows(stockRows(1, 1)[0]!).length, 3);
 * ```
 */
export function edgeRows(base: HttpLogRow): HttpLogRow[] {
  return [
    { ...base, resourceId: 0n, bytesSent: 0n, requestTimeMilli: 0n, cacheStatus: "", url: "" },
    {
      ...base,
      timestamp: 0xffff_fffe,
      resourceId: 0xffff_ffff_ffff_ffffn,
      bytesSent: 0x8000_0000_0000_0000n,
      responseStatus: 599,
      method: "PROPFIND",
      remoteAddr: "2001:db8:85a3::X",
      url: "/ünïcödé/€/𝄞?q=\t\n\\'\"",
    },
    { ...base, url: "/" + "x".repeat(8191) },
  ];
}

/**
 * The first `count` stored rows of the stock sequence with `seed`.
 *
 * @example
 * ```ts
 * import { stockRows } from "./stock_rows.ts";
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(stockRows(3, 1), stockRows(3, 1));
 * assert.ok(stockRows(3, 1).every((r) => r.remoteAddr.endsWith(".X")));
 * ```
 */
export function stockRows(count: number, seed: number): HttpLogRow[] {
  const rows: HttpLogRow[] = [];
  for (const record of syntheticRecords({ seed, now: STOCK_NOW })) {
    const result = toRow(record, { now: STOCK_NOW });
    if (result.ok) rows.push(result.row);
    if (rows.length === count) return rows;
  }
  throw new Error("unreachable: the generator is endless");
}
