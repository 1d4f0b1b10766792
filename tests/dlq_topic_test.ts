/**
 * The dead-letter topic is made at start-up, not by broker auto-create:
 * created with `KAFKA_DLQ_PARTITIONS` and a bounded `KAFKA_DLQ_RETENTION_MS`,
 * or, when Kafka refuses, the service exits with one line naming the setting.
 * The age limits of validation are settings too. Only Kafka is needed:
 * ClickHouse points at a port where nothing listens.
 */
import assert from "node:assert/strict";
import { ConfigResourceTypes } from "kafkajs";
import { produce } from "../tools/produce.ts";
import { readTopic } from "../testing/bad_input.ts";
import { spawnService, until, type World } from "../testing/pipeline.ts";
import { createTopic, KAFKA_BROKERS, uniqueName, withKafkaAdmin } from "../testing/stack.ts";

const DAY_MS = 86_400_000;

/** Settings for a service on `topic` that reaches Kafka and nothing else shared. */
async function kafkaOnlyWorld(
  topic: string,
  env: Record<string, string>,
): Promise<World> {
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-dlq-topic-" });
  const remove = () => Deno.remove(dir, { recursive: true });
  return {
    dir,
    topic,
    env: {
      KAFKA_BROKERS,
      KAFKA_TOPIC: topic,
      KAFKA_GROUP_ID: `${topic}_group`,
      CLICKHOUSE_URL: "http://127.0.0.1:9",
      KV_PATH: `${dir}/q.kv`,
      METRICS_LISTEN: "",
      LOG_LEVEL: "info",
      ...env,
    },
    close: remove,
    [Symbol.asyncDispose]: remove,
  } as unknown as World;
}

Deno.test({
  name: "startService() creates a missing dead-letter topic with its partitions and retention",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const topic = await createTopic(uniqueName("dlqnew"), 1);
    const dlq = `${topic}_dead`;
    await using world = await kafkaOnlyWorld(topic, {
      KAFKA_DLQ_TOPIC: dlq,
      KAFKA_DLQ_PARTITIONS: "2",
      KAFKA_DLQ_RETENTION_MS: "3600000",
    });
    const service = await spawnService(world, { name: "dlq-create" });
    try {
      await t.step("the service starts and joins", async () => {
        await service.waitForLog(/Created dead-letter topic/, { timeoutMs: 60_000 });
        await service.waitForLog(/Joined group/, { timeoutMs: 60_000 });
      });
      await t.step("the topic has 2 partitions and retention.ms 3600000", async () => {
        const [meta, configs] = await withKafkaAdmin(async (admin) =>
          [
            await admin.fetchTopicMetadata({ topics: [dlq] }),
            await admin.describeConfigs({
              includeSynonyms: false,
              resources: [{
                type: ConfigResourceTypes.TOPIC,
                name: dlq,
                configNames: ["retention.ms"],
              }],
            }),
          ] as const
        );
        assert.equal(meta.topics[0]?.partitions.length, 2);
        const retention = configs.resources[0]?.configEntries.find((e) =>
          e.configName === "retention.ms"
        );
        assert.equal(retention?.configValue, "3600000");
      });
      await t.step("a restart finds the topic and leaves it as it is", async () => {
        assert.equal((await service.kill("SIGTERM")).code, 0, service.log());
        const again = await spawnService(world, { name: "dlq-again" });
        try {
          await again.waitForLog(/Joined group/, { timeoutMs: 60_000 });
          assert.doesNotMatch(again.log(), /Created dead-letter topic|KAFKA_DLQ/);
        } finally {
          await again.kill("SIGTERM");
        }
      });
    } finally {
      await service.kill("SIGKILL");
    }
  },
});

Deno.test({
  name: "startService() refuses with one line naming KAFKA_DLQ_TOPIC when Kafka cannot create it",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const topic = await createTopic(uniqueName("dlqbad"), 1);
    // Kafka refuses a topic whose name differs from an existing one only by "." against "_".
    await createTopic(`${topic}.dead`, 1);
    await using world = await kafkaOnlyWorld(topic, { KAFKA_DLQ_TOPIC: `${topic}_dead` });
    const service = await spawnService(world, { name: "dlq-refused" });
    try {
      await until("the service to exit", () => service.hasExited || undefined, 60_000);
      const status = await service.exited;
      assert.equal(status.code, 1, service.log());
      const lines = service.log().split("\n").filter((l) => l.includes("KAFKA_DLQ_TOPIC"));
      assert.equal(lines.length, 1, service.log());
      assert.match(lines[0]!, /^Cannot start as the dead-letter topic KAFKA_DLQ_TOPIC=/);
      assert.match(lines[0]!, /cannot be created/);
      assert.doesNotMatch(service.log(), /Uncaught|^\s+at /m);
    } finally {
      await service.kill("SIGKILL");
    }
  },
});

Deno.test({
  name: "anonymizer run takes MAX_PAST_AGE_MS: a 40-day-old record is queued only when allowed",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    for (
      const [label, env, queued] of [
        ["by default (30 days)", {}, 0],
        ["with MAX_PAST_AGE_MS of 100 days", { MAX_PAST_AGE_MS: String(100 * DAY_MS) }, 1],
      ] as const
    ) {
      await t.step(
        `${label}: ${queued === 1 ? "queued" : "dead-lettered as too old"}`,
        async () => {
          const topic = await createTopic(uniqueName("age"), 1);
          const dlq = await createTopic(`${topic}_dlq`, 1);
          await produce([KAFKA_BROKERS], {
            topic,
            rate: 0,
            count: 1,
            seed: 40,
            now: Date.now() - 40 * DAY_MS,
          });
          await using world = await kafkaOnlyWorld(topic, { ...env, KAFKA_DLQ_TOPIC: dlq });
          const service = await spawnService(world, { name: "age", metrics: true });
          try {
            await service.waitForLog(/Joined group/, { timeoutMs: 60_000 });
            const series = await until("the record to be handled", async () => {
              const s = (await service.scrape()).series;
              return (s.get("anonymizer_records_consumed_total") ?? 0) >= 1 ? s : undefined;
            });
            assert.equal(series.get("anonymizer_records_queued_total"), queued);
            const letters = await readTopic(dlq);
            assert.equal(letters.length, 1 - queued);
            if (queued === 0) {
              assert.equal(letters[0]!.headers["anonymizer.error.code"], "timestamp_too_old");
            }
          } finally {
            await service.kill("SIGTERM");
          }
        },
      );
    }
  },
});
