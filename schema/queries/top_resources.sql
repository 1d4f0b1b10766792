-- The ten resources that sent the most bytes in the clock hour containing {from}; for Grafana's
-- "Last 1 hour" (from = now - 1 hour) that is the last complete hour. The table holds one row per
-- resource and hour after FINAL, so no GROUP BY over millions of resources is needed.
SELECT
    resource_id,
    bytes_sent AS total_bytes_sent,
    requests AS total_requests
FROM {{database}}.http_log_totals_resource_1h FINAL
WHERE hour = toStartOfHour({from:DateTime})
ORDER BY total_bytes_sent DESC, resource_id
LIMIT 10
