-- One resource, client network, HTTP status and cache status together, per minute over [from, to].
-- No rollup keys all four: the combination is as rare as a raw row. http_log is sorted by time,
-- so the scan is narrowed to the hours in which the rollups saw both the resource and the
-- network; empty subqueries yield 1970 and so an empty range.
SELECT
    toStartOfMinute(timestamp) AS t,
    count() AS total_requests,
    sum(bytes_sent) AS total_bytes_sent
FROM {{database}}.http_log
WHERE timestamp >= {from:DateTime} AND timestamp <= {to:DateTime}
    AND timestamp >= (
        SELECT min(hour) FROM {{database}}.http_log_totals_resource_1h
        WHERE resource_id = {resource_id:UInt64}
            AND hour >= toStartOfHour({from:DateTime}) AND hour <= {to:DateTime})
    AND timestamp < (
        SELECT max(hour) + 3600 FROM {{database}}.http_log_totals_resource_1h
        WHERE resource_id = {resource_id:UInt64}
            AND hour >= toStartOfHour({from:DateTime}) AND hour <= {to:DateTime})
    AND timestamp >= (
        SELECT min(hour) FROM {{database}}.http_log_totals_ip_1h
        WHERE remote_addr = {remote_addr:String}
            AND hour >= toStartOfHour({from:DateTime}) AND hour <= {to:DateTime})
    AND timestamp < (
        SELECT max(hour) + 3600 FROM {{database}}.http_log_totals_ip_1h
        WHERE remote_addr = {remote_addr:String}
            AND hour >= toStartOfHour({from:DateTime}) AND hour <= {to:DateTime})
    AND resource_id = {resource_id:UInt64}
    AND remote_addr = {remote_addr:String}
    AND response_status = {response_status:UInt16}
    AND cache_status = {cache_status:String}
GROUP BY t
ORDER BY t
