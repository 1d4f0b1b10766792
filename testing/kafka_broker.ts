/**
 * A private, real Kafka 3.9 KRaft broker for tests that must stop and start
 * Kafka (the shared stack broker is never touched): the jars of
 * `.stack/kafka/libs`, the stack's `stack/kafka.properties.tmpl` with free
 * loopback ports, and its own temp folder for data and logs. Storage is
 * formatted once; {@linkcode KafkaBroker.start} after
 * {@linkcode KafkaBroker.stop} reuses the same data and ports.
 *
 * @module
 */
import { type Kafka, logLevel } from "kafkajs";
import { kafkaClient } from "../lib/source/kafka_client.ts";
import { AnonymizerError } from "../lib/errors.ts";
import { createTopic, fillTemplate, freePort } from "./stack.ts";
import { stopAndRemove } from "./_stop_and_remove.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const STACK_DIR = Deno.env.get("STACK_DIR") ?? `${ROOT}.stack`;
const PROPERTIES_TEMPLATE = `${ROOT}stack/kafka.properties.tmpl`;
const BROKER_LOG4J = `${ROOT}stack/kafka-log4j.properties`;
const TOOLS_LOG4J = `${ROOT}stack/kafka-tools-log4j.properties`;
/** The listeners the template binds; replaced by free ports. */
const TEMPLATE_BROKER = "127.0.0.1:9092";
const TEMPLATE_CONTROLLER = "127.0.0.1:9093";

/** Options of {@linkcode startKafkaBroker}. */
export interface KafkaBrokerOptions {
  /** Folder of the Kafka jars. Default: `$STACK_DIR/kafka/libs` (`.stack/kafka/libs`). */
  libs?: string;
  /** JVM heap (`-Xmx`). Default: `"384m"`. */
  heap?: string;
  /** How long a start may take until a metadata request works, ms. Default: `120_000`. */
  startTimeoutMs?: number;
}

/** A broker started by {@linkcode startKafkaBroker}. */
export interface KafkaBroker extends AsyncDisposable {
  /** Bootstrap address, `127.0.0.1:<port>`; the same across restarts. */
  readonly brokers: string;
  /** Temp folder holding data (`data/`), the rendered properties and logs. */
  readonly dir: string;
  /** The broker's log4j log (`kafka.log`). */
  readonly logPath: string;
  /** Whether the JVM runs. */
  readonly running: boolean;
  /** Starts the JVM on the existing data and waits until a metadata request works. */
  start(): Promise<void>;
  /** Sends SIGTERM (a controlled shutdown) and waits for the exit; SIGKILL after 60 s. */
  stop(): Promise<void>;
  /** Stops the broker if it runs and removes its folder. Safe to call twice. */
  close(): Promise<void>;
  /** Creates a topic with one replica and waits for its leaders. Returns `name`. */
  createTopic(name: string, partitions: number): Promise<string>;
}

/**
 * Formats storage in a fresh temp folder and starts the broker.
 *
 * @example A broker of one's own (needs java and `.stack/kafka/libs`)
 * ```ts ignore
 * import { startKafkaBroker } from "./kafka_broker.ts";
 *
 * await using broker = await startKafkaBroker();
 * await broker.createTopic("t", 3);
 * await broker.stop();
 * await broker.start();
 * ```
 */
export async function startKafkaBroker(options: KafkaBrokerOptions = {}): Promise<KafkaBroker> {
  const libs = options.libs ?? `${STACK_DIR}/kafka/libs`;
  try {
    await Deno.stat(libs);
  } catch (cause) {
    throw new AnonymizerError(
      `Cannot start a private Kafka broker as its jars are missing: ${libs} (run scripts/stack.sh up once)`,
      { code: "test_kafka_failed", cause },
    );
  }
  const dir = await Deno.makeTempDir({ prefix: "kafka-test-" });
  try {
    const port = freePort();
    let controller = freePort();
    while (controller === port) controller = freePort();
    const props = `${dir}/server.properties`;
    await Deno.writeTextFile(props, await renderProperties(`${dir}/data`, port, controller));
    await format(libs, props, dir);
    const broker = new Broker(dir, libs, props, `127.0.0.1:${port}`, options);
    await broker.start();
    return broker;
  } catch (err) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
}

/** The stack template with `data_dir` filled in and both listeners moved to the given ports. */
async function renderProperties(
  dataDir: string,
  port: number,
  controller: number,
): Promise<string> {
  const template = await Deno.readTextFile(PROPERTIES_TEMPLATE);
  for (const listener of [TEMPLATE_BROKER, TEMPLATE_CONTROLLER]) {
    if (!template.includes(listener)) {
      throw new AnonymizerError(
        `Cannot render ${PROPERTIES_TEMPLATE} for a private broker as it no longer binds ${listener}`,
        { code: "test_kafka_failed" },
      );
    }
  }
  return fillTemplate(template, { data_dir: dataDir }, {
    name: PROPERTIES_TEMPLATE,
    code: "test_kafka_failed",
  }).replaceAll(TEMPLATE_BROKER, `127.0.0.1:${port}`)
    .replaceAll(TEMPLATE_CONTROLLER, `127.0.0.1:${controller}`);
}

/** `kafka-storage format` with a random cluster id, as scripts/stack.sh does on a first start. */
async function format(libs: string, props: string, dir: string): Promise<void> {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  // An id starting with "-" reads as an option to kafka-storage (1 in 64 ids): a clear top bit
  // makes the first character a letter.
  bytes[0]! &= 0x7f;
  const clusterId = btoa(String.fromCharCode(...bytes))
    .replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
  const out = await new Deno.Command("java", {
    args: [
      "-Xmx256m",
      "-XX:+UseSerialGC",
      "-XX:TieredStopAtLevel=1",
      `-Dlog4j.configuration=file:${TOOLS_LOG4J}`,
      "-cp",
      `${libs}/*`,
      "kafka.tools.StorageTool",
      "format",
      "-t",
      clusterId,
      "-c",
      props,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(120_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  await Deno.writeTextFile(`${dir}/format.log`, text);
  if (!out.success) {
    throw new AnonymizerError(
      `Cannot format private Kafka storage in ${dir}/data: StorageTool exited with ${out.code}: ${text.trim()}`,
      { code: "test_kafka_failed" },
    );
  }
}

class Broker implements KafkaBroker {
  readonly brokers: string;
  readonly dir: string;
  readonly logPath: string;
  readonly #libs: string;
  readonly #props: string;
  readonly #heap: string;
  readonly #startTimeoutMs: number;
  #child: Deno.ChildProcess | null = null;
  #exited: Promise<Deno.CommandStatus> | null = null;
  #pumped: Promise<void> | null = null;
  #closing: Promise<void> | null = null;
  readonly #onUnload = () => {
    // The test process is ending without close(): never leave a JVM behind.
    try {
      this.#child?.kill("SIGKILL");
    } catch {
      // Already exited.
    }
  };

  constructor(
    dir: string,
    libs: string,
    props: string,
    brokers: string,
    options: KafkaBrokerOptions,
  ) {
    this.dir = dir;
    this.brokers = brokers;
    this.logPath = `${dir}/logs/kafka.log`;
    this.#libs = libs;
    this.#props = props;
    this.#heap = options.heap ?? "384m";
    this.#startTimeoutMs = options.startTimeoutMs ?? 120_000;
  }

  get running(): boolean {
    return this.#child !== null;
  }

  async start(): Promise<void> {
    if (this.#child !== null) return;
    await Deno.mkdir(`${this.dir}/logs`, { recursive: true });
    const out = await Deno.open(`${this.dir}/kafka.out`, {
      create: true,
      append: true,
      write: true,
    });
    const child = new Deno.Command("java", {
      args: [
        `-Xmx${this.#heap}`,
        "-XX:+UseSerialGC",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        `-Dlog4j.configuration=file:${BROKER_LOG4J}`,
        `-Dkafka.logs.dir=${this.dir}/logs`,
        "-cp",
        `${this.#libs}/*`,
        "kafka.Kafka",
        this.#props,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#exited = child.status;
    const writer = out.writable.getWriter();
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) await writer.write(chunk);
    };
    this.#pumped = Promise.all([pump(child.stdout), pump(child.stderr)]).then(() => writer.close());
    globalThis.addEventListener("unload", this.#onUnload);
    let exited = false;
    this.#exited.then(() => exited = true);
    const deadline = Date.now() + this.#startTimeoutMs;
    let lastError = "";
    for (;;) {
      if (exited) {
        const status = await this.#reap();
        throw new AnonymizerError(
          `Cannot start the private Kafka broker at ${this.brokers}: java exited with ${status.code}; ` +
            `last log lines:\n${await this.#tail()}`,
          { code: "test_kafka_failed" },
        );
      }
      if (Date.now() > deadline) {
        await this.stop();
        throw new AnonymizerError(
          `Cannot start the private Kafka broker at ${this.brokers}: no metadata answer within ` +
            `${this.#startTimeoutMs} ms (${lastError}); last log lines:\n${await this.#tail()}`,
          { code: "test_kafka_failed" },
        );
      }
      try {
        await this.#metadata();
        return;
      } catch (err) {
        lastError = String(err);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  /** One metadata round trip: connect, describe the cluster, list topics. */
  async #metadata(): Promise<void> {
    const admin = this.#kafka(3_000).admin();
    await admin.connect();
    try {
      const cluster = await admin.describeCluster();
      if (cluster.brokers.length === 0) throw new Error("the cluster has no brokers yet");
      await admin.listTopics();
    } finally {
      await admin.disconnect();
    }
  }

  #kafka(connectionTimeout: number): Kafka {
    return kafkaClient([this.brokers], {
      clientId: "anonymizer-tests-broker",
      kafkajs: { logLevel: logLevel.NOTHING, connectionTimeout, retry: { retries: 0 } },
    });
  }

  async stop(): Promise<void> {
    const child = this.#child;
    if (child === null) return;
    try {
      child.kill("SIGTERM");
    } catch {
      // Already exited.
    }
    const killer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already exited.
      }
    }, 60_000);
    try {
      await this.#reap();
    } finally {
      clearTimeout(killer);
    }
  }

  async #reap(): Promise<Deno.CommandStatus> {
    const status = await this.#exited!;
    await this.#pumped;
    this.#child = null;
    this.#exited = null;
    this.#pumped = null;
    globalThis.removeEventListener("unload", this.#onUnload);
    return status;
  }

  async #tail(): Promise<string> {
    const read = (p: string) => Deno.readTextFile(p).catch(() => "");
    const text = `${await read(`${this.dir}/kafka.out`)}${await read(this.logPath)}`;
    return text.split("\n").slice(-30).join("\n");
  }

  createTopic(name: string, partitions: number): Promise<string> {
    return createTopic(name, partitions, { brokers: this.brokers });
  }

  close(): Promise<void> {
    return this.#closing ??= stopAndRemove(() => this.stop(), this.dir);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
