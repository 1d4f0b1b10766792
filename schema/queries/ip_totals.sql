-- Totals of one anonymized client network (a.b.c.X) over the hours overlapping [from, to].
SELECT
    sum(requests) AS total_requests,
    sum(bytes_sent) AS total_bytes_sent,
    sum(request_time_milli) / sum(requests) AS mean_request_time_milli
FROM {{database}}.http_log_totals_ip_1h
WHERE remote_addr = {remote_addr:String}
    AND hour >= toStartOfHour({from:DateTime}) AND hour <= {to:DateTime}
