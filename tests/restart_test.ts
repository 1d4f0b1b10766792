/**
 * Durability of the queue across a restart: while ClickHouse is unreachable
 * behind ch-proxy (nginx answers 502), consumed rows wait in Deno KV, the
 * Kafka offsets are committed, and after a graceful stop and a restart with
 * ClickHouse back, the rows land from KV, exactly once.
 */
import assert from "node:assert/strict";
import { startFaultProxy } from "../testing/fault_proxy.ts";
import { groupOffsets } from "../testing/kafka_group.ts";
import {
  assertExactlyOnce,
  assertStopsCleanly,
  createWorld,
  delay,
  produceRecords,
  type ServiceProcess,
  spawnService,
  storedCount,
  waitForRows,
} from "../testing/pipeline.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { progress } from "../testing/progress.ts";
import { CLICKHOUSE_URL } from "../testing/stack.ts";

const COUNT = 10_000;

/** Polls `metric` of `service` until `ok(value)`, reporting progress; returns the last value. */
async function waitForMetric(
  service: ServiceProcess,
  metric: string,
  ok: (v: number) => boolean,
  timeoutMs: number,
): Promise<number | null> {
  const deadline = Date.now() + timeoutMs;
  let value: number | null = null;
  let reported = Date.now();
  while (Date.now() < deadline) {
    value = await service.metric(metric).catch(() => null);
    if (value !== null && ok(value)) return value;
    if (Date.now() - reported > 10_000) {
      reported = Date.now();
      progress(`  … ${metric} is ${value}`);
    }
    await delay(250);
  }
  return value;
}

Deno.test({
  name:
    "anonymizer keeps rows queued in KV through a restart while ClickHouse is down, then stores them once",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using link = await startFaultProxy(new URL(CLICKHOUSE_URL).host);
    await using world = await createWorld({ proxy: { upstream: link.hostPort, rate: "120r/m" } });
    let records: HttpLogRecord[] = [];

    const first = await spawnService(world, { name: "first", metrics: true });
    try {
      await t.step("ClickHouse goes away once the service has learnt its version", async () => {
        await link.waitFor((e) => e.status === 200 && e.state === "delivered", 30_000);
        link.mode = "down";
      });

      await t.step(
        `${COUNT} produced records are queued in KV while every request fails with 502`,
        async () => {
          ({ records } = await produceRecords(world, { count: COUNT, seed: 4242 }));
          const queued = await waitForMetric(
            first,
            "anonymizer_queue_rows",
            (v) => v === COUNT,
            60_000,
          );
          assert.equal(queued, COUNT);
          // The flusher sealed a batch and tried it: its INSERT got a 502 from ch-proxy.
          const deadline = Date.now() + 30_000;
          let insert502 = 0;
          while (insert502 === 0 && Date.now() < deadline) {
            await delay(250);
            insert502 = (await world.proxy.readAccessLog()).filter((e) =>
              /[?&]query=INSERT/.test(e.uri) && e.status === 502
            ).length;
          }
          assert.ok(insert502 > 0, "no INSERT was attempted while ClickHouse was down");
          assert.equal(await storedCount(world.database), 0);
          progress(`  ${COUNT} rows queued; ${insert502} INSERT attempts answered 502`);
        },
      );

      await t.step("SIGTERM stops it cleanly with every Kafka offset committed", async () => {
        await assertStopsCleanly(first);
        const offsets = await groupOffsets(world.topic, world.group);
        assert.deepEqual(
          offsets.map((p) => [p.partition, p.committed]),
          offsets.map((p) => [p.partition, p.end]),
          "committed offsets differ from end offsets",
        );
        assert.equal(offsets.reduce((n, p) => n + p.end, 0), COUNT);
      });
    } finally {
      await first.kill("SIGKILL");
    }

    await t.step(
      "ClickHouse is back: the restarted service stores every row exactly once",
      async () => {
        link.mode = "pass";
        const second = await spawnService(world, { name: "second", metrics: true });
        try {
          assert.equal(await waitForRows(world.database, COUNT, 120_000), COUNT);
          await assertExactlyOnce(world.database, records);
          // Every row came from the KV queue: nothing was consumed from Kafka again.
          const flushed = await waitForMetric(
            second,
            "anonymizer_records_flushed_total",
            (v) => v === COUNT,
            10_000,
          );
          assert.equal(flushed, COUNT);
          assert.equal(await second.metric("anonymizer_records_consumed_total"), 0);
          assert.equal(await second.metric("anonymizer_records_queued_total"), 0);
          assert.equal(await second.metric("anonymizer_queue_rows"), 0);
          const status = await second.kill("SIGTERM");
          assert.equal(status.code, 0, second.log().slice(-3000));
        } finally {
          await second.kill("SIGKILL");
        }
      },
    );
  },
});
