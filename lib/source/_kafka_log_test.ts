import assert from "node:assert/strict";
import { getTextFormatter, reset } from "@logtape/logtape";
import { logLevel } from "kafkajs";
import { captureLogs } from "../../testing/capture_logs.ts";
import { kafkaLogCreator } from "./_kafka_log.ts";

/** The rendered text of a record, as the text format writes it. */
const text = getTextFormatter();

Deno.test("kafkaLogCreator() keeps a failed response's reason and logs routine retries at info", async (t) => {
  const records = await captureLogs();
  const write = kafkaLogCreator(logLevel.INFO);
  const entry = (message: string, error: string) => ({
    namespace: "Connection",
    level: logLevel.ERROR,
    label: "ERROR",
    log: { timestamp: "", logger: "kafkajs", message, error },
  });
  write(
    entry(
      "Response GroupCoordinator(key: 10, version: 2)",
      "The group coordinator is not available",
    ),
  );
  write(
    entry(
      "Response Heartbeat(key: 12, version: 3)",
      "The group is rebalancing, so a rejoin is needed",
    ),
  );
  write(
    entry(
      "Response Produce(key: 0, version: 7)",
      "Not authorized to access topics: [Topic authorization failed]",
    ),
  );
  await reset();
  const [coordinator, heartbeat, produce] = records;
  await t.step("a fresh start's coordinator answer: info, with type and message", () => {
    assert.equal(coordinator!.level, "info");
    assert.match(
      text(coordinator!),
      /Connection: Response GroupCoordinator\(key: 10, version: 2\): KafkaJSProtocolError GROUP_COORDINATOR_NOT_AVAILABLE: The group coordinator is not available \(routine; retried\)/,
    );
  });
  await t.step("a rebalance's heartbeat answer: info, with type and message", () => {
    assert.equal(heartbeat!.level, "info");
    assert.match(text(heartbeat!), /Heartbeat.*REBALANCE_IN_PROGRESS: The group is rebalancing/);
  });
  await t.step("any other failed response stays an error, with its reason", () => {
    assert.equal(produce!.level, "error");
    assert.match(
      text(produce!),
      /Response Produce\(key: 0, version: 7\): KafkaJSProtocolError TOPIC_AUTHORIZATION_FAILED: Not authorized to access topics/,
    );
  });
});
