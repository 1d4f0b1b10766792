-- Requests and bytes over time for any combination of resource id, client network (a.b.c.X),
-- HTTP status and cache status: an empty value means any, so the 15 non-empty combinations and
-- the unfiltered totals are one query. One point per {step} seconds, at most one per hour where an
-- hour table answers. Each branch answers the combinations its table keys; for the others its
-- time range ends in 1970, an empty range of the sort key, so only one branch reads data (a
-- constantly false WHERE alone still reads every part on ClickHouse 26.9): no resource and no
-- network from http_log_totals_1m; a network without resource from http_log_totals_ip_1h; a
-- resource alone from http_log_totals_resource_1h; a resource with anything else from
-- http_log_totals_resource_ip_1h, one index range of the resource's hours.
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
    SELECT
        toDateTime(intDiv(toUInt32(hour), {step:UInt32}) * {step:UInt32}) AS t,
        requests,
        bytes_sent AS bytes
    FROM {{database}}.http_log_totals_resource_ip_1h
    WHERE resource_id = toUInt64(if({resource_id:String} = '', '0', {resource_id:String}))
        AND hour >= toStartOfHour({from:DateTime})
        AND hour <= if({resource_id:String} != '' AND ({remote_addr:String} != ''
                OR {response_status:String} != '' OR {cache_status:String} != ''),
            {to:DateTime}, toDateTime(0))
        AND ({remote_addr:String} = '' OR remote_addr = {remote_addr:String})
        AND ({response_status:String} = ''
            OR response_status = toUInt16(if({response_status:String} = '', '0', {response_status:String})))
        AND ({cache_status:String} = '' OR cache_status = {cache_status:String})
)
GROUP BY t
ORDER BY t
