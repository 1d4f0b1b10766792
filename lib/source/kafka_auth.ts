/**
 * The Kafka connection's TLS and SASL settings, read from {@linkcode Config}.
 *
 * @module
 */
import type { Config } from "../config.ts";
import type { KafkaClientOptions } from "./kafka_client.ts";

/**
 * The TLS and SASL options of every Kafka client the service opens, from
 * `config`: one place, so the consumer, the dead-letter producer and the
 * replay connect alike.
 *
 * @example
 * ```ts
 * import { kafkaAuthOptions } from "./kafka_auth.ts";
 * import { loadConfig } from "../config.ts";
 * import assert from "node:assert/strict";
 *
 * const env = { KAFKA_SASL_MECHANISM: "plain", KAFKA_SASL_USERNAME: "u", KAFKA_SASL_PASSWORD: "p" };
 * assert.deepEqual(kafkaAuthOptions(loadConfig(env, [])), {
 *   ssl: false,
 *   sasl: { mechanism: "plain", username: "u", password: "p" },
 * });
 * assert.equal(kafkaAuthOptions(loadConfig({}, [])).sasl, undefined);
 * ```
 */
export function kafkaAuthOptions(config: Config): Pick<KafkaClientOptions, "ssl" | "sasl"> {
  return {
    ssl: config.kafkaSsl,
    sasl: config.kafkaSaslMechanism === null ? undefined : {
      mechanism: config.kafkaSaslMechanism,
      username: config.kafkaSaslUsername,
      password: config.kafkaSaslPassword,
    },
  };
}
