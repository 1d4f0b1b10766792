/**
 * Crash safety on the real stack: the service runs as a child process and is
 * killed with SIGKILL at a dozen seeded-random points (startup, consuming,
 * sealing, sending), some of them right after ClickHouse applied an INSERT
 * whose answer a slow link between ch-proxy and ClickHouse still holds back.
 * Every record must be stored exactly once, and the totals must equal the raw
 * counts. On 18.16 a restart resolves an unknown outcome with a check; on the
 * modern server it resends with the batch's deduplication token, and
 * `system.query_log` proves the server dropped the resend.
 *
 * Replay a run with `FAULT_SEED=<seed printed on stderr>`.
 */
import assert from "node:assert/strict";
import { openQueue } from "../lib/queue/kv_queue.ts";
import { startFaultProxy } from "../testing/fault_proxy.ts";
import { evictGroupMembers } from "../testing/kafka_group.ts";
import {
  assertExactlyOnce,
  createWorld,
  delay,
  type ServiceProcess,
  spawnService,
  storedCount,
  waitForRows,
} from "../testing/pipeline.ts";
import { openRecordFeed } from "../testing/record_feed.ts";
import { faultSeed, seededRandom } from "../testing/seeded_random.ts";
import { assertResentWithToken } from "../testing/query_log.ts";
import { CLICKHOUSE_TARGET, CLICKHOUSE_URL, clickhouseQuery } from "../testing/stack.ts";
import { assertTotalsMatch } from "../testing/totals.ts";
import { progress } from "../testing/progress.ts";

const TOTAL = 30_000;
const KILLS = 12;
const BURST = 2_000;
const BURST_RATE = 1_000;
const MIN_INSERT_KILLS = 3;
/** How long the slow link holds ClickHouse's answers. */
const HOLD_MS = 2_000;

interface Kill {
  run: number;
  mode: "insert" | "random";
  /** Ms from spawn to SIGKILL. */
  afterMs: number;
  killedAt: number;
  /** The last INSERT the killed process sent and never saw an outcome of. */
  unconfirmed: { batchId: string; rows: number } | null;
  /** Whether ClickHouse had answered that INSERT (the slow link held the answer) at the kill. */
  applied: boolean;
}

const isInsert = (line: string) => /[?&]query=INSERT/.test(line);

/** The last INSERT in `log` with neither a "Flushed" nor a failure line after it. */
function unconfirmedInsert(log: string): { batchId: string; rows: number } | null {
  const sends = [...log.matchAll(/Sending INSERT of batch "(\d+)": (\d+) rows/g)];
  const last = sends.at(-1);
  if (last === undefined) return null;
  const rest = log.slice(last.index! + last[0].length);
  const id = last[1]!;
  if (rest.includes(`Flushed batch "${id}"`) || rest.includes(`for batch "${id}" failed`)) {
    return null;
  }
  return { batchId: id, rows: Number(last[2]) };
}

Deno.test({
  name:
    "anonymizer stores every record exactly once through 12 SIGKILLs, some with an INSERT in flight",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const seed = faultSeed();
    progress(`fault_kill: seed ${seed} (replay with FAULT_SEED=${seed})`);
    const rng = seededRandom(seed);
    const plan: Array<Kill["mode"]> = Array.from(
      { length: KILLS },
      () => rng() < 0.4 ? "insert" : "random",
    );
    for (let i = 1; plan.filter((m) => m === "insert").length < MIN_INSERT_KILLS; i += 3) {
      plan[i] = "insert";
    }
    const started = Date.now();
    const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;

    await using slow = await startFaultProxy(new URL(CLICKHOUSE_URL).host, {
      mode: "delay",
      delayMs: HOLD_MS,
    });
    await using world = await createWorld({
      proxy: { upstream: slow.hostPort, rate: "120r/m" },
      env: { LOG_LEVEL: "debug" },
    });
    await using feed = await openRecordFeed(world.topic, { total: TOTAL, seed });
    const kills: Kill[] = [];
    const logs: string[] = [];

    await t.step(
      `SIGKILL the service ${KILLS} times while producing in bursts, restarting it each time`,
      async () => {
        for (let run = 0; run < KILLS; run++) {
          const mode = plan[run]!;
          const firstExchange = slow.connections.length;
          const svc: ServiceProcess = await spawnService(world, { name: `run-${run}` });
          // Records arrive over ~2 s, so a random kill often lands mid-append or mid-commit.
          const burst = delay(rng() * 3_000).then(() => feed.send(BURST, { rate: BURST_RATE }));
          const randomWait = 200 + rng() * 8_800;
          try {
            if (mode === "insert") {
              // Kill once ClickHouse has answered an INSERT of this process that the slow link still holds.
              await svc.waitForLog(/Sending INSERT of batch "\d+"/, { timeoutMs: 90_000 });
              await slow.waitFor(
                (e) => e.id > firstExchange && isInsert(e.requestLine) && e.state === "held",
                20_000,
              );
            } else {
              await delay(randomWait);
            }
          } catch (err) {
            await svc.kill("SIGKILL");
            throw err;
          }
          const killedAt = Date.now();
          const applied = slow.connections.some((e) =>
            e.id > firstExchange && isInsert(e.requestLine) && e.state === "held"
          );
          const status = await svc.kill("SIGKILL");
          assert.equal(
            status.signal,
            "SIGKILL",
            `run ${run} exited on its own (code ${status.code}):\n${svc.log().slice(-3000)}`,
          );
          await burst;
          await evictGroupMembers(world.group);
          const kill: Kill = {
            run,
            mode,
            afterMs: killedAt - svc.spawnedAt,
            killedAt,
            unconfirmed: unconfirmedInsert(svc.log()),
            applied,
          };
          kills.push(kill);
          logs.push(svc.log());
          progress(
            `  [${elapsed()}] kill ${run + 1}/${KILLS} (${mode}) ${kill.afterMs} ms after spawn: ` +
              (kill.unconfirmed === null
                ? "no INSERT in flight"
                : `INSERT of batch ${kill.unconfirmed.batchId} (${kill.unconfirmed.rows} rows) in flight, ` +
                  `${applied ? "already applied by ClickHouse" : "not answered yet"}`) +
              `; ${feed.sent} produced, ${await storedCount(world.database)} stored`,
          );
        }
      },
    );

    await t.step("after the last restart every record lands and the queue drains", async () => {
      const final = await spawnService(world, { name: "final" });
      try {
        await feed.send(TOTAL - feed.sent);
        assert.equal(feed.sent, TOTAL);
        slow.mode = "pass";
        assert.equal(await waitForRows(world.database, TOTAL, 180_000), TOTAL);
        const status = await final.kill("SIGTERM");
        logs.push(final.log());
        assert.equal(status.code, 0, final.log().slice(-3000));
        await using queue = await openQueue(world.env.KV_PATH!);
        const stats = await queue.stats();
        assert.deepEqual([stats.queuedRows, stats.sealedRows, await queue.batch()], [0, 0, null]);
        progress(
          `  [${elapsed()}] ${TOTAL} rows stored; KV reports ${stats.landedRows} landed, 0 queued`,
        );
      } finally {
        await final.kill("SIGKILL");
      }
    });

    await t.step("each id is stored once, every address masked", async () => {
      await assertExactlyOnce(world.database, feed.produced());
    });

    await t.step("the totals count every stored row once", async () => {
      await assertTotalsMatch((sql) => clickhouseQuery(sql), world.database);
    });

    await t.step(
      "a kill landed after ClickHouse applied an INSERT, and that batch was not applied again",
      async () => {
        const inFlight = kills.filter((k) => k.unconfirmed !== null);
        const applied = inFlight.filter((k) => k.applied);
        progress(
          `  ${kills.length} kills: ${inFlight.length} with an INSERT in flight, ` +
            `${applied.length} of them after ClickHouse applied it`,
        );
        assert.ok(
          applied.length >= 1,
          "no kill landed between ClickHouse applying an INSERT and the service seeing it",
        );
        const access = await world.proxy.readAccessLog();
        const later = logs.join("\n");
        let resolvedByCheck = 0;
        let resentWithToken = 0;
        for (const k of applied) {
          const { batchId, rows } = k.unconfirmed!;
          const stored = Number(
            (await clickhouseQuery(
              `SELECT count() FROM ${world.database}.http_log WHERE batch_id = ${batchId}`,
            )).trim(),
          );
          assert.equal(stored, rows, `batch ${batchId}: ${stored} rows stored, ${rows} sent once`);
          // nginx saw the killed client go away (499) while ClickHouse's answer was held back.
          const aborted = access.filter((e) =>
            e.method === "POST" && isInsert(e.uri) && e.status === 499 &&
            Math.abs(e.msec * 1000 - k.killedAt) < 2_000
          );
          assert.ok(
            aborted.length >= 1,
            `no aborted INSERT in the access log at the kill of run ${k.run}`,
          );
          if (CLICKHOUSE_TARGET.name === "modern") {
            await assertResentWithToken((sql) => clickhouseQuery(sql), batchId);
            resentWithToken++;
          } else if (
            later.includes(
              `Batch "${batchId}" was stored before its outcome was lost; not resending`,
            )
          ) {
            resolvedByCheck++;
          }
        }
        if (CLICKHOUSE_TARGET.name === "modern") {
          progress(`  ${resentWithToken} applied batches resent with their token and dropped`);
        } else {
          assert.ok(
            resolvedByCheck >= 1,
            "no restarted service resolved an applied batch by checking ClickHouse",
          );
        }
      },
    );

    await t.step("the proxy never refused a request: pacing survived the kills", async () => {
      const access = await world.proxy.readAccessLog();
      assert.deepEqual(access.filter((e) => e.status === 503).map((e) => e.msec), []);
      progress(`  [${elapsed()}] ${access.length} requests through ch-proxy; seed ${seed}`);
    });
  },
});
