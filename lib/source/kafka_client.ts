/**
 * The one place a kafkajs client is made: the consumer, the dead-letter
 * producer and the load generator all connect through
 * {@linkcode kafkaClient}, so each gets the same logging and the idle-spin
 * fix of `_kafkajs_idle_fix.ts`.
 *
 * @module
 */
import { Kafka, type KafkaConfig, logLevel } from "kafkajs";
import { kafkaLogCreator } from "./_kafka_log.ts";
import { applyKafkajsIdleFix } from "./_kafkajs_idle_fix.ts";

/** SASL credentials for the Kafka connection. */
export interface KafkaSasl {
  /** The mechanism, as `KAFKA_SASL_MECHANISM` names it. */
  mechanism: "plain" | "scram-sha-256" | "scram-sha-512";
  /** User name. */
  username: string;
  /** Password; never logged. */
  password: string;
}

/** Options of {@linkcode kafkaClient}. */
export interface KafkaClientOptions {
  /** Kafka client id. Default: `"anonymizer"`. */
  clientId?: string;
  /** Connect over TLS. Default: `false`. */
  ssl?: boolean;
  /** SASL credentials. Default: none. */
  sasl?: KafkaSasl;
  /**
   * Further kafkajs settings, over the defaults above; tests use it to
   * silence kafkajs or shorten its retries. Default: none.
   */
  kafkajs?: Partial<Omit<KafkaConfig, "brokers" | "clientId" | "ssl" | "sasl">>;
}

/**
 * A kafkajs client for `brokers` (`host:port` each). Its own log lines go
 * to logtape under `["anonymizer", "kafkajs"]`; kafkajs's idle timer spin
 * (kafkajs#1556) is patched away before the first client exists. Creating
 * a client does not connect.
 *
 * @example Create a client without connecting
 * ```ts
 * import { kafkaClient } from "./kafka_client.ts";
 * import assert from "node:assert/strict";
 *
 * const kafka = kafkaClient(["127.0.0.1:9092"], { clientId: "anonymizer-example" });
 * assert.equal(typeof kafka.producer, "function");
 * ```
 */
export function kafkaClient(brokers: string[], options: KafkaClientOptions = {}): Kafka {
  applyKafkajsIdleFix();
  return new Kafka({
    brokers,
    clientId: options.clientId ?? "anonymizer",
    ssl: options.ssl ?? false,
    // kafkajs types each mechanism apart; every one takes a user name and a password.
    sasl: options.sasl as KafkaConfig["sasl"],
    logLevel: logLevel.INFO,
    logCreator: kafkaLogCreator,
    ...options.kafkajs,
  });
}
