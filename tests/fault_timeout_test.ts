/**
 * Fault: the response to an INSERT times out after ClickHouse committed it.
 * Neither http_log nor the totals views may count a row twice. On 18.16 the
 * flusher resolves the unknown outcome with one SELECT by batch id instead of
 * resending; on the modern server it resends with the batch's deduplication
 * token, and `system.query_log` proves the server dropped the resend. On the
 * modern server it runs twice: on the stack's server, and on a private one
 * whose defaults are the opposite of what anonymizer relies on, which proves
 * every INSERT sets those settings itself.
 */
import assert from "node:assert/strict";
import type { FlushEvent } from "../lib/flusher.ts";
import { startService } from "../lib/service.ts";
import { type ClickHouseServer, startClickHouseServer } from "../testing/clickhouse_server.ts";
import { startFaultProxy } from "../testing/fault_proxy.ts";
import {
  assertExactlyOnce,
  createWorld,
  delay,
  produceRecords,
  sameDayNow,
  waitForRows,
  worldConfig,
} from "../testing/pipeline.ts";
import { assertResentWithToken, TOKEN_PATH } from "../testing/query_log.ts";
import { CLICKHOUSE_URL, clickhouseQuery } from "../testing/stack.ts";
import { assertTotalsMatch } from "../testing/totals.ts";

const TIMEOUT_MS = 1_500;
const DELAY_MS = 4_000;

function progress(message: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(`  … ${message}\n`));
}

/**
 * Defaults the modern server gets in the second run: every one the opposite of
 * what an exactly-once INSERT needs.
 */
const HOSTILE_DEFAULTS = {
  async_insert: "1",
  wait_for_async_insert: "0",
  insert_deduplicate: "0",
  deduplicate_blocks_in_dependent_materialized_views: "0",
};

Deno.test({
  name:
    "anonymizer stores an INSERT whose response timed out once, in http_log and every totals view",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: (t) => timeoutScenario(t, null),
});

Deno.test({
  name:
    "anonymizer stores a timed-out INSERT once on a modern server whose insert defaults are the opposite",
  // 18.16 has none of these settings: neither asynchronous inserts nor deduplication of plain tables.
  ignore: !TOKEN_PATH,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using server = await startClickHouseServer({
      kind: "modern",
      defaults: HOSTILE_DEFAULTS,
    });
    await t.step("the server's defaults are the hostile ones", async () => {
      const names = Object.keys(HOSTILE_DEFAULTS).map((n) => `'${n}'`).join(", ");
      const rows = (await server.query(
        `SELECT name, value FROM system.settings WHERE name IN (${names}) ORDER BY name FORMAT TabSeparated`,
      )).trim().split("\n").map((line) => line.split("\t"));
      assert.deepEqual(Object.fromEntries(rows), HOSTILE_DEFAULTS);
    });
    await timeoutScenario(t, server);
  },
});

async function timeoutScenario(t: Deno.TestContext, server: ClickHouseServer | null) {
  const url = server?.url ?? CLICKHOUSE_URL;
  const query = (sql: string) => clickhouseQuery(sql, { url });
  {
    await using fault = await startFaultProxy(new URL(url).host, {
      delayMs: DELAY_MS,
    });
    // Only the first INSERT is held; everything else, the check included, passes.
    fault.faultNext("delay", "INSERT");
    await using world = await createWorld({
      proxy: { rate: "120r/m", upstream: fault.hostPort },
      env: { CLICKHOUSE_TIMEOUT_MS: String(TIMEOUT_MS), CLICKHOUSE_DEDUP: "auto" },
      ...(server === null ? {} : { clickhouse: server }),
    });
    const events: Array<FlushEvent & { at: number }> = [];
    let records: Awaited<ReturnType<typeof produceRecords>>["records"] = [];
    const now = sameDayNow();

    await t.step("produce 2,000 records", async () => {
      ({ records } = await produceRecords(world, { count: 2_000, seed: 7_101, now }));
    });
    const service = await startService(worldConfig(world), {
      onFlush: (e) => events.push({ ...e, at: Date.now() }),
    });
    try {
      await t.step("the first INSERT times out and its rows land all the same", async () => {
        assert.equal(await waitForRows(world.database, 2_000, 120_000, { url }), 2_000);
        const timedOut = events.filter((e) => e.kind === "insert" && e.outcome === "unknown");
        assert.equal(timedOut.length, 1, `INSERT events: ${JSON.stringify(events.map(brief))}`);
        assert.equal(timedOut[0]!.code, "timeout", timedOut[0]!.error);
        const version = service.status().flusher.serverVersion ?? "";
        assert.equal(version.startsWith("18.16."), !TOKEN_PATH, `server version ${version}`);
      });

      await t.step("produce 1,000 more records, which land by a plain INSERT", async () => {
        const more = await produceRecords(world, {
          count: 1_000,
          seed: 7_102,
          now: now + 1,
        });
        records = [...records, ...more.records];
        // Ids are distinct within one seed's sequence only; these two seeds never collide.
        assert.equal(
          new Set(records.map((r) => r.resourceId)).size,
          3_000,
          "ids of seeds 7101 and 7102",
        );
        assert.equal(await waitForRows(world.database, 3_000, 120_000, { url }), 3_000);
      });

      await t.step("the queue drains and nothing is sent again", async () => {
        const deadline = Date.now() + 30_000;
        let stats = await service.queue.stats();
        while (stats.queuedRows + stats.sealedRows > 0 && Date.now() < deadline) {
          await delay(250);
          stats = await service.queue.stats();
        }
        assert.equal(stats.queuedRows + stats.sealedRows, 0, JSON.stringify(stats));
        assert.equal(stats.landedRows, 3_000);
        // Several slots pass: a wrong resend would land within them.
        await delay(5 * world.spacingMs + DELAY_MS);
        progress(`queue stats: ${JSON.stringify(stats)}`);
      });

      await t.step("each id once, every address masked", async () => {
        await assertExactlyOnce(world.database, records, { url });
      });

      await t.step("every totals view counts each row exactly once", async () => {
        const raw = (await query(
          `SELECT count(), sum(bytes_sent), sum(request_time_milli) FROM ${world.database}.http_log`,
        )).trim();
        assert.match(raw, /^3000\t\d+\t\d+$/);
        const compared = await assertTotalsMatch(query, world.database);
        for (const c of compared) {
          progress(`${c.view} by (${c.keys}): ${c.totals} over ${c.groups} groups`);
        }
      });

      await t.step(
        TOKEN_PATH
          ? "the timed-out batch was resent with its token, and the server dropped the resend"
          : "the timed-out batch was resolved by a check, not resent",
        async () => {
          const timedOut = events.find((e) => e.kind === "insert" && e.outcome === "unknown")!;
          const id = timedOut.batchId!;
          const later = events.filter((e) => e.at >= timedOut.at && e.batchId === id);
          assert.deepEqual(
            later.map((e) => [e.kind, e.outcome]),
            [["insert", "unknown"], TOKEN_PATH ? ["insert", "ok"] : ["check", "ok"]],
            `requests for batch ${id} from its INSERT on`,
          );
          if (TOKEN_PATH) await assertResentWithToken(query, id);
          const inserts = events.filter((e) => e.kind === "insert");
          const ids = inserts.map((e) => String(e.batchId));
          assert.equal(
            new Set(ids).size,
            ids.length - (TOKEN_PATH ? 1 : 0),
            `INSERTs per batch: ${ids}`,
          );
          const stored = (await query(
            `SELECT DISTINCT batch_id FROM ${world.database}.http_log ORDER BY batch_id`,
          )).trim().split("\n");
          assert.deepEqual(
            [...new Set(ids)].sort(),
            [...stored].sort(),
            "INSERTed batches vs batch ids stored",
          );
          progress(`${stored.length} batches; requests: ${JSON.stringify(events.map(brief))}`);
        },
      );

      await t.step(
        TOKEN_PATH
          ? "ClickHouse received one INSERT per batch and the resend after the lost one"
          : "ClickHouse received one INSERT per batch and the check after the lost one",
        async () => {
          const batches = Number((await query(
            `SELECT uniqExact(batch_id) FROM ${world.database}.http_log`,
          )).trim());
          // The fault proxy sits between nginx and ClickHouse: it saw every request ClickHouse got.
          const reached = fault.connections.filter((c) => c.requestLine !== "");
          const inserts = reached.filter((c) => c.requestLine.includes("INSERT"));
          assert.equal(
            inserts.length,
            batches + (TOKEN_PATH ? 1 : 0),
            "INSERTs that reached ClickHouse vs batches",
          );
          assert.equal(inserts[0]!.mode, "delay");
          assert.ok(inserts[0]!.upstreamDoneAt !== null, "ClickHouse answered the held INSERT");
          const id = String(events.find((e) => e.outcome === "unknown")!.batchId);
          const checks = reached.filter((c) =>
            c.bodyPreview.startsWith(`SELECT (SELECT count() FROM ${world.database}.http_log`) &&
            c.bodyPreview.includes(`batch_id = ${id}`)
          );
          if (TOKEN_PATH) {
            assert.equal(checks.length, 0, "a token resend needs no check SELECT");
            assert.match(inserts[1]!.requestLine, new RegExp(`insert_deduplication_token=${id}&`));
          } else {
            assert.equal(checks.length, 1, "check SELECTs for the timed-out batch");
            assert.ok(checks[0]!.at > inserts[0]!.at, "the check came after the held INSERT");
            assert.ok(
              inserts.slice(1).every((c) => c.at > checks[0]!.at),
              "no INSERT between the held one and its check",
            );
          }

          // nginx's view: the held INSERT ended with 499 (the client gave up), every
          // other INSERT was answered by ClickHouse with 200, and the check followed.
          const log = await world.proxy.readAccessLog();
          const started = (e: (typeof log)[number]) => e.msec - e.requestTime;
          const logged = log.filter((e) => e.uri.includes("INSERT")).sort((a, b) =>
            started(a) - started(b)
          );
          assert.deepEqual(
            logged.map((e) => [e.status, e.upstreamStatus]),
            [[499, "-"], ...Array.from({ length: inserts.length - 1 }, () => [200, "200"])],
            "INSERTs in the access log (status, upstream status)",
          );
          const afterHeld = log.filter((e) => started(e) > started(logged[0]!));
          assert.ok(
            afterHeld.length > 0 && afterHeld[0]!.uri.includes("INSERT") === TOKEN_PATH &&
              afterHeld[0]!.upstreamStatus === "200",
            `the request after the held INSERT is the ${TOKEN_PATH ? "resend" : "check"}: ${
              JSON.stringify(afterHeld[0])
            }`,
          );
          assert.deepEqual(log.filter((e) => e.status === 503), [], "the proxy refused a request");
        },
      );
    } finally {
      await service.stop();
    }
  }
}

function brief(e: FlushEvent): string {
  return `${e.kind}:${e.outcome}:${e.batchId ?? "-"}:${e.rows ?? "-"}`;
}
