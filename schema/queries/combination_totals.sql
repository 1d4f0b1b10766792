-- Requests and bytes over time for any combination of resource id, client network (a.b.c.X),
-- HTTP status and cache status: an empty value means any, so the 15 non-empty combinations and
-- the unfiltered totals are one query. One point per {step} seconds, at most one per hour where an
-- hour table answers. Each branch answers the combinations its table keys; for the others its
-- time range ends in 1970, an empty range of the sort key, so only one branch reads data (a
-- constantly false WHERE alone still reads every part on ClickHouse 26.9): no resource and no network from http_log_totals_1m; a
-- network without resource from http_log_totals_ip_1h; a resource alone from
-- http_log_totals_resource_1h; a resource with anything else from http_log (no rollup keys it:
-- the combination is as rare as a raw row), scanning only the hours in which the hour tables saw
-- the resource and the network (empty subqueries yield 1970 and so an empty range).
SELECT
    t,
    sum(requests) AS total_requests,
    sum(bytes) AS total_bytes_sent
FROM
(
    SELECT
        toDateTime(intDiv(toUInt32(minute), {step:UInt32}) * {step:UInt32}) AS t,
        requests,
        bytes_sent AS bytes
    FROM {{database}}.http_log_totals_1m
    WHERE minute >= toStartOfMinute({from:DateTime})
        AND minute <= if({resource_id:String} = '' AND {remote_addr:String} = '',
            {to:DateTime}, toDateTime(0))
        AND ({response_status:String} = ''
            OR response_status = toUInt16(if({response_status:String} = '', '0', {response_status:String})))
        AND ({cache_status:String} = '' OR cache_status = {cache_status:String})
    UNION ALL
    SELECT
        toDateTime(intDiv(toUInt32(hour), {step:UInt32}) * {step:UInt32}) AS t,
        requests,
        bytes_sent AS bytes
    FROM {{database}}.http_log_totals_ip_1h
    WHERE remote_addr = {remote_addr:String}
        AND hour >= toStartOfHour({from:DateTime})
        AND hour <= if({resource_id:String} = '' AND {remote_addr:String} != '',
            {to:DateTime}, toDateTime(0))
        AND ({response_status:String} = ''
            OR response_status = toUInt16(if({response_status:String} = '', '0', {response_status:String})))
        AND ({cache_status:String} = '' OR cache_status = {cache_status:String})
    UNION ALL
    SELECT
        toDateTime(intDiv(toUInt32(hour), {step:UInt32}) * {step:UInt32}) AS t,
        requests,
        bytes_sent AS bytes
    FROM {{database}}.http_log_totals_resource_1h
    WHERE resource_id = toUInt64(if({resource_id:String} = '', '0', {resource_id:String}))
        AND hour >= toStartOfHour({from:DateTime})
        AND hour <= if({resource_id:String} != '' AND {remote_addr:String} = ''
                AND {response_status:String} = '' AND {cache_status:String} = '',
            {to:DateTime}, toDateTime(0))
    UNION ALL
    WITH
        (
            SELECT (min(hour), max(hour) + 3600) FROM {{database}}.http_log_totals_resource_1h
            WHERE resource_id = toUInt64(if({resource_id:String} = '', '0', {resource_id:String}))
                AND hour >= toStartOfHour({from:DateTime}) AND hour <= {to:DateTime}
        ) AS hours_of_resource,
        (
            SELECT (min(hour), max(hour) + 3600) FROM {{database}}.http_log_totals_ip_1h
            -- ClickHouse 26.9 reads every row for remote_addr = '', so no network looks up a
            -- value that cannot be one, and the bounds it yields are not used.
            WHERE remote_addr = if({remote_addr:String} = '', 'none', {remote_addr:String})
                AND hour >= toStartOfHour({from:DateTime}) AND hour <= {to:DateTime}
        ) AS hours_of_network
    SELECT
        toDateTime(intDiv(toUInt32(timestamp), {step:UInt32}) * {step:UInt32}) AS t,
        toUInt64(1) AS requests,
        bytes_sent AS bytes
    FROM {{database}}.http_log
    WHERE timestamp >= {from:DateTime}
        AND timestamp <= if({resource_id:String} != '' AND ({remote_addr:String} != ''
                OR {response_status:String} != '' OR {cache_status:String} != ''),
            {to:DateTime}, toDateTime(0))
        AND timestamp >= tupleElement(hours_of_resource, 1)
        AND timestamp < tupleElement(hours_of_resource, 2)
        AND ({remote_addr:String} = '' OR timestamp >= tupleElement(hours_of_network, 1))
        AND ({remote_addr:String} = '' OR timestamp < tupleElement(hours_of_network, 2))
        AND resource_id = toUInt64(if({resource_id:String} = '', '0', {resource_id:String}))
        AND ({remote_addr:String} = '' OR remote_addr = {remote_addr:String})
        AND ({response_status:String} = ''
            OR response_status = toUInt16(if({response_status:String} = '', '0', {response_status:String})))
        AND ({cache_status:String} = '' OR cache_status = {cache_status:String})
)
GROUP BY t
ORDER BY t
