/**
 * A plain stored row for unit tests that only need rows to tell apart.
 *
 * @module
 */
import type { HttpLogRow } from "../lib/record/types.ts";

/**
 * A valid, anonymized row whose `resourceId` is `id`; `overrides` replace
 * fields. Default: 2023-11-14T22:13:20Z, a 200 `GET /` cache hit.
 *
 * @example
 * ```ts
 * import { testRow } from "./test_row.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(testRow(7).resourceId, 7n);
 * assert.equal(testRow(7, { url: "/x" }).url, "/x");
 * ```
 */
export function testRow(id: number | bigint, overrides: Partial<HttpLogRow> = {}): HttpLogRow {
  return {
    timestamp: 1_700_000_000,
    resourceId: BigInt(id),
    bytesSent: 100n,
    requestTimeMilli: 5n,
    responseStatus: 200,
    cacheStatus: "HIT",
    method: "GET",
    remoteAddr: "1.2.3.X",
    url: "/",
    ...overrides,
  };
}
