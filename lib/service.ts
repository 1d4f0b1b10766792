/**
 * The whole service: Kafka source → KV queue → flusher → ClickHouse, with
 * metrics, readiness and the cron watchdog, started and stopped as one.
 *
 * @module
 */
import { dirname, resolve } from "node:path";
import { getLogger } from "@logtape/logtape";
import { type Config, secretValues } from "./config.ts";
import { kafkaAuthOptions } from "./source/kafka_auth.ts";
import { ClickHouseClient } from "./sink/clickhouse/clickhouse_client.ts";
import { SlotSchedule, type SlotYield } from "./slot_schedule.ts";
import { SlotYieldChannel } from "./source/slot_yields.ts";
import { ClickHouseSink } from "./sink/clickhouse/clickhouse_sink.ts";
import { Flusher, type FlusherStatus, type FlushEvent } from "./flusher.ts";
import { KafkaSource, type SourceStatus } from "./source/kafka_source.ts";
import { kafkaConsumer } from "./source/kafka_consumer.ts";
import { fetchWaitFor } from "./source/_fetch_wait.ts";
import { type KvQueue, openQueue } from "./queue/kv_queue.ts";
import { messageToRow } from "./record/message_to_row.ts";
import { createMetrics, type Metrics } from "./metrics.ts";
import { serveObservability } from "./observability_server.ts";
import { DeadLetterProducer } from "./source/dead_letters.ts";
import { AnonymizerError } from "./errors.ts";
import { lockKvPath } from "./queue/kv_lock.ts";
import { secretScrubber } from "./redact.ts";
import type { StatusSnapshot } from "./status.ts";
import { StatusRecorder } from "./status_recorder.ts";
import { sampleHistory, type SnapshotParts, takeSnapshot } from "./_status_snapshot.ts";

const log = getLogger(["anonymizer", "service"]);

/**
 * Waits between start-up attempts to reach Kafka: doubling from the first,
 * capped so a broker that comes back is found within half a minute.
 */
const KAFKA_RETRY_FIRST_MS = 1_000;
const KAFKA_RETRY_MAX_MS = 30_000;

/** Options of {@linkcode startService}. */
export interface ServiceOptions {
  /** Called after every ClickHouse request. Default: none. */
  onFlush?: (event: FlushEvent) => void;
  /**
   * Ends start-up early (a signal while Kafka is still out of reach): the
   * service is stopped and the promise rejects with the signal's reason.
   * Default: none.
   */
  signal?: AbortSignal;
}

/** A running service. */
export interface Service {
  /** The durable queue. */
  queue: KvQueue;
  /** The metrics registry and hooks. */
  metrics: Metrics;
  /** Live state of both ends. */
  status(): { source: SourceStatus; flusher: FlusherStatus };
  /** What `anonymizer status` and the page at `/` show, as `/status.json` serves it. */
  snapshot(): Promise<StatusSnapshot>;
  /**
   * Stops fetching, finishes the current KV append and offset commit, lets a
   * request in flight finish within `shutdownGraceMs`, and closes KV.
   */
  stop(): Promise<void>;
}

/**
 * Starts the service described by `config`. Takes the lock of `KV_PATH`
 * first, so a second process on the same queue refuses to start. Until Kafka
 * is reachable it retries with capped backoff, logging one line per attempt,
 * while /readyz answers not ready.
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
  const lock = await lockKvPath(config.kvPath);
  let queue: KvQueue;
  try {
    queue = await openQueue(config.kvPath);
  } catch (err) {
    lock.release();
    throw err;
  }
  const client = new ClickHouseClient(config.clickhouseUrl, {
    user: config.clickhouseUser,
    password: config.clickhousePassword,
    timeoutMs: config.clickhouseTimeoutMs,
  });
  const kafkaAuth = kafkaAuthOptions(config);
  const deadLetters = new DeadLetterProducer(config.kafkaBrokers, {
    topic: config.kafkaDlqTopic,
    sourceTopic: config.kafkaTopic,
    clientId: config.kafkaClientId,
    scrub: secretScrubber(secretValues(config)),
    ...kafkaAuth,
  });
  const metrics = createMetrics(queue);
  const slotSchedule = new SlotSchedule({
    sharing: config.clickhouseSlotSharing,
    spacingMs: config.clickhouseSpacingMs,
    marginMs: config.clickhouseMarginMs,
  });
  const yields = config.clickhouseSlotSharing === "off"
    ? null
    : new SlotYieldChannel(config.kafkaBrokers, {
      topic: config.kafkaSlotsTopic,
      groupId: config.kafkaGroupId,
      clientId: config.kafkaClientId,
      ...kafkaAuth,
    });
  const sink = new ClickHouseSink(client, {
    database: config.clickhouseDatabase,
    bodyLimit: config.clickhouseBodyLimit,
    encoding: config.clickhouseEncoding,
    dedup: config.clickhouseDedup,
  });
  const flusher = new Flusher(queue, sink, {
    slotSchedule,
    onSlotYield: (y) =>
      yields?.publish(y).catch((err) =>
        log.warn("Cannot hand slot {at} to the next member; it goes unused: {error}", {
          at: new Date(y.at).toISOString(),
          error: String(err),
        })
      ),
    spacingMs: config.clickhouseSpacingMs,
    marginMs: config.clickhouseMarginMs,
    bodyLimit: config.clickhouseBodyLimit,
    onEvent: (e) => {
      metrics.onFlush(e);
      recorder.onFlush(e);
      options.onFlush?.(e);
    },
    onLanded: (l) => metrics.onLanded(l),
    onPoisonRow: async (row, error, source) => {
      await deadLetters.sendRow(row, error, source);
      metrics.onPoisonRows(1);
      recorder.onDeadLetters({ clickhouse_rejected: 1 });
    },
    onSystemicFailure: (f) => metrics.onSystemicFailure(f),
  });
  const consumer = kafkaConsumer(config.kafkaBrokers, {
    topic: config.kafkaTopic,
    groupId: config.kafkaGroupId,
    clientId: config.kafkaClientId,
    offsetReset: config.kafkaOffsetReset,
    fetchWaitMs: fetchWaitFor(config.clickhouseSpacingMs),
    ...kafkaAuth,
  });
  const s = new KafkaSource(consumer, {
    queue,
    toRow: (value) =>
      messageToRow(value, {
        maxPastAgeMs: config.maxPastAgeMs,
        maxFutureSkewMs: config.maxFutureSkewMs,
      }),
    deadLetters,
  }, {
    onBatch: (e) => {
      metrics.onBatch(e);
      recorder.onDeadLetters(e.deadLetterCodes);
    },
    onOwned: () => flusher.wake(),
    slotSchedule,
  });
  metrics.watch({
    nextRequestSeconds: () => (flusher.status().nextSlotAt - Date.now()) / 1000,
    lag: () => s.status().lag,
    backpressure: () => s.status().backpressure,
    refusalsInARow: () => flusher.status().refusalsInARow,
  });

  const recorder = new StatusRecorder();
  const snapshotParts: SnapshotParts = {
    queue,
    source: () => s.status(),
    flusher: () => flusher.status(),
    recorder,
    dedupSetting: config.clickhouseDedup,
  };
  const sample = () =>
    sampleHistory(snapshotParts).catch((err) =>
      log.warn("Cannot sample the queue for the status history: {error}", { error: String(err) })
    );
  const sampler = setInterval(sample, recorder.sampleMs);
  await sample();

  const stopping = new AbortController();
  let kvOpen = true;
  const server = config.metricsListen === null ? null : serveObservability(config.metricsListen, {
    registry: metrics.registry,
    readiness: () => ({
      kafka: s.status().joined,
      kv: kvOpen,
      clickhouse: flusher.status().last?.outcome ?? "unknown",
    }),
    status: () => takeSnapshot(snapshotParts),
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

  let stopped: Promise<void> | null = null;
  const service: Service = {
    queue,
    metrics,
    status: () => ({ source: s.status(), flusher: flusher.status() }),
    snapshot: () => takeSnapshot(snapshotParts),
    stop() {
      stopped ??= (async () => {
        log.info("Stopping: no more fetches; finishing the current commit and request");
        await s.stop();
        await flusher.stop({ graceMs: config.shutdownGraceMs });
        await yields?.stop();
        await deadLetters.disconnect();
        stopping.abort();
        clearInterval(sampler);
        await cron;
        await server?.finished;
        kvOpen = false;
        queue.close();
        lock.release();
        log.info("Stopped cleanly");
      })();
      return stopped;
    },
  };

  const brokers = config.kafkaBrokers.join(",");
  try {
    await untilKafka("connect the dead-letter producer", () => deadLetters.connect(), {
      brokers,
      signal: options.signal,
    });
    await untilKafka("check the dead-letter topic", () =>
      deadLetters.ensureTopic({
        partitions: config.kafkaDlqPartitions,
        retentionMs: config.kafkaDlqRetentionMs,
      }), { brokers, signal: options.signal });
    if (yields !== null) {
      const handedOver = (y: SlotYield) => {
        if (slotSchedule.receive(y)) flusher.wake();
      };
      await untilKafka("start the slot hand-over channel", () => yields.start(handedOver), {
        brokers,
        signal: options.signal,
      });
    }
    flusher.start();
    await untilKafka("join the consumer group", () => s.start(), {
      brokers,
      signal: options.signal,
    });
  } catch (err) {
    await service.stop();
    throw err;
  }
  log.info("anonymizer {instance} consuming {topic} from {brokers} into {url}, queue {kv}", {
    instance: queue.instanceId,
    kv: resolve(config.kvPath),
    topic: config.kafkaTopic,
    brokers,
    url: config.clickhouseUrl,
  });
  return service;
}

/**
 * Runs `step` until it succeeds, waiting with capped backoff between tries
 * and logging one line per failed try that names `KAFKA_BROKERS`. An
 * anonymizer error (Kafka refused, e.g. the dead-letter topic) is not
 * retried. Rejects with the signal's reason once `options.signal` aborts.
 */
async function untilKafka(
  what: string,
  step: () => Promise<unknown>,
  options: { brokers: string; signal?: AbortSignal | undefined },
): Promise<void> {
  for (let attempt = 1;; attempt++) {
    options.signal?.throwIfAborted();
    try {
      await step();
      if (attempt > 1) {
        log.info(
          `Kafka is reachable at KAFKA_BROKERS={brokers}: could ${what} after {attempt} tries`,
          {
            brokers: options.brokers,
            attempt,
          },
        );
      }
      return;
    } catch (err) {
      if (err instanceof AnonymizerError) throw err;
      const waitMs = Math.min(KAFKA_RETRY_MAX_MS, KAFKA_RETRY_FIRST_MS * 2 ** (attempt - 1));
      log.error(
        `Cannot ${what} with Kafka at KAFKA_BROKERS={brokers} (try {attempt}); ` +
          "not ready, retrying in {retryS} s: {error}",
        {
          brokers: options.brokers,
          attempt,
          retryS: waitMs / 1000,
          error: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
        },
      );
      await abortableDelay(waitMs, options.signal);
    }
  }
}

function abortableDelay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", aborted);
    };
    const aborted = () => {
      done();
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      done();
      resolve();
    }, ms);
    signal?.addEventListener("abort", aborted, { once: true });
  });
}
