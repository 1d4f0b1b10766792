/**
 * One process per queue (`KV_PATH`): a second `anonymizer run` on the same
 * queue refuses to start with one line naming `KV_PATH` and the holder's pid,
 * and a holder killed with SIGKILL does not block the next start. The holder
 * points at a Kafka port where nothing listens, so it stays in its start-up
 * retries and reaches nothing shared.
 */
import assert from "node:assert/strict";
import { type ServiceProcess, spawnService, type World } from "../testing/pipeline.ts";

/** Nothing listens on port 1; the service keeps retrying it. */
const NO_KAFKA = "127.0.0.1:1";
const WAITING =
  /Cannot connect the dead-letter producer with Kafka at KAFKA_BROKERS="?127\.0\.0\.1:1/;

/** The settings `spawnService` needs, without topics, ClickHouse or a proxy. */
async function offlineWorld(): Promise<World & { kvPath: string }> {
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-kv-lock-" });
  const kvPath = `${dir}/q/queue.kv`;
  return {
    dir,
    kvPath,
    env: {
      KAFKA_BROKERS: NO_KAFKA,
      CLICKHOUSE_URL: "http://127.0.0.1:9",
      KV_PATH: kvPath,
      METRICS_LISTEN: "",
      LOG_LEVEL: "info",
    },
    close: () => Deno.remove(dir, { recursive: true }),
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  } as unknown as World & { kvPath: string };
}

Deno.test({
  name: "anonymizer run refuses a second process on one KV_PATH, and restarts after a SIGKILL",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await offlineWorld();
    const first = await spawnService(world, { name: "first" });
    const others: ServiceProcess[] = [];
    try {
      await t.step("the first process holds the queue while it waits for Kafka", async () => {
        await first.waitForLog(WAITING, { timeoutMs: 60_000 });
        assert.equal(first.hasExited, false);
      });

      await t.step(
        "a second process refuses with one line naming KV_PATH and the pid",
        async () => {
          const second = await spawnService(world, { name: "second" });
          others.push(second);
          const status = await second.exited;
          assert.notEqual(status.code, 0, second.log());
          const lines = second.log().split("\n").filter((l) => l !== "");
          assert.equal(lines.length, 1, `exactly one line:\n${second.log()}`);
          assert.match(lines[0]!, /KV_PATH/);
          assert.ok(lines[0]!.includes(`pid ${first.child.pid}`), lines[0]);
          assert.ok(lines[0]!.includes(JSON.stringify(world.kvPath)), lines[0]);
          assert.equal(first.hasExited, false, "the holder keeps running");
        },
      );

      await t.step("after the holder dies by SIGKILL, a new process starts", async () => {
        await first.kill("SIGKILL");
        const third = await spawnService(world, { name: "third" });
        others.push(third);
        await third.waitForLog(WAITING, { timeoutMs: 60_000 });
        assert.doesNotMatch(third.log(), /KV_PATH is in use/);
      });

      await t.step("SIGTERM during the start-up retries stops it cleanly", async () => {
        const third = others.at(-1)!;
        const status = await third.kill("SIGTERM");
        assert.equal(status.code, 0, third.log());
        assert.match(third.log(), /Stopped cleanly/);
        assert.doesNotMatch(
          third.log(),
          /Uncaught|error: Uncaught|KafkaJSNumberOfRetriesExceeded\n\s+at/,
        );
      });
    } finally {
      await first.kill("SIGKILL");
      for (const o of others) await o.kill("SIGKILL");
    }
  },
});
