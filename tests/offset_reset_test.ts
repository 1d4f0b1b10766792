/**
 * KAFKA_OFFSET_RESET decides where a consumer group without committed
 * offsets starts: earliest, latest, or the first message at or after a time.
 */
import assert from "node:assert/strict";
import { startService } from "../lib/service.ts";
import { clickhouseQuery } from "../testing/stack.ts";
import {
  createWorld,
  delay,
  produceRecords,
  waitForRows,
  worldConfig,
} from "../testing/pipeline.ts";

async function storedIds(database: string): Promise<Set<string>> {
  const text = await clickhouseQuery(`SELECT resource_id FROM ${database}.http_log`);
  return new Set(text.trim().split("\n").filter((l) => l !== ""));
}

Deno.test({
  name: "KAFKA_OFFSET_RESET starts a new group at earliest, latest or a time",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld();
    const { records: before } = await produceRecords(world, { count: 300, seed: 1 });
    await delay(1_500);
    const cut = Date.now();
    await delay(1_500);
    const { records: after } = await produceRecords(world, { count: 200, seed: 2 });
    const ids = (rs: typeof before) => new Set(rs.map((r) => String(r.resourceId)));

    await t.step("a time: only messages written after it", async () => {
      const db = world.database;
      const service = await startService(worldConfig(world, {
        KAFKA_GROUP_ID: `${world.group}_time`,
        KAFKA_OFFSET_RESET: new Date(cut).toISOString(),
        KV_PATH: `${world.dir}/time/q.kv`,
      }));
      try {
        assert.equal(await waitForRows(db, 200, 60_000), 200);
        await delay(2_000);
        assert.deepEqual(await storedIds(db), ids(after));
      } finally {
        await service.stop();
      }
      await clickhouseQuery(`TRUNCATE TABLE ${db}.http_log`);
    });

    await t.step("latest: only messages written after the group starts", async () => {
      const service = await startService(worldConfig(world, {
        KAFKA_GROUP_ID: `${world.group}_latest`,
        KAFKA_OFFSET_RESET: "latest",
        KV_PATH: `${world.dir}/latest/q.kv`,
      }));
      try {
        await delay(3_000);
        const { records: later } = await produceRecords(world, { count: 100, seed: 3 });
        assert.equal(await waitForRows(world.database, 100, 60_000), 100);
        await delay(2_000);
        assert.deepEqual(await storedIds(world.database), ids(later));
      } finally {
        await service.stop();
      }
      await clickhouseQuery(`TRUNCATE TABLE ${world.database}.http_log`);
    });

    await t.step("earliest: everything in the topic", async () => {
      const service = await startService(worldConfig(world, {
        KAFKA_GROUP_ID: `${world.group}_earliest`,
        KV_PATH: `${world.dir}/earliest/q.kv`,
      }));
      try {
        assert.equal(await waitForRows(world.database, 600, 60_000), 600);
      } finally {
        await service.stop();
      }
    });
  },
});
