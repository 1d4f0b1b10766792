/**
 * Two service instances in one consumer group on the real stack: a second
 * instance joins mid-stream, later one instance is killed with SIGKILL and
 * started again on its KV file, while records are produced all along.
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
  joinedPartitions,
  type ServiceProcess,
  spawnService,
  storedCount,
  until,
  waitForRows,
} from "../testing/pipeline.ts";
import { KAFKA_BROKERS, topicMessageCount } from "../testing/stack.ts";

/** Both instances share the proxy's per-address budget: 1 request per 250 ms. */
const PROXY_RATE = "240r/m";
/** Each instance alone keeps well inside it: 1 request per 1.1 s (spacing + 100 ms margin). */
const SPACING_MS = 1_000;

/** The latest partition sets of `a` and `b` once each has at least `joinsA`/`joinsB` joins. */
function joinsAtLeast(a: ServiceProcess, joinsA: number, b: ServiceProcess, joinsB: number) {
  return (): [number[], number[]] | undefined => {
    const ja = joinedPartitions(a.log());
    const jb = joinedPartitions(b.log());
    if (a.hasExited || b.hasExited) {
      throw new Error(
        `an instance exited (${a.name}: ${a.hasExited}, ${b.name}: ${b.hasExited})`,
      );
    }
    return ja.length >= joinsA && jb.length >= joinsB ? [ja.at(-1)!, jb.at(-1)!] : undefined;
  };
}

/** The instance id the service logs at start. */
function instanceId(log: string): string {
  const m = /anonymizer "(anonymizer-[0-9a-f-]+)" consuming/.exec(log);
  assert.ok(m, "no start line with the instance id");
  return m[1]!;
}

/** Asserts two assignments split partitions 0..2 between them, each getting some. */
function assertSplit([a, b]: [number[], number[]]): void {
  assert.ok(a.length > 0 && b.length > 0, `both instances own partitions: ${a} / ${b}`);
  assert.deepEqual(
    [...a, ...b].sort(),
    [0, 1, 2],
    `the partitions are split without overlap: ${a} / ${b}`,
  );
}

Deno.test({
  name:
    "anonymizer stores every record exactly once while two instances rebalance, one killed and restarted",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld({ proxy: { rate: PROXY_RATE }, spacingMs: SPACING_MS });
    const kvA = { KV_PATH: `${world.dir}/a/queue.kv` };
    const kvB = { KV_PATH: `${world.dir}/b/queue.kv` };
    const feed = await startFeed(KAFKA_BROKERS, world.topic, { rate: 200, seed: 777 });
    const children: ServiceProcess[] = [];
    const spawn = async (name: string, overrides: Record<string, string>) => {
      const child = await spawnService(world, { name, overrides });
      children.push(child);
      return child;
    };
    let records: HttpLogRecord[] = [];
    let feedStopped = false;
    try {
      const a = await spawn("a", kvA);
      const alone = await t.step(
        "instance a alone takes every partition and stores rows",
        async () => {
          const [ja] = await until("a joining", () => {
            const j = joinedPartitions(a.log());
            return j.length > 0 ? j : undefined;
          });
          assert.deepEqual(ja, [0, 1, 2]);
          await until(
            "a storing rows",
            () => flushedRows(a.log()).length > 0 || undefined,
          );
        },
      );
      if (!alone) return;

      const b = await spawn("b", kvB);
      let flushedA = 0;
      const joined = await t.step(
        "instance b joins mid-stream and the partitions are split",
        async () => {
          const split = await until("the rebalance after b joined", joinsAtLeast(a, 2, b, 1));
          progress(`after b joined: a owns ${split[0]}, b owns ${split[1]}`);
          assertSplit(split);
          flushedA = flushedRows(a.log()).length;
        },
      );
      if (!joined) return;

      const both = await t.step("both instances store rows after the rebalance", async () => {
        await until("a and b both flushing", () => {
          const [fa, fb] = [flushedRows(a.log()), flushedRows(b.log())];
          return fa.length > flushedA + 2 && fb.length > 2 ? true : undefined;
        });
      });
      if (!both) return;

      let storedAtKill = 0;
      const killed = await t.step(
        "instance a is killed with SIGKILL and b takes over every partition",
        async () => {
          storedAtKill = await storedCount(world.database);
          const joinsB = joinedPartitions(b.log()).length;
          const status = await a.kill("SIGKILL");
          assert.equal(status.signal, "SIGKILL");
          progress(
            `killed a with ${feed.acked.length} records acknowledged, ${storedAtKill} stored`,
          );
          // The coordinator notices only when a's session times out (30 s).
          const jb = await until("b owning every partition", () => {
            const j = joinedPartitions(b.log());
            return j.length > joinsB && j.at(-1)!.length === 3 ? j.at(-1) : undefined;
          }, 120_000);
          assert.deepEqual(jb, [0, 1, 2]);
          const flushedB = flushedRows(b.log()).length;
          await until(
            "b flushing after the takeover",
            () => flushedRows(b.log()).length > flushedB + 1 || undefined,
          );
        },
      );
      if (!killed) return;

      const a2 = await spawn("a-restarted", kvA);
      const rejoined = await t.step(
        "instance a restarts on its KV file and the partitions are split again",
        async () => {
          const joinsB = joinedPartitions(b.log()).length;
          const split = await until(
            "the rebalance after a restarted",
            joinsAtLeast(a2, 1, b, joinsB + 1),
          );
          progress(`after a restarted: a owns ${split[0]}, b owns ${split[1]}`);
          assertSplit(split);
          // Same KV file, same instance id: the commit metadata of the killed a is recognised as its own.
          const [idA, idA2, idB] = [a, a2, b].map((c) => instanceId(c.log()));
          assert.equal(idA2, idA);
          assert.notEqual(idB, idA);
          await until(
            "the restarted a flushing",
            () => flushedRows(a2.log()).length > 0 || undefined,
          );
        },
      );
      if (!rejoined) return;

      await t.step("every acknowledged record lands", async () => {
        await delay(10_000);
        records = await feed.stop();
        feedStopped = true;
        progress(`feed stopped at ${records.length} records`);
        // Pending rows of a revoked partition wait for the one-minute watchdog.
        assert.equal(await waitForRows(world.database, records.length, 300_000), records.length);
        await delay(5_000);
      });

      await t.step("Kafka holds each produced record once (the premise of the check)", async () => {
        assert.equal(await topicMessageCount(world.topic), records.length);
      });

      await t.step("each id is stored once, every address masked", async () => {
        await assertExactlyOnce(world.database, records);
      });

      await t.step(
        "every instance stored rows; refusals of the shared proxy budget never reached ClickHouse",
        async () => {
          const rows = children.map((c) => flushedRows(c.log()));
          for (const [i, c] of children.entries()) {
            const r = rows[i]!;
            progress(`${c.name}: ${r.length} batches, ${r.reduce((x, y) => x + y, 0)} rows`);
            assert.ok(r.length > 0, `${c.name} flushed no batch`);
          }
          const log = await world.proxy.readAccessLog();
          const refused = log.filter((e) => e.status === 503);
          progress(`proxy: ${log.length} requests, ${refused.length} refused with 503`);
          assert.deepEqual(
            log.filter((e) => e.status !== 200 && e.status !== 503).map((e) => e.status),
            [],
          );
          assert.deepEqual(
            refused.filter((e) => e.upstreamStatus !== "").map((e) => e.upstreamStatus),
            [],
          );
        },
      );

      await t.step("both running instances stop cleanly on SIGTERM", async () => {
        for (const c of [a2, b]) await assertStopsCleanly(c);
      });
    } finally {
      if (!feedStopped) await feed.stop().catch(() => {});
      for (const c of children) {
        await c.kill("SIGTERM");
        progress(`${c.name} log kept at ${await keepLog(c.logPath)}`);
      }
    }
  },
});
