/**
 * Graceful shutdown on the real stack: SIGTERM mid-stream exits 0 within the
 * grace period and loses nothing; a flush still in flight when the grace
 * period ends is cut off, and its batch lands exactly once after a restart
 * (found stored by a check on 18.16, resent with its token and dropped on the
 * modern server).
 *
 * Replay the random stop times with `FAULT_SEED=<seed printed on stderr>`.
 */
import assert from "node:assert/strict";
import { startFaultProxy } from "../testing/fault_proxy.ts";
import { evictGroupMembers } from "../testing/kafka_group.ts";
import {
  assertExactlyOnce,
  createWorld,
  delay,
  produceRecords,
  type ServiceProcess,
  spawnService,
  storedCount,
  waitForRows,
} from "../testing/pipeline.ts";
import { faultSeed, seededRandom } from "../testing/seeded_random.ts";
import { assertResentWithToken, TOKEN_PATH } from "../testing/query_log.ts";
import { CLICKHOUSE_URL, clickhouseQuery } from "../testing/stack.ts";
import { progress } from "../testing/progress.ts";

/** Sends SIGTERM and returns the exit status and how long the exit took, ms. */
async function terminate(svc: ServiceProcess): Promise<{ status: Deno.CommandStatus; ms: number }> {
  const t0 = performance.now();
  svc.child.kill("SIGTERM");
  const status = await svc.child.status;
  const ms = Math.round(performance.now() - t0);
  await svc.exited;
  return { status, ms };
}

const isInsert = (line: string) => /[?&]query=INSERT/.test(line);

Deno.test({
  name:
    "anonymizer exits 0 within SHUTDOWN_GRACE_MS on SIGTERM mid-stream and loses nothing across restarts",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const COUNT = 15_000;
    const RATE = 500;
    const GRACE_MS = 5_000;
    const STOPS = 3;
    const seed = faultSeed();
    progress(`shutdown: seed ${seed} (replay with FAULT_SEED=${seed})`);
    const rng = seededRandom(seed);
    await using world = await createWorld({
      env: { SHUTDOWN_GRACE_MS: String(GRACE_MS), LOG_LEVEL: "debug" },
    });
    const producing = produceRecords(world, { count: COUNT, seed, rate: RATE });
    producing.catch(() => {});

    await t.step(
      `SIGTERM at ${STOPS} random moments while records arrive at ${RATE}/s`,
      async () => {
        for (let i = 0; i < STOPS; i++) {
          const svc = await spawnService(world, { name: `stop-${i}` });
          try {
            await svc.waitForLog(/Joined group/, { timeoutMs: 60_000 });
            const wait = Math.round(1_000 + rng() * 6_000);
            await delay(wait);
            const before = await storedCount(world.database);
            const { status, ms } = await terminate(svc);
            progress(
              `  stop ${
                i + 1
              }/${STOPS}: SIGTERM ${wait} ms after joining, exit code ${status.code} ` +
                `after ${ms} ms; ${before} rows stored before`,
            );
            assert.equal(status.code, 0, svc.log().slice(-3000));
            assert.ok(ms <= GRACE_MS + 5_000, `exit took ${ms} ms, grace is ${GRACE_MS} ms`);
            assert.match(svc.log(), /Stopped cleanly/);
          } finally {
            await svc.kill("SIGKILL");
          }
        }
      },
    );

    await t.step("after a last restart every record lands exactly once", async () => {
      const svc = await spawnService(world, { name: "final" });
      try {
        const { records } = await producing;
        assert.equal(await waitForRows(world.database, COUNT, 120_000), COUNT);
        await assertExactlyOnce(world.database, records);
        const { status } = await terminate(svc);
        assert.equal(status.code, 0, svc.log().slice(-3000));
      } finally {
        await svc.kill("SIGKILL");
      }
    });
  },
});

Deno.test({
  name:
    "anonymizer cuts off a flush still in flight when SHUTDOWN_GRACE_MS ends, and the batch lands once after restart",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const COUNT = 5_000;
    const GRACE_MS = 2_000;
    // The version check goes first: its answer passes at once.
    await using slow = await startFaultProxy(new URL(CLICKHOUSE_URL).host, { delayMs: 120_000 });
    await using world = await createWorld({
      proxy: { upstream: slow.hostPort, rate: "120r/m" },
      env: {
        SHUTDOWN_GRACE_MS: String(GRACE_MS),
        CLICKHOUSE_TIMEOUT_MS: "300000",
        LOG_LEVEL: "debug",
      },
    });
    const { records } = await produceRecords(world, { count: COUNT, seed: 77 });
    const svc = await spawnService(world, { name: "slow" });
    let batch = { id: "", rows: 0 };
    try {
      await t.step("ClickHouse applies an INSERT whose answer is held back", async () => {
        await slow.waitFor((e) => e.status === 200 && e.state === "delivered", 30_000);
        slow.mode = "delay";
        const sent = await svc.waitForLog(/Sending INSERT of batch "(\d+)": (\d+) rows/, {
          timeoutMs: 60_000,
        });
        batch = { id: sent.match[1]!, rows: Number(sent.match[2]) };
        await slow.waitFor((e) => isInsert(e.requestLine) && e.state === "held", 30_000);
        const stored = await clickhouseQuery(
          `SELECT count() FROM ${world.database}.http_log WHERE batch_id = ${batch.id}`,
        );
        assert.equal(Number(stored.trim()), batch.rows);
      });

      await t.step(
        `SIGTERM exits 0 once the ${GRACE_MS} ms grace period ends, not when the answer comes`,
        async () => {
          const { status, ms } = await terminate(svc);
          progress(
            `  exit code ${status.code} after ${ms} ms with an INSERT answer held back for 120 s`,
          );
          assert.equal(status.code, 0, svc.log().slice(-3000));
          assert.ok(
            ms >= GRACE_MS,
            `exit after ${ms} ms: the request was not given its grace period`,
          );
          assert.ok(
            ms <= GRACE_MS + 3_000,
            `exit after ${ms} ms: the request ran past the grace period`,
          );
          assert.match(
            svc.log(),
            new RegExp(`Request "insert" for batch "${batch.id}" failed \\("unknown"\\)`),
          );
          assert.match(svc.log(), /Stopped cleanly/);
          const held = slow.connections.filter((e) => isInsert(e.requestLine));
          assert.deepEqual(held.map((e) => e.state), ["dropped"]);
        },
      );
    } finally {
      await svc.kill("SIGKILL");
    }

    await t.step(
      TOKEN_PATH
        ? "after a restart the batch is resent with its token and dropped, and every row is there once"
        : "after a restart the batch is found stored, not sent again, and every row is there once",
      async () => {
        slow.mode = "pass";
        const again = await spawnService(world, { name: "again" });
        try {
          assert.equal(await waitForRows(world.database, COUNT, 120_000), COUNT);
          if (TOKEN_PATH) {
            await again.waitForLog(new RegExp(`Flushed batch "${batch.id}"`), {
              timeoutMs: 10_000,
            });
            await assertResentWithToken((sql) => clickhouseQuery(sql), batch.id);
          } else {
            await again.waitForLog(
              new RegExp(
                `Batch "${batch.id}" was stored before its outcome was lost; not resending`,
              ),
              { timeoutMs: 10_000 },
            );
          }
          const stored = await clickhouseQuery(
            `SELECT count() FROM ${world.database}.http_log WHERE batch_id = ${batch.id}`,
          );
          assert.equal(Number(stored.trim()), batch.rows);
          await assertExactlyOnce(world.database, records);
          const { status } = await terminate(again);
          assert.equal(status.code, 0, again.log().slice(-3000));
        } finally {
          await again.kill("SIGKILL");
        }
      },
    );
  },
});

Deno.test({
  name: "anonymizer exits 0 on SIGTERM while it still waits to join its Kafka group after a crash",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const COUNT = 5_000;
    const GRACE_MS = 5_000;
    await using slow = await startFaultProxy(new URL(CLICKHOUSE_URL).host, {
      mode: "delay",
      delayMs: 1_000,
    });
    await using world = await createWorld({
      proxy: { upstream: slow.hostPort, rate: "120r/m" },
      // Sharing slots, an instance sends nothing until it joins (README "Several instances");
      // paced alone, its flusher works during the join, which is the shutdown this test needs.
      env: {
        SHUTDOWN_GRACE_MS: String(GRACE_MS),
        LOG_LEVEL: "debug",
        CLICKHOUSE_SLOT_SHARING: "off",
      },
    });
    const { records } = await produceRecords(world, { count: COUNT, seed: 99 });

    await t.step("a first instance queues the records and is killed with SIGKILL", async () => {
      const crashed = await spawnService(world, { name: "crashed" });
      await crashed.waitForLog(/Joined group/, { timeoutMs: 60_000 });
      await crashed.waitForLog(/Sealed batch/, { timeoutMs: 60_000 });
      const status = await crashed.kill("SIGKILL");
      assert.equal(status.signal, "SIGKILL");
    });

    await t.step(
      "its replacement, still joining (the dead member holds the group), gets SIGTERM",
      async () => {
        const svc = await spawnService(world, { name: "joining" });
        try {
          // The flusher runs during the join: it resolves the batch the crash left behind.
          await svc.waitForLog(/Batch "\d+" was stored before|Sending INSERT|Flushed batch/, {
            timeoutMs: 30_000,
          });
          await delay(500);
          assert.doesNotMatch(
            svc.log(),
            /Joined group/,
            "precondition: it joined its group already",
          );
          const { status, ms } = await terminate(svc);
          progress(
            `  SIGTERM during the group join: exit code ${status.code}, signal ${status.signal}, after ${ms} ms`,
          );
          assert.equal(
            status.signal,
            null,
            `killed by ${status.signal} instead of stopping; log:\n${svc.log().slice(-2000)}`,
          );
          assert.equal(status.code, 0);
          assert.ok(ms <= GRACE_MS + 5_000, `exit took ${ms} ms`);
        } finally {
          await svc.kill("SIGKILL");
        }
      },
    );

    await t.step("a last instance stores every record exactly once", async () => {
      await evictGroupMembers(world.group);
      const svc = await spawnService(world, { name: "last" });
      try {
        assert.equal(await waitForRows(world.database, COUNT, 120_000), COUNT);
        await assertExactlyOnce(world.database, records);
      } finally {
        await svc.kill("SIGTERM");
      }
    });
  },
});
