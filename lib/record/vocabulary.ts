/**
 * The closed vocabularies of `HttpLogRecord` fields that become
 * LowCardinality columns.
 *
 * @module
 */

/** nginx's `$upstream_cache_status` values (an empty value means no cache was involved). */
export const CACHE_STATUSES = [
  "HIT",
  "MISS",
  "BYPASS",
  "STALE",
  "EXPIRED",
  "REVALIDATED",
  "UPDATING",
  "SCARCE",
] as const;
