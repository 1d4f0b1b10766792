/**
 * Data shapes shared along the path a record takes:
 * Kafka message → {@linkcode HttpLogRecord} → {@linkcode HttpLogRow} → ClickHouse.
 *
 * @module
 */

/**
 * One decoded Cap'n Proto `HttpLogRecord` (schema/http_log.capnp), exactly as
 * the edge sent it. `remoteAddr` is the raw client address: it must never be
 * persisted, logged or sent anywhere.
 */
export interface HttpLogRecord {
  /** Request time, milliseconds since the Unix epoch. */
  timestampEpochMilli: bigint;
  /** CDN resource id. */
  resourceId: bigint;
  /** Response body bytes sent. */
  bytesSent: bigint;
  /** Time to serve, in milliseconds. */
  requestTimeMilli: bigint;
  /** HTTP status code. */
  responseStatus: number;
  /** Cache status, e.g. `"HIT"`. */
  cacheStatus: string;
  /** HTTP method, e.g. `"GET"`. */
  method: string;
  /** Raw client address. Sensitive. */
  remoteAddr: string;
  /** Request URL path. */
  url: string;
}

/**
 * One validated and anonymized row of ClickHouse table `http_log`. Safe to
 * persist: `remoteAddr` holds the masked form only.
 */
export interface HttpLogRow {
  /** ClickHouse `DateTime`: whole seconds since the Unix epoch, UTC. */
  timestamp: number;
  /** `UInt64`. */
  resourceId: bigint;
  /** `UInt64`. */
  bytesSent: bigint;
  /** `UInt64`. */
  requestTimeMilli: bigint;
  /** `UInt16`. */
  responseStatus: number;
  /** `LowCardinality(String)`. */
  cacheStatus: string;
  /** `LowCardinality(String)`. */
  method: string;
  /** Anonymized client address, e.g. `"1.2.3.X"`. */
  remoteAddr: string;
  /** `String`. */
  url: string;
}
