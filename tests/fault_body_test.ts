/**
 * A systemic fault must not be mistaken for bad data: with a proxy that
 * inverts one byte of every INSERT body, ClickHouse cannot read any body, and
 * the flusher keeps each batch (resealing it in the other encoding where the
 * server reads both) instead of bisecting it into the dead-letter topic. Once
 * the proxy passes bodies unchanged again, every row lands exactly once.
 */
import assert from "node:assert/strict";
import { startService } from "../lib/service.ts";
import { startFaultProxy } from "../testing/fault_proxy.ts";
import {
  assertExactlyOnce,
  createWorld,
  produceRecords,
  scrapeMetrics,
  storedCount,
  until,
  worldConfig,
} from "../testing/pipeline.ts";
import { CLICKHOUSE_TARGETS, freePort, topicMessageCount } from "../testing/stack.ts";
import { report } from "../testing/bad_input.ts";

const RECORDS = 100;
/**
 * Flipped INSERTs before the proxy is fixed: more than bisecting 100 rows
 * breadth first down to single rows takes (127 requests), so a flusher that
 * took a body error for bad data would have dead-lettered rows by then.
 */
const FLIPPED_INSERTS = 150;
const SYSTEMIC = "anonymizer_clickhouse_systemic_failures_total";

for (const target of CLICKHOUSE_TARGETS) {
  Deno.test({
    name:
      `anonymizer keeps batches whose body a proxy corrupts, dead-letters nothing, and lands every row once on ClickHouse ${target.name}`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      const clickhouse = { url: target.url };
      const flips = FLIPPED_INSERTS;
      await using fault = await startFaultProxy(new URL(target.url).host);
      fault.rule = (line) => line.includes("INSERT") ? "flip" : "pass";
      await using world = await createWorld({
        prefix: "flip",
        clickhouse,
        proxy: { upstream: fault.hostPort, rate: "600r/m" },
      });
      const { records } = await produceRecords(world, { count: RECORDS, seed: 4242 });
      const metricsUrl = `http://127.0.0.1:${freePort()}/metrics`;
      const service = await startService(
        worldConfig(world, { METRICS_LISTEN: new URL(metricsUrl).host }),
      );
      try {
        const inserts = () => fault.connections.filter((c) => c.requestLine.includes("INSERT"));

        await t.step(`${flips} INSERTs with a flipped byte store nothing`, async () => {
          await until(
            `${flips} flipped INSERTs`,
            () =>
              inserts().filter((c) => c.flipped && c.upstreamDoneAt !== null).length >=
                  flips
                ? true
                : undefined,
          );
          const flipped = inserts().filter((c) => c.flipped);
          const took = ["block", "zstd"].map((encoding) => {
            const ms = flipped
              .filter((c) => c.requestLine.includes("decompress=1") === (encoding === "block"))
              .map((c) => (c.upstreamDoneAt ?? NaN) - c.at).sort((a, b) => a - b);
            return `${ms.length} as ${encoding} (median answer ${ms[ms.length >> 1] ?? "-"} ms)`;
          });
          report(`  ${flipped.length} flipped INSERTs: ${took.join(", ")}`);
          assert.equal(await storedCount(world.database, clickhouse), 0, "no corrupted row stored");
        });

        await t.step("nothing is dead-lettered; the metric names the cause", async () => {
          assert.equal(await topicMessageCount(world.dlqTopic), 0);
          const { series } = await scrapeMetrics(metricsUrl);
          assert.ok(
            (series.get(`${SYSTEMIC}{cause="body_rejected"}`) ?? 0) >= flips - 1,
            `${SYSTEMIC}{cause="body_rejected"} is ${
              series.get(`${SYSTEMIC}{cause="body_rejected"}`)
            }`,
          );
          assert.equal(series.get(`${SYSTEMIC}{cause="breaker"}`) ?? 0, 0);
          assert.equal(
            series.get(`anonymizer_records_dead_lettered_total{reason="clickhouse_rejected"}`) ??
              0,
            0,
          );
        });

        if (target.name === "modern") {
          await t.step("the server reads both encodings, so retries alternate them", () => {
            const flipped = inserts().filter((c) => c.flipped);
            const withBlock = flipped.filter((c) => c.requestLine.includes("decompress=1"));
            assert.ok(withBlock.length >= 1, "a retry as native_clickhouse_zstd");
            assert.ok(withBlock.length < flipped.length, "a retry as native_planes_zstd");
          });
        }

        await t.step("after the proxy is fixed every row lands exactly once", async () => {
          fault.rule = null;
          fault.mode = "pass";
          await until(
            `${RECORDS} rows stored`,
            async () => await storedCount(world.database, clickhouse) >= RECORDS ? true : undefined,
          );
          // A few more slots: a stray resend would show as a duplicate.
          await new Promise((r) => setTimeout(r, 5 * world.spacingMs));
          await assertExactlyOnce(world.database, records, clickhouse);
          assert.equal(await topicMessageCount(world.dlqTopic), 0);
        });
      } finally {
        await service.stop();
      }
    },
  });
}
