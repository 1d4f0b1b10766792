import assert from "node:assert/strict";
import { AnonymizerError } from "../errors.ts";
import { kafkaConsumer } from "./kafka_consumer.ts";

Deno.test("kafkaConsumer() names fetchWaitMs and its value when it is not a positive integer", () => {
  for (const value of [0, -5, 1.5, Number.NaN]) {
    assert.throws(
      () => kafkaConsumer(["127.0.0.1:9092"], { fetchWaitMs: value }),
      (err: unknown) =>
        err instanceof AnonymizerError && err.code === "invalid_option" &&
        err.retriable === false &&
        err.message ===
          "Cannot create a Kafka consumer as option fetchWaitMs must be an integer of at least 1: " +
            `current value is "${value}"`,
    );
  }
  assert.equal(kafkaConsumer(["127.0.0.1:9092"], { fetchWaitMs: 1 }).topic, "http_log");
});
