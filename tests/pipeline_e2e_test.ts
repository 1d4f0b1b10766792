/**
 * End to end on the real stack: Kafka → anonymizer → ch-proxy → ClickHouse.
 */
import assert from "node:assert/strict";
import { startService } from "../lib/service.ts";
import {
  assertExactlyOnce,
  createWorld,
  produceRecords,
  waitForRows,
  worldConfig,
} from "../testing/pipeline.ts";

Deno.test({
  name: "startService() stores 20,000 produced records exactly once with masked addresses",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld();
    let records: Awaited<ReturnType<typeof produceRecords>>["records"] = [];
    await t.step("produce 20,000 records with distinct resource ids", async () => {
      ({ records } = await produceRecords(world, { count: 20_000, seed: 20_000 }));
    });
    const service = await startService(worldConfig(world));
    try {
      await t.step("every record lands", async () => {
        assert.equal(await waitForRows(world.database, 20_000, 180_000), 20_000);
      });
      await t.step("each id once, every address masked", async () => {
        await assertExactlyOnce(world.database, records);
      });
      await t.step("the proxy never refused a request", async () => {
        const log = await world.proxy.readAccessLog();
        assert.ok(log.length > 0);
        assert.deepEqual(log.filter((e) => e.status !== 200).map((e) => e.status), []);
      });
    } finally {
      await service.stop();
    }
  },
});
