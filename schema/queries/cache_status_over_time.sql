-- Requests and bytes per cache status over time, one point per {step} seconds.
SELECT
    toDateTime(intDiv(toUInt32(minute), {step:UInt32}) * {step:UInt32}) AS t,
    cache_status,
    sum(requests) AS total_requests,
    sum(bytes_sent) AS total_bytes_sent
FROM {{database}}.http_log_totals_1m
WHERE minute >= toStartOfMinute({from:DateTime}) AND minute <= {to:DateTime}
GROUP BY t, cache_status
ORDER BY t, cache_status
