-- Traffic totals per hour by anonymized client network (a.b.c.X), HTTP status and cache status.
-- The address leads the key: the dashboards look one network up over a time range, which reads
-- one index range per part, and sorted addresses compress to a few bytes. A network sends few
-- requests an hour, so HTTP status and cache status in the key add few rows.
-- The deduplication window lets a retried insert that carries insert_deduplication_token and
-- deduplicate_blocks_in_dependent_materialized_views = 1 fill a view write that failed, once.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.http_log_totals_ip_1h
(
    remote_addr        String /*+modern CODEC(ZSTD(1)) */,
    hour               DateTime /*+modern CODEC(ZSTD(1)) */,
    response_status    UInt16,
    cache_status       LowCardinality(String),
    requests           UInt64 /*+modern CODEC(T64, ZSTD(1)) */,
    bytes_sent         UInt64 /*+modern CODEC(T64, ZSTD(1)) */,
    request_time_milli UInt64 /*+modern CODEC(T64, ZSTD(1)) */
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (remote_addr, hour, response_status, cache_status)
/*+modern SETTINGS non_replicated_deduplication_window = 1000 */
AS SELECT
    remote_addr,
    toStartOfHour(timestamp) AS hour,
    response_status,
    cache_status,
    count() AS requests,
    sum(bytes_sent) AS bytes_sent,
    sum(request_time_milli) AS request_time_milli
FROM {{database}}.http_log
GROUP BY remote_addr, hour, response_status, cache_status
