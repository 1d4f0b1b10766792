-- One resource per hour over [from, to] (a day: from = to - 1 day). No resource (an empty value,
-- the dashboard's "any") reads resource 0, so the panel is empty rather than an error.
SELECT
    hour AS t,
    sum(requests) AS total_requests,
    sum(bytes_sent) AS total_bytes_sent,
    sum(request_time_milli) / sum(requests) AS mean_request_time_milli
FROM {{database}}.http_log_totals_resource_1h
WHERE resource_id = toUInt64(if({resource_id:String} = '', '0', {resource_id:String}))
    AND hour >= toStartOfHour({from:DateTime}) AND hour <= {to:DateTime}
GROUP BY t
ORDER BY t
