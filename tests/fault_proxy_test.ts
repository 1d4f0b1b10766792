/**
 * Faults at ch-proxy: nginx refusing requests (503) because the service is
 * configured with a shorter spacing than the proxy's, and nginx answering 502
 * because ClickHouse behind it is unreachable or drops the connection after
 * storing an INSERT. A fault proxy between nginx and ClickHouse records every
 * request that reached ClickHouse. An unknown outcome is resolved by a check
 * on 18.16 and by a resend with the batch's deduplication token on the modern
 * server, where `system.query_log` proves the server dropped the resend.
 */
import assert from "node:assert/strict";
import type { FlushEvent } from "../lib/flusher.ts";
import { type Service, startService } from "../lib/service.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { startFaultProxy } from "../testing/fault_proxy.ts";
import {
  assertExactlyOnce,
  createWorld,
  delay,
  produceRecords,
  sameDayNow,
  storedCount,
  waitForRows,
  worldConfig,
} from "../testing/pipeline.ts";
import { assertResentWithToken, TOKEN_PATH } from "../testing/query_log.ts";
import { CLICKHOUSE_URL, clickhouseQuery } from "../testing/stack.ts";

type Event = FlushEvent & { at: number };

function progress(message: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(`  … ${message}\n`));
}

function brief(e: FlushEvent): string {
  return `${e.kind}:${e.outcome}:${e.status ?? "-"}:${e.batchId ?? "-"}`;
}

/** Waits until `test()` holds, or throws after `timeoutMs` naming `what`. */
async function waitFor(what: string, test: () => boolean | Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`Cannot see ${what} within ${timeoutMs} ms`);
    await delay(200);
  }
}

/** Waits until the service's queue is empty, then a few more slots for a wrong resend to show. */
async function drained(service: Service, landed: number, settleMs: number): Promise<void> {
  await waitFor("an empty queue", async () => {
    const s = await service.queue.stats();
    return s.queuedRows + s.sealedRows === 0 && s.landedRows === landed;
  }, 60_000);
  await delay(settleMs);
}

/** Asserts the record sets of different seeds share no id (ids are distinct within a seed only). */
function assertDisjoint(...sets: HttpLogRecord[][]): HttpLogRecord[] {
  const all = sets.flat();
  assert.equal(
    new Set(all.map((r) => r.resourceId)).size,
    all.length,
    "ids of different seeds collide",
  );
  return all;
}

Deno.test({
  name: "anonymizer stores every record once when ch-proxy refuses requests sent too early",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using fault = await startFaultProxy(new URL(CLICKHOUSE_URL).host);
    // nginx allows one request per 2 s; the service believes 500 ms.
    await using world = await createWorld({
      proxy: { rate: "30r/m", upstream: fault.hostPort },
      spacingMs: 500,
    });
    assert.equal(world.env.CLICKHOUSE_SPACING_MS, "500");
    const events: Event[] = [];
    const service = await startService(worldConfig(world), {
      onFlush: (e) => events.push({ ...e, at: Date.now() }),
    });
    let records: HttpLogRecord[] = [];
    try {
      await t.step("produce 3,000 records over 20 s while the service runs", async () => {
        ({ records } = await produceRecords(world, { count: 3_000, seed: 8_201, rate: 150 }));
      });

      await t.step("every record lands", async () => {
        assert.equal(await waitForRows(world.database, 3_000, 180_000), 3_000);
        await drained(service, 3_000, 5_000);
      });

      await t.step("each id once, every address masked", async () => {
        await assertExactlyOnce(world.database, records);
      });

      await t.step("nginx refused requests, and none of them reached ClickHouse", async () => {
        const log = await world.proxy.readAccessLog();
        const refused = log.filter((e) => e.status === 503);
        assert.ok(refused.length > 0, "no request was refused: the test did not exercise refusals");
        assert.deepEqual(refused.filter((e) => e.upstreamStatus !== ""), [], "a 503 went upstream");
        const forwarded = log.filter((e) => e.status !== 503);
        assert.deepEqual(
          forwarded.map((e) => [e.status, e.upstreamStatus]),
          forwarded.map(() => [200, "200"]),
          "requests nginx let through",
        );
        // The fault proxy sits between nginx and ClickHouse: it saw every request ClickHouse got.
        assert.equal(
          fault.connections.length,
          forwarded.length,
          "requests that reached ClickHouse",
        );
        const refusedEvents = events.filter((e) => e.outcome === "refused");
        assert.equal(
          refusedEvents.length,
          refused.length,
          "refusals the service saw vs nginx's log",
        );
        assert.ok(refusedEvents.every((e) => e.status === 503));
        const kinds: Record<string, number> = {};
        for (const e of refusedEvents) kinds[e.kind] = (kinds[e.kind] ?? 0) + 1;
        progress(
          `${log.length} requests: ${forwarded.length} forwarded, ${refused.length} refused (503): ` +
            JSON.stringify(kinds),
        );
      });

      await t.step("each batch was INSERTed once", async () => {
        const ok = events.filter((e) => e.kind === "insert" && e.outcome === "ok").map((e) =>
          String(e.batchId)
        );
        assert.equal(new Set(ok).size, ok.length, "a batch was stored by two INSERTs");
        const stored = (await clickhouseQuery(
          `SELECT DISTINCT batch_id FROM ${world.database}.http_log`,
        )).trim().split("\n");
        assert.deepEqual([...ok].sort(), stored.sort(), "INSERTed batches vs batch ids stored");
        const inserts = fault.connections.filter((c) => c.requestLine.includes("INSERT"));
        assert.equal(inserts.length, stored.length, "INSERTs that reached ClickHouse vs batches");
      });
    } finally {
      await service.stop();
    }
  },
});

Deno.test({
  name: "anonymizer stores every record once when ClickHouse is unreachable behind ch-proxy (502)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using fault = await startFaultProxy(new URL(CLICKHOUSE_URL).host);
    await using world = await createWorld({ proxy: { rate: "120r/m", upstream: fault.hostPort } });
    const events: Event[] = [];
    const service = await startService(worldConfig(world), {
      onFlush: (e) => events.push({ ...e, at: Date.now() }),
    });
    const now = sameDayNow();
    let records: HttpLogRecord[] = [];
    try {
      await t.step("1,000 records land while the upstream is up", async () => {
        ({ records } = await produceRecords(world, { count: 1_000, seed: 8_301, now }));
        assert.equal(await waitForRows(world.database, 1_000, 120_000), 1_000);
        // Rows show in http_log before ClickHouse has written the views and answered, so the
        // INSERT is done only once the service has it: otherwise its answer could arrive after
        // the upstream goes down and be taken for the first request of the outage.
        await drained(service, 1_000, 0);
      });

      let downAt = 0;
      let lostId: bigint | undefined;
      await t.step("with the upstream down, nginx answers 502 and nothing is stored", async () => {
        fault.mode = "down";
        downAt = Date.now();
        const more = await produceRecords(world, { count: 1_000, seed: 8_302, now: now + 1 });
        records = assertDisjoint(records, more.records);
        // Down for 15 s at least, and long enough for ten requests to fail.
        await waitFor("ten requests failing with 502", () => {
          const failed = events.filter((e) => e.at > downAt && e.status === 502).length;
          return failed >= 10 && Date.now() - downAt >= 15_000;
        }, 60_000);
        assert.equal(await storedCount(world.database), 1_000);
        const failed = events.filter((e) => e.at > downAt);
        assert.ok(
          failed.every((e) => e.outcome === "unknown" && e.status === 502),
          failed.map(brief).join(),
        );
        // One INSERT whose outcome is unknown, then checks (18.16) or token resends (modern)
        // until one gets an answer.
        assert.equal(failed[0]!.kind, "insert");
        assert.ok(
          failed.slice(1).every((e) => e.kind === (TOKEN_PATH ? "insert" : "check")),
          failed.map(brief).join(),
        );
        const log = (await world.proxy.readAccessLog()).filter((e) => e.msec * 1000 > downAt);
        assert.ok(log.length >= 10);
        assert.deepEqual(log.map((e) => [e.status, e.upstreamStatus]), log.map(() => [502, "502"]));
        const reached = fault.connections.filter((c) => c.at > downAt && c.mode !== "down");
        assert.deepEqual(reached, [], "a request reached ClickHouse while it was down");
        progress(`${failed.length} requests failed with 502 in ${Date.now() - downAt} ms`);
      });

      await t.step(
        TOKEN_PATH
          ? "with the upstream back, the batch is resent with its token"
          : "with the upstream back, the check finds nothing and the batch is sent",
        async () => {
          const upAt = Date.now();
          fault.mode = "pass";
          assert.equal(await waitForRows(world.database, 2_000, 120_000), 2_000);
          // As in the first step: the answer to this INSERT must not arrive after the drop rule
          // below, where it would be taken for the first INSERT of that step.
          await drained(service, 2_000, 0);
          const after = events.filter((e) => e.at > upAt);
          const id = events.find((e) => e.at > downAt)!.batchId;
          assert.deepEqual(
            after.filter((e) => e.batchId === id).map((e) => [e.kind, e.outcome]),
            TOKEN_PATH ? [["insert", "ok"]] : [["check", "ok"], ["insert", "ok"]],
            `requests for batch ${id} once the upstream was back`,
          );
        },
      );

      await t.step(
        TOKEN_PATH
          ? "an INSERT stored but answered 502 is resent with its token and dropped by the server"
          : "an INSERT stored but answered 502 is confirmed by a check, not resent",
        async () => {
          const dropAt = Date.now();
          fault.faultNext("drop", "INSERT");
          const more = await produceRecords(world, { count: 1_000, seed: 8_303, now: now + 2 });
          records = assertDisjoint(records, more.records);
          assert.equal(await waitForRows(world.database, 3_000, 120_000), 3_000);
          await drained(service, 3_000, 5 * world.spacingMs);
          const lost = events.find((e) => e.at > dropAt && e.kind === "insert");
          assert.ok(
            lost !== undefined && lost.outcome === "unknown" && lost.status === 502,
            `first INSERT after the drop rule: ${lost === undefined ? "none" : brief(lost)}`,
          );
          lostId = lost.batchId;
          assert.deepEqual(
            events.filter((e) => e.batchId === lost.batchId).map((e) => [e.kind, e.outcome]),
            [["insert", "unknown"], TOKEN_PATH ? ["insert", "ok"] : ["check", "ok"]],
            `requests for batch ${lost.batchId}`,
          );
          if (TOKEN_PATH) {
            await assertResentWithToken((sql) => clickhouseQuery(sql), lost.batchId!);
          }
          const held = fault.connections.find((c) => c.mode === "drop");
          assert.ok(held?.upstreamDoneAt !== null, "ClickHouse answered the dropped INSERT");
        },
      );

      await t.step("each id once, every address masked", async () => {
        await assertExactlyOnce(world.database, records);
      });

      await t.step("ClickHouse received exactly one INSERT per stored batch", async () => {
        const stored = (await clickhouseQuery(
          `SELECT DISTINCT batch_id FROM ${world.database}.http_log`,
        )).trim().split("\n");
        const inserts = fault.connections.filter((c) =>
          c.mode !== "down" && c.requestLine.includes("INSERT")
        );
        // The token path resends the dropped INSERT, and the server drops the resend.
        assert.equal(
          inserts.length,
          stored.length + (TOKEN_PATH ? 1 : 0),
          "INSERTs that reached ClickHouse vs batches",
        );
        // Stored by an answered INSERT, or by the dropped one (confirmed by its check): each once.
        const ids = events.filter((e) => e.kind === "insert" && e.outcome === "ok").map((e) =>
          String(e.batchId)
        );
        assert.ok(lostId !== undefined, "the dropped INSERT's batch is known");
        if (!TOKEN_PATH) ids.push(String(lostId));
        assert.equal(new Set(ids).size, ids.length, `a batch was stored by two INSERTs: ${ids}`);
        assert.deepEqual(ids.sort(), stored.sort(), "batches stored vs batch ids in http_log");
        progress(`${stored.length} batches; requests: ${events.map(brief).join(" ")}`);
      });
    } finally {
      await service.stop();
    }
  },
});
