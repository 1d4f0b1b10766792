-- Requests, bytes sent and mean response time over time, one point per {step} seconds.
SELECT
    toDateTime(intDiv(toUInt32(minute), {step:UInt32}) * {step:UInt32}) AS t,
    sum(requests) AS total_requests,
    sum(bytes_sent) AS total_bytes_sent,
    sum(request_time_milli) / sum(requests) AS mean_request_time_milli
FROM {{database}}.http_log_totals_1m
WHERE minute >= toStartOfMinute({from:DateTime}) AND minute <= {to:DateTime}
GROUP BY t
ORDER BY t
