/**
 * The shape of a bench:queries results file, written by `queries_bench.ts` and read by
 * `queries_report.ts` and `disk_estimate.ts`.
 *
 * @module
 */

/** p50/p95 of one query at one phase, key, range and concurrency. */
export interface QueryTiming {
  /** `settled` (background merges stopped) or `optimized` (after `OPTIMIZE … FINAL`). */
  phase: string;
  query: string;
  /** Dimensions filtered, `+`-joined; `-` for queries without a combination. */
  combination: string;
  /** `hot`, `cold`, or `-` for queries that look up no key. */
  key: string;
  range: string;
  concurrency: number;
  p50_ms: number;
  p95_ms: number;
  result_rows: number;
}

/** One table's active parts, from `system.parts`. */
export interface TableSize {
  rows: number;
  parts: number;
  bytes_on_disk: number;
  bytes_per_row: number;
}

/** One server and size of a run. */
export interface QueriesRun {
  engine: string;
  size: number;
  days: number;
  tables_optimized: Record<string, TableSize>;
  queries: QueryTiming[];
}
