/**
 * The whole service: Kafka source → KV queue → flusher → ClickHouse, with
 * metrics, readiness and the cron watchdog, started and stopped as one.
 *
 * @module
 */
import { dirname, resolve } from "node:path";
import { getLogger } from "@logtape/logtape";
import type { Config } from "./config.ts";
import { ClickHouseClient } from "./clickhouse_client.ts";
import { Flusher, type FlusherStatus, type FlushEvent, type Packer } from "./flusher.ts";
import { KafkaSource, type SourceStatus } from "./kafka_source.ts";
import { type KvQueue, openQueue } from "./kv_queue.ts";
import { messageToRow } from "./message_to_row.ts";
import { createMetrics, type Metrics } from "./metrics.ts";
import { serveObservability } from "./observability_server.ts";
import { packBatch, readableEncoding } from "./pack_batch.ts";
import { DeadLetterProducer } from "./_dead_letter.ts";

const log = getLogger(["anonymizer", "service"]);

/** Options of {@linkcode startService}. */
export interface ServiceOptions {
  /** Builds request bodies. Default: {@linkcode packBatch} with the configured limit and encoding. */
  pack?: Packer;
  /** Called after every ClickHouse request. Default: none. */
  onFlush?: (event: FlushEvent) => void;
}

/** A running service. */
export interface Service {
  /** The durable queue. */
  queue: KvQueue;
  /** The metrics registry and hooks. */
  metrics: Metrics;
  /** Address of the observability listener, if enabled. */
  observabilityAddr: Deno.NetAddr | null;
  /** Live state of both ends. */
  status(): { source: SourceStatus; flusher: FlusherStatus };
  /**
   * Stops fetching, finishes the current KV append and offset commit, lets a
   * request in flight finish within `shutdownGraceMs`, and closes KV.
   */
  stop(): Promise<void>;
}

/**
 * Starts the service described by `config`.
 *
 * @example Stop right after start (no Kafka needed to construct; start needs the stack)
 * ```ts ignore
 * import { loadConfig } from "./config.ts";
 * import { startService } from "./service.ts";
 *
 * const service = await startService(loadConfig(Deno.env.toObject(), []));
 * await service.stop();
 * ```
 */
export async function startService(config: Config, options: ServiceOptions = {}): Promise<Service> {
  await Deno.mkdir(dirname(config.kvPath), { recursive: true });
  const queue = await openQueue(config.kvPath);
  const client = new ClickHouseClient(config.clickhouseUrl, {
    user: config.clickhouseUser,
    password: config.clickhousePassword,
    timeoutMs: config.clickhouseTimeoutMs,
  });
  const kafkaAuth = {
    ssl: config.kafkaSsl,
    sasl: config.kafkaSaslMechanism === null ? undefined : {
      mechanism: config.kafkaSaslMechanism,
      username: config.kafkaSaslUsername,
      password: config.kafkaSaslPassword,
    } as never,
  };
  const deadLetters = new DeadLetterProducer(config.kafkaBrokers, {
    topic: config.kafkaDlqTopic,
    sourceTopic: config.kafkaTopic,
    clientId: config.kafkaClientId,
    ...kafkaAuth,
  });
  const pack: Packer = options.pack ?? ((rows, batchId, serverVersion, hints) =>
    packBatch(rows, {
      batchId,
      serverVersion,
      bodyLimit: config.clickhouseBodyLimit,
      database: config.clickhouseDatabase,
      ...(config.clickhouseEncoding === "auto"
        ? { encoding: readableEncoding(serverVersion, hints?.avoidEncoding) }
        : { encoding: config.clickhouseEncoding as never }),
    }));
  const flusher = new Flusher(queue, client, {
    pack,
    database: config.clickhouseDatabase,
    spacingMs: config.clickhouseSpacingMs,
    marginMs: config.clickhouseMarginMs,
    dedup: config.clickhouseDedup,
    bodyLimit: config.clickhouseBodyLimit,
    onEvent: (e) => {
      metrics.onFlush(e);
      options.onFlush?.(e);
    },
    onLanded: (l) => metrics.onLanded(l),
    onPoisonRow: async (row, error, source) => {
      await deadLetters.sendRow(row, error, source);
      metrics.onPoisonRows(1);
    },
    onSystemicFailure: (f) => metrics.onSystemicFailure(f),
  });
  // The callbacks below run only after start, once `metrics` exists.
  const s = new KafkaSource(config.kafkaBrokers, queue, {
    toRow: (value) => messageToRow(value),
    topic: config.kafkaTopic,
    groupId: config.kafkaGroupId,
    clientId: config.kafkaClientId,
    offsetReset: config.kafkaOffsetReset,
    deadLetters,
    ...kafkaAuth,
    onBatch: (e) => metrics.onBatch(e),
    onOwned: () => flusher.wake(),
  });
  const metrics = createMetrics({
    queue,
    nextRequestSeconds: () => (flusher.status().nextSlotAt - Date.now()) / 1000,
    lag: () => s.status().lag,
    backpressure: () => s.status().backpressure,
  });

  const stopping = new AbortController();
  let kvOpen = true;
  const server = config.metricsListen === null ? null : serveObservability(config.metricsListen, {
    registry: metrics.registry,
    readiness: () => ({
      kafka: s.status().joined,
      kv: kvOpen,
      clickhouse: flusher.status().last?.outcome ?? "unknown",
    }),
    signal: stopping.signal,
  });
  // The watchdog: a lost timer or a partition revoked mid-commit cannot stall delivery.
  const cron = Deno.cron(`anonymizer watchdog ${queue.instanceId.slice(-12)}`, "* * * * *", {
    signal: stopping.signal,
  }, async () => {
    flusher.wake();
    try {
      await s.settlePending();
    } catch (err) {
      log.warn("Cannot resolve pending rows of revoked partitions yet: {error}", {
        error: String(err),
      });
    }
  });

  await deadLetters.connect();
  flusher.start();
  await s.start();
  log.info("anonymizer {instance} consuming {topic} from {brokers} into {url}, queue {kv}", {
    instance: queue.instanceId,
    kv: resolve(config.kvPath),
    topic: config.kafkaTopic,
    brokers: config.kafkaBrokers.join(","),
    url: config.clickhouseUrl,
  });

  let stopped: Promise<void> | null = null;
  return {
    queue,
    metrics,
    observabilityAddr: server?.addr ?? null,
    status: () => ({ source: s.status(), flusher: flusher.status() }),
    stop() {
      stopped ??= (async () => {
        log.info("Stopping: no more fetches; finishing the current commit and request");
        await s.stop();
        await flusher.stop({ graceMs: config.shutdownGraceMs });
        await deadLetters.disconnect();
        stopping.abort();
        await cron;
        await server?.finished;
        kvOpen = false;
        queue.close();
        log.info("Stopped cleanly");
      })();
      return stopped;
    },
  };
}
