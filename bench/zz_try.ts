import { stockInsertSql } from "./_stock_sql.ts";
import { openHttpEngine } from "./_engines.ts";
for (const url of ["http://127.0.0.1:8123", "http://127.0.0.1:8125"]) {
  const e = await openHttpEngine(url);
  await e.run("CREATE DATABASE IF NOT EXISTS c_try");
  await e.run("DROP TABLE IF EXISTS c_try.t");
  await e.run(`CREATE TABLE c_try.t (timestamp DateTime, resource_id UInt64, bytes_sent UInt64, request_time_milli UInt64, response_status UInt16, cache_status LowCardinality(String), method LowCardinality(String), remote_addr String, url String, batch_id UInt64) ENGINE = MergeTree() ORDER BY (timestamp, resource_id)`);
  const r = await e.run(stockInsertSql("c_try.t", 1_000_000, { last: 1_700_000_000 }));
  console.log(url, "1M insert ms", r.ms);
  console.log((await e.run("SELECT avg(length(url)), uniqExact(response_status), uniqExact(cache_status), min(timestamp), max(timestamp) FROM c_try.t")).data);
  console.log((await e.run("SELECT url FROM c_try.t LIMIT 3")).data);
  await e.run("DROP DATABASE c_try");
}
