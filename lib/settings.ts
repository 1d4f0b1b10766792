/**
 * Every setting of `anonymizer run`: its environment variable, flag, default
 * and check. The README's configuration table is checked against this list.
 *
 * @module
 */
import type { Config } from "./config.ts";
import { parseHostPort } from "./host_port.ts";
import type { OffsetReset } from "./source/kafka_consumer.ts";
import { isTopicName, TOPIC_NAME_RULE } from "./source/topic_name.ts";
import { DEFAULT_SPACING_MS } from "./pacer.ts";

/** One setting: where it comes from, its default, and how it is checked. */
export interface Setting {
  /** Environment variable. */
  env: string;
  /** Command-line flag, without the leading `--`. */
  flag: string;
  /** Field of {@linkcode Config}. */
  key: keyof Config;
  /** Default as the user would type it. */
  default: string;
  /** One-line description for `--help` and the README. */
  help: string;
  /**
   * Whether the value is secret: never shown, not even in a config error.
   * Default: `false`; values of other settings are shown with URL userinfo
   * replaced by `***`.
   */
  secret?: boolean;
  /** Parses a raw value; returns an error rule (e.g. `"must be a positive integer"`) via `fail`. */
  parse: (raw: string, fail: (rule: string) => never) => unknown;
}

const int =
  (min: number, max = Number.MAX_SAFE_INTEGER) => (raw: string, fail: (r: string) => never) => {
    if (!/^\d+$/.test(raw)) fail(`must be an integer from ${min} to ${max}`);
    const n = Number(raw);
    if (n < min || n > max) fail(`must be an integer from ${min} to ${max}`);
    return n;
  };

const oneOf =
  <T extends string>(...values: T[]) => (raw: string, fail: (r: string) => never): T => {
    const v = raw.toLowerCase() as T;
    if (!values.includes(v)) fail(`must be one of ${values.join(", ")}`);
    return v;
  };

const nonEmpty = (raw: string, fail: (r: string) => never) => {
  if (raw.trim() === "") fail("must not be empty");
  return raw.trim();
};

const topic = (raw: string, fail: (r: string) => never) => {
  if (!isTopicName(raw)) fail(TOPIC_NAME_RULE);
  return raw;
};

const identifier = (raw: string, fail: (r: string) => never) => {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(raw)) {
    fail("must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)");
  }
  return raw;
};

/** Every setting, in the order `--help` and the README list them. */
export const SETTINGS: readonly Setting[] = [
  {
    env: "KAFKA_BROKERS",
    flag: "kafka-brokers",
    key: "kafkaBrokers",
    default: "127.0.0.1:9092",
    help: "Kafka bootstrap brokers, comma-separated host:port",
    parse: (raw, fail) => {
      const list = raw.split(",").map((s) => s.trim());
      if (list.some((b) => parseHostPort(b) === null)) fail("must be host:port[,host:port...]");
      return list;
    },
  },
  {
    env: "KAFKA_TOPIC",
    flag: "kafka-topic",
    key: "kafkaTopic",
    default: "http_log",
    help: "Topic to consume",
    parse: topic,
  },
  {
    env: "KAFKA_GROUP_ID",
    flag: "kafka-group-id",
    key: "kafkaGroupId",
    default: "anonymizer",
    help: "Consumer group id",
    parse: nonEmpty,
  },
  {
    env: "KAFKA_CLIENT_ID",
    flag: "kafka-client-id",
    key: "kafkaClientId",
    default: "anonymizer",
    help: "Kafka client id",
    parse: nonEmpty,
  },
  {
    env: "KAFKA_OFFSET_RESET",
    flag: "kafka-offset-reset",
    key: "kafkaOffsetReset",
    default: "earliest",
    help:
      "Start of a group without committed offsets: earliest, latest, or a time (ISO 8601 or epoch ms)",
    parse: (raw, fail): OffsetReset => {
      const v = raw.trim().toLowerCase();
      if (v === "earliest" || v === "latest") return v;
      const t = /^\d+$/.test(v) ? Number(v) : Date.parse(raw);
      if (!Number.isFinite(t) || t < 0) {
        fail("must be earliest, latest, an ISO 8601 time or epoch milliseconds");
      }
      return { timestamp: t };
    },
  },
  {
    env: "KAFKA_DLQ_TOPIC",
    flag: "kafka-dlq-topic",
    key: "kafkaDlqTopic",
    default: "http_log.dlq",
    help: "Dead-letter topic for messages that cannot be stored",
    parse: topic,
  },
  {
    env: "KAFKA_DLQ_PARTITIONS",
    flag: "kafka-dlq-partitions",
    key: "kafkaDlqPartitions",
    default: "1",
    help: "Partitions of the dead-letter topic when anonymizer creates it",
    parse: int(1, 10_000),
  },
  {
    env: "KAFKA_DLQ_RETENTION_MS",
    flag: "kafka-dlq-retention-ms",
    key: "kafkaDlqRetentionMs",
    default: "259200000",
    help:
      "retention.ms of the dead-letter topic when anonymizer creates it, ms (3 days; at most 30 days)",
    // Dead letters can hold raw client addresses: their life must be bounded.
    parse: int(60_000, 2_592_000_000),
  },
  {
    env: "KAFKA_SSL",
    flag: "kafka-ssl",
    key: "kafkaSsl",
    default: "false",
    help: "Connect to Kafka over TLS (true or false)",
    parse: (raw, fail) => oneOf("true", "false")(raw, fail) === "true",
  },
  {
    env: "KAFKA_SASL_MECHANISM",
    flag: "kafka-sasl-mechanism",
    key: "kafkaSaslMechanism",
    default: "",
    help: "SASL mechanism: plain, scram-sha-256 or scram-sha-512; empty for none",
    parse: (raw, fail) =>
      raw === "" ? null : oneOf("plain", "scram-sha-256", "scram-sha-512")(raw, fail),
  },
  {
    env: "KAFKA_SASL_USERNAME",
    flag: "kafka-sasl-username",
    key: "kafkaSaslUsername",
    default: "",
    help: "SASL user name",
    parse: (raw) => raw,
  },
  {
    env: "KAFKA_SASL_PASSWORD",
    flag: "kafka-sasl-password",
    key: "kafkaSaslPassword",
    default: "",
    help: "SASL password",
    secret: true,
    parse: (raw) => raw,
  },
  {
    env: "CLICKHOUSE_URL",
    flag: "clickhouse-url",
    key: "clickhouseUrl",
    default: "http://127.0.0.1:8124",
    help: "ClickHouse HTTP endpoint, normally ch-proxy",
    parse: (raw, fail) => {
      let u: URL;
      try {
        u = new URL(raw);
      } catch {
        return fail("must be an http:// or https:// URL");
      }
      if (u.protocol !== "http:" && u.protocol !== "https:") {
        fail("must be an http:// or https:// URL");
      }
      if (u.username || u.password) {
        fail("must not contain credentials (use CLICKHOUSE_USER/CLICKHOUSE_PASSWORD)");
      }
      return raw.replace(/\/+$/, "");
    },
  },
  {
    env: "CLICKHOUSE_DATABASE",
    flag: "clickhouse-database",
    key: "clickhouseDatabase",
    default: "default",
    help: "Database holding http_log",
    parse: identifier,
  },
  {
    env: "CLICKHOUSE_USER",
    flag: "clickhouse-user",
    key: "clickhouseUser",
    default: "default",
    help: "ClickHouse user",
    parse: nonEmpty,
  },
  {
    env: "CLICKHOUSE_PASSWORD",
    flag: "clickhouse-password",
    key: "clickhousePassword",
    default: "",
    help: "ClickHouse password (sent with HTTP basic auth)",
    secret: true,
    parse: (raw) => raw,
  },
  {
    env: "CLICKHOUSE_SPACING_MS",
    flag: "clickhouse-spacing-ms",
    key: "clickhouseSpacingMs",
    default: String(DEFAULT_SPACING_MS),
    help: "Minimum spacing between requests, ms (stock ch-proxy: 62500)",
    parse: int(1),
  },
  {
    env: "CLICKHOUSE_MARGIN_MS",
    flag: "clickhouse-margin-ms",
    key: "clickhouseMarginMs",
    default: "750",
    help: "Safety margin added to the spacing, ms",
    parse: int(0, 60_000),
  },
  {
    env: "CLICKHOUSE_BODY_LIMIT",
    flag: "clickhouse-body-limit",
    key: "clickhouseBodyLimit",
    default: "1048576",
    help: "Largest request body, bytes (ch-proxy's client_max_body_size)",
    parse: int(4096, 1 << 30),
  },
  {
    env: "CLICKHOUSE_TIMEOUT_MS",
    flag: "clickhouse-timeout-ms",
    key: "clickhouseTimeoutMs",
    default: "30000",
    help: "Per-request timeout, ms",
    parse: int(100, 600_000),
  },
  {
    env: "CLICKHOUSE_ENCODING",
    flag: "clickhouse-encoding",
    key: "clickhouseEncoding",
    default: "auto",
    help:
      "Body encoding: auto (by server version), native_clickhouse_zstd (any version), native_zstd or native_planes_zstd (23.3+)",
    parse: oneOf("auto", "native_clickhouse_zstd", "native_zstd", "native_planes_zstd"),
  },
  {
    env: "CLICKHOUSE_SLOT_SHARING",
    flag: "clickhouse-slot-sharing",
    key: "clickhouseSlotSharing",
    default: "group",
    help:
      "group: instances of one consumer group behind one address take turns on the proxy's slots; off: each paces alone",
    parse: oneOf("group", "off"),
  },
  {
    env: "KAFKA_SLOTS_TOPIC",
    flag: "kafka-slots-topic",
    key: "kafkaSlotsTopic",
    default: "anonymizer_slots",
    help:
      "Topic on which instances sharing the proxy hand unused slots to each other (created with 1 partition)",
    parse: topic,
  },
  {
    env: "CLICKHOUSE_DEDUP",
    flag: "clickhouse-dedup",
    key: "clickhouseDedup",
    default: "auto",
    help:
      "Resolving unknown outcomes: check (one SELECT), token (insert_deduplication_token), auto",
    parse: oneOf("auto", "check", "token"),
  },
  {
    env: "KV_PATH",
    flag: "kv-path",
    key: "kvPath",
    default: "data/anonymizer.kv",
    help: "Deno KV file holding the durable queue",
    parse: nonEmpty,
  },
  {
    env: "MAX_PAST_AGE_MS",
    flag: "max-past-age-ms",
    key: "maxPastAgeMs",
    default: "2592000000",
    help: "Records older than this are dead-lettered (timestamp_too_old), ms; raise it for replays",
    parse: int(60_000),
  },
  {
    env: "MAX_FUTURE_SKEW_MS",
    flag: "max-future-skew-ms",
    key: "maxFutureSkewMs",
    default: "86400000",
    help: "Records further ahead of now are dead-lettered (timestamp_future), ms",
    parse: int(0),
  },
  {
    env: "LOG_LEVEL",
    flag: "log-level",
    key: "logLevel",
    default: "info",
    help: "trace, debug, info, warning, error or fatal",
    parse: oneOf("trace", "debug", "info", "warning", "error", "fatal"),
  },
  {
    env: "LOG_FORMAT",
    flag: "log-format",
    key: "logFormat",
    default: "text",
    help: "text or json (one JSON object per line)",
    parse: oneOf("text", "json"),
  },
  {
    env: "METRICS_LISTEN",
    flag: "metrics-listen",
    key: "metricsListen",
    default: "127.0.0.1:9464",
    help: "host:port of /metrics, /healthz and /readyz; empty to disable",
    parse: (raw, fail) => {
      if (raw === "") return null;
      return parseHostPort(raw) ?? fail("must be host:port or empty");
    },
  },
  {
    env: "SHUTDOWN_GRACE_MS",
    flag: "shutdown-grace-ms",
    key: "shutdownGraceMs",
    default: "10000",
    help: "How long a request in flight may finish on SIGTERM/SIGINT, ms",
    parse: int(0, 600_000),
  },
];
