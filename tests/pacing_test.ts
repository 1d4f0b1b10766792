/**
 * Pacing at the production rate: a private ch-proxy with the stock
 * `limit_req rate=1r/m` (one request per 62.5 s, as nginx computes it) and the
 * service with its default spacing and margin, fed continuously so data waits
 * at every slot. Takes about five minutes.
 */
import assert from "node:assert/strict";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { keepLog, progress, startFeed } from "../testing/feed.ts";
import {
  assertExactlyOnce,
  assertStopsCleanly,
  createWorld,
  delay,
  flushedRows,
  spawnService,
  waitForRows,
} from "../testing/pipeline.ts";
import { type AccessLogEntry, KAFKA_BROKERS } from "../testing/stack.ts";

/** nginx's spacing for `rate=1r/m`: 1000 s / floor(1000 / 60) = 62.5 s. */
const NGINX_SPACING_S = 62.5;
/** Upper bound of an acceptable spacing: a slot wasted by more than a few seconds is a bug. */
const MAX_SPACING_S = 66;
/** Accepted requests to observe before producing stops: the version check and three INSERTs. */
const ACCEPTED_BEFORE_STOP = 4;

/** When nginx read the request (what `limit_req` measures), s since the epoch. */
const startOf = (e: AccessLogEntry) => e.msec - e.requestTime;
const isInsert = (e: AccessLogEntry) => /query=INSERT/i.test(decodeURIComponent(e.uri));

Deno.test({
  name: "anonymizer paces requests to the stock 1r/m ch-proxy without a single 503",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld({ proxy: { rate: "1r/m" } });
    // The service runs with its own defaults: no spacing or margin settings at all.
    delete world.env.CLICKHOUSE_SPACING_MS;
    delete world.env.CLICKHOUSE_MARGIN_MS;
    const inherited = ["CLICKHOUSE_SPACING_MS", "CLICKHOUSE_MARGIN_MS"].filter((k) =>
      Deno.env.get(k) !== undefined
    );
    assert.deepEqual(
      inherited,
      [],
      "the test environment sets pacing variables the service would inherit",
    );

    const feed = await startFeed(KAFKA_BROKERS, world.topic, { rate: 20, seed: 6250 });
    const service = await spawnService(world);
    let records: HttpLogRecord[] = [];
    let feedStopped = false;
    try {
      const paced = await t.step(
        `the proxy accepts ${ACCEPTED_BEFORE_STOP} requests while records arrive at 20/s`,
        async () => {
          let seen = 0;
          const deadline = Date.now() + (ACCEPTED_BEFORE_STOP + 1) * 70_000;
          for (;;) {
            const log = await world.proxy.readAccessLog();
            for (const e of log.slice(seen)) {
              progress(
                `request ${++seen}: ${e.status} ${isInsert(e) ? "INSERT" : "other"} at ` +
                  `${
                    new Date(startOf(e) * 1000).toISOString()
                  }, ${feed.acked.length} records produced`,
              );
            }
            assert.deepEqual(
              log.filter((e) => e.status !== 200).map((e) => e.status),
              [],
              "refused requests",
            );
            if (log.length >= ACCEPTED_BEFORE_STOP) break;
            assert.equal(service.hasExited, false, "the service exited");
            assert.ok(Date.now() < deadline, `only ${log.length} requests within the deadline`);
            await delay(2_000);
          }
        },
      );
      if (!paced) return;

      await t.step("after producing stops, every produced record lands", async () => {
        records = await feed.stop();
        feedStopped = true;
        progress(
          `feed stopped at ${records.length} records; waiting for the final flush (up to ~2 slots)`,
        );
        assert.equal(await waitForRows(world.database, records.length, 3 * 70_000), records.length);
      });

      await t.step("each id is stored once, every address masked", async () => {
        await assertExactlyOnce(world.database, records);
      });

      await t.step(
        "zero 503s and every spacing between accepted requests in [62.5 s, 66 s]",
        async () => {
          const log = await world.proxy.readAccessLog();
          assert.deepEqual(
            log.map((e) => e.status).filter((s) => s !== 200),
            [],
            "non-200 responses",
          );
          assert.ok(log.length >= ACCEPTED_BEFORE_STOP + 1, `only ${log.length} accepted requests`);
          const spacings = log.slice(1).map((e, i) => startOf(e) - startOf(log[i]!));
          const byEnd = log.slice(1).map((e, i) => e.msec - log[i]!.msec);
          progress(
            `spacings between request starts (s): ${spacings.map((s) => s.toFixed(3)).join(", ")}`,
          );
          progress(
            `spacings between response ends (s): ${byEnd.map((s) => s.toFixed(3)).join(", ")}`,
          );
          for (const [i, s] of spacings.entries()) {
            assert.ok(
              s >= NGINX_SPACING_S && s <= MAX_SPACING_S,
              `spacing ${i + 1} is ${
                s.toFixed(3)
              } s, outside [${NGINX_SPACING_S}, ${MAX_SPACING_S}]`,
            );
          }
        },
      );

      await t.step(
        "the first request is the version check, every later one an INSERT carrying rows",
        async () => {
          const log = await world.proxy.readAccessLog();
          assert.deepEqual(log.map(isInsert), [false, ...log.slice(1).map(() => true)]);
          const rows = flushedRows(service.log());
          progress(`rows per INSERT: ${rows.join(", ")}`);
          assert.equal(rows.length, log.length - 1, "a Flushed batch line for every INSERT");
          assert.ok(rows.every((n) => n > 0));
        },
      );

      await t.step("the service stops cleanly on SIGTERM", async () => {
        await assertStopsCleanly(service);
      });
    } finally {
      if (!feedStopped) await feed.stop().catch(() => {});
      await service.kill("SIGTERM");
      progress(`service log kept at ${await keepLog(service.logPath)}`);
    }
  },
});
