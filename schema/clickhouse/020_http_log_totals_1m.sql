-- Traffic totals per minute by HTTP status and cache status. Like every totals view, it is fed
-- only by its view on http_log, so it counts exactly the rows that land there. The key has a few
-- dozen values a minute whatever the message rate, so charts over a day read under 100k rows.
-- The deduplication window lets a retried insert that carries insert_deduplication_token and
-- deduplicate_blocks_in_dependent_materialized_views = 1 fill a view write that failed, once.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.http_log_totals_1m
(
    minute             DateTime /*+modern CODEC(DoubleDelta, ZSTD(1)) */,
    response_status    UInt16,
    cache_status       LowCardinality(String),
    requests           UInt64 /*+modern CODEC(T64, ZSTD(1)) */,
    bytes_sent         UInt64 /*+modern CODEC(T64, ZSTD(1)) */,
    request_time_milli UInt64 /*+modern CODEC(T64, ZSTD(1)) */
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, response_status, cache_status)
/*+modern SETTINGS non_replicated_deduplication_window = 1000 */
AS SELECT
    toStartOfMinute(timestamp) AS minute,
    response_status,
    cache_status,
    count() AS requests,
    sum(bytes_sent) AS bytes_sent,
    sum(request_time_milli) AS request_time_milli
FROM {{database}}.http_log
GROUP BY minute, response_status, cache_status
