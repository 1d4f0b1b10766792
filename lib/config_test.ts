import assert from "node:assert/strict";
import { loadConfig } from "./config.ts";
import { parseHostPort } from "./host_port.ts";
import { ConfigError } from "./errors.ts";

const ACCEPTED: ReadonlyArray<[string, { hostname: string; port: number }]> = [
  ["127.0.0.1:9092", { hostname: "127.0.0.1", port: 9092 }],
  ["kafka-1.internal:1", { hostname: "kafka-1.internal", port: 1 }],
  ["localhost:65535", { hostname: "localhost", port: 65_535 }],
  ["0.0.0.0:9464", { hostname: "0.0.0.0", port: 9464 }],
];

const REFUSED: readonly string[] = [
  "",
  "kafka",
  "kafka:",
  ":9092",
  "kafka:0",
  "kafka:65536",
  "kafka:123456",
  "kafka:9092x",
  "kafka 1:9092",
  "[::1]:9092",
  "::1:9092",
  "http://kafka:9092",
  "a:1,b:2",
];

Deno.test("parseHostPort() accepts a name or IPv4 with a port from 1 to 65535, and nothing else", async (t) => {
  await t.step("accepted", () => {
    for (const [text, parsed] of ACCEPTED) assert.deepEqual(parseHostPort(text), parsed, text);
  });
  await t.step("refused", () => {
    for (const text of REFUSED) assert.equal(parseHostPort(text), null, text);
  });
});

Deno.test("loadConfig() checks KAFKA_BROKERS and METRICS_LISTEN with parseHostPort()", async (t) => {
  await t.step("every broker of the list must be host:port", () => {
    assert.deepEqual(
      loadConfig({ KAFKA_BROKERS: "a:1, b:2" }, []).kafkaBrokers,
      ["a:1", "b:2"],
    );
    for (const text of REFUSED.filter((r) => r !== "a:1,b:2")) {
      assert.throws(
        () => loadConfig({ KAFKA_BROKERS: `a:1,${text}` }, []),
        new ConfigError("KAFKA_BROKERS", `a:1,${text}`, "must be host:port[,host:port...]"),
      );
    }
  });
  await t.step("METRICS_LISTEN is host:port or empty", () => {
    assert.deepEqual(loadConfig({ METRICS_LISTEN: "127.0.0.1:9464" }, []).metricsListen, {
      hostname: "127.0.0.1",
      port: 9464,
    });
    assert.equal(loadConfig({ METRICS_LISTEN: "" }, []).metricsListen, null);
    for (const text of REFUSED.filter((r) => r !== "")) {
      assert.throws(
        () => loadConfig({ METRICS_LISTEN: text }, []),
        new ConfigError("METRICS_LISTEN", text, "must be host:port or empty"),
      );
    }
  });
});
