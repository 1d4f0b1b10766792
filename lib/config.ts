/**
 * Service configuration: every setting comes from an environment variable
 * and a matching `--flag` (the flag wins), is validated at start-up, and
 * fails with a one-line {@linkcode ConfigError} naming the setting and value.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ConfigError } from "./errors.ts";
import type { OffsetReset } from "./source/kafka_consumer.ts";
import type { WireEncoding } from "./sink/clickhouse/pack_batch.ts";
import type { SlotSharing } from "./slot_schedule.ts";
import { SETTINGS } from "./settings.ts";

/** The validated configuration of `anonymizer run`. */
export interface Config {
  /** Kafka bootstrap brokers, comma-separated host:port: `KAFKA_BROKERS`. */
  kafkaBrokers: string[];
  /** Topic to consume: `KAFKA_TOPIC`. */
  kafkaTopic: string;
  /** Consumer group id: `KAFKA_GROUP_ID`. */
  kafkaGroupId: string;
  /** Kafka client id: `KAFKA_CLIENT_ID`. */
  kafkaClientId: string;
  /** Start of a group without committed offsets: earliest, latest, or a time (ISO 8601 or epoch ms): `KAFKA_OFFSET_RESET`. */
  kafkaOffsetReset: OffsetReset;
  /** Dead-letter topic for messages that cannot be stored: `KAFKA_DLQ_TOPIC`. */
  kafkaDlqTopic: string;
  /** Partitions of the dead-letter topic when anonymizer creates it: `KAFKA_DLQ_PARTITIONS`. */
  kafkaDlqPartitions: number;
  /** retention.ms of the dead-letter topic when anonymizer creates it, ms (3 days; at most 30 days): `KAFKA_DLQ_RETENTION_MS`. */
  kafkaDlqRetentionMs: number;
  /** Connect to Kafka over TLS (true or false): `KAFKA_SSL`. */
  kafkaSsl: boolean;
  /** SASL mechanism: plain, scram-sha-256 or scram-sha-512; empty for none: `KAFKA_SASL_MECHANISM`. */
  kafkaSaslMechanism: "plain" | "scram-sha-256" | "scram-sha-512" | null;
  /** SASL user name: `KAFKA_SASL_USERNAME`. */
  kafkaSaslUsername: string;
  /** SASL password: `KAFKA_SASL_PASSWORD`. */
  kafkaSaslPassword: string;
  /** ClickHouse HTTP endpoint, normally ch-proxy: `CLICKHOUSE_URL`. */
  clickhouseUrl: string;
  /** Database holding http_log: `CLICKHOUSE_DATABASE`. */
  clickhouseDatabase: string;
  /** ClickHouse user: `CLICKHOUSE_USER`. */
  clickhouseUser: string;
  /** ClickHouse password (sent with HTTP basic auth): `CLICKHOUSE_PASSWORD`. */
  clickhousePassword: string;
  /** Minimum spacing between requests, ms (stock ch-proxy: 62500): `CLICKHOUSE_SPACING_MS`. */
  clickhouseSpacingMs: number;
  /** Safety margin added to the spacing, ms: `CLICKHOUSE_MARGIN_MS`. */
  clickhouseMarginMs: number;
  /** Largest request body, bytes (ch-proxy's client_max_body_size): `CLICKHOUSE_BODY_LIMIT`. */
  clickhouseBodyLimit: number;
  /** Per-request timeout, ms: `CLICKHOUSE_TIMEOUT_MS`. */
  clickhouseTimeoutMs: number;
  /** Body encoding: auto (by server version), native_clickhouse_zstd (any version), native_zstd or native_planes_zstd (23.3+): `CLICKHOUSE_ENCODING`. */
  clickhouseEncoding: "auto" | WireEncoding;
  /** group (instances of one consumer group share the proxy's slots) or off (each paces alone): `CLICKHOUSE_SLOT_SHARING`. */
  clickhouseSlotSharing: SlotSharing;
  /** Topic on which instances hand unused slots to each other (created with 1 partition): `KAFKA_SLOTS_TOPIC`. */
  kafkaSlotsTopic: string;
  /** Resolving unknown outcomes: check (one SELECT), token (insert_deduplication_token), auto: `CLICKHOUSE_DEDUP`. */
  clickhouseDedup: "auto" | "check" | "token";
  /** Deno KV file holding the durable queue: `KV_PATH`. */
  kvPath: string;
  /** Records older than this are dead-lettered (timestamp_too_old), ms; raise it for replays: `MAX_PAST_AGE_MS`. */
  maxPastAgeMs: number;
  /** Records further ahead of now are dead-lettered (timestamp_future), ms: `MAX_FUTURE_SKEW_MS`. */
  maxFutureSkewMs: number;
  /** trace, debug, info, warning, error or fatal: `LOG_LEVEL`. */
  logLevel: "trace" | "debug" | "info" | "warning" | "error" | "fatal";
  /** text or json (one JSON object per line): `LOG_FORMAT`. */
  logFormat: "text" | "json";
  /** host:port of /metrics, /healthz and /readyz; empty to disable: `METRICS_LISTEN`. */
  metricsListen: { hostname: string; port: number } | null;
  /** How long a request in flight may finish on SIGTERM/SIGINT, ms: `SHUTDOWN_GRACE_MS`. */
  shutdownGraceMs: number;
}

/**
 * Reads the configuration from `env` and command-line `args`.
 * Throws {@linkcode ConfigError} for the first bad value, or for an unknown flag.
 *
 * @example
 * ```ts
 * import { loadConfig } from "./config.ts";
 * import { ConfigError } from "./errors.ts";
 * import assert from "node:assert/strict";
 *
 * const config = loadConfig({ KAFKA_TOPIC: "logs" }, ["--clickhouse-spacing-ms", "1000"]);
 * assert.equal(config.kafkaTopic, "logs");
 * assert.equal(config.clickhouseSpacingMs, 1000);
 * assert.throws(
 *   () => loadConfig({ KAFKA_BROKERS: "x" }, []),
 *   new ConfigError("KAFKA_BROKERS", "x", "must be host:port[,host:port...]"),
 * );
 * ```
 */
export function loadConfig(
  env: Record<string, string | undefined>,
  args: readonly string[],
): Config {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: [...args],
      options: Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: "string" as const }])),
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (cause) {
    // Only the option's name: the rest of the command line can hold a password.
    const flag = /'(--?[^'= ]+)/.exec(String(cause))?.[1] ?? "the options";
    throw new ConfigError("the command line", flag, "has an unknown option or a missing value", {
      cause,
    });
  }
  const out: Record<string, unknown> = {};
  for (const s of SETTINGS) {
    const fromFlag = values[s.flag];
    const raw = typeof fromFlag === "string" ? fromFlag : env[s.env] ?? s.default;
    const name = typeof fromFlag === "string" ? `--${s.flag}` : s.env;
    out[s.key] = s.parse(raw, (rule) => {
      throw new ConfigError(name, raw, rule, { secret: s.secret ?? false });
    });
  }
  const config = out as unknown as Config;
  if (config.kafkaSaslMechanism !== null && config.kafkaSaslUsername === "") {
    throw new ConfigError("KAFKA_SASL_USERNAME", "", "must be set when KAFKA_SASL_MECHANISM is");
  }
  return config;
}

/**
 * The settings table for `--help`: flag, environment variable, default, description.
 *
 * @example
 * ```ts
 * import { settingsHelp } from "./config.ts";
 * import assert from "node:assert/strict";
 *
 * assert.match(settingsHelp(), /--kafka-brokers\s+KAFKA_BROKERS\s+default "127\.0\.0\.1:9092"/);
 * ```
 */
export function settingsHelp(): string {
  return SETTINGS.map((s) =>
    `  --${s.flag.padEnd(24)} ${s.env.padEnd(22)} default ${
      JSON.stringify(s.default).padEnd(24)
    } ${s.help}`
  ).join("\n");
}

/**
 * The values of `config` that must never be printed: every secret setting
 * that is set. Logs are scrubbed of them (see `configureLogging`).
 *
 * @example
 * ```ts
 * import { loadConfig, secretValues } from "./config.ts";
 * import assert from "node:assert/strict";
 *
 * const config = loadConfig({ CLICKHOUSE_PASSWORD: "pw", KAFKA_SASL_PASSWORD: "" }, []);
 * assert.deepEqual(secretValues(config), ["pw"]);
 * ```
 */
export function secretValues(config: Config): string[] {
  return SETTINGS.filter((s) => s.secret).map((s) => String(config[s.key])).filter((v) => v !== "");
}
