/**
 * Helpers for integration tests against the real local stack started by
 * `deno task stack:up` (Kafka, ClickHouse 18.16 and ch-proxy on 127.0.0.1):
 * its endpoints, a private ch-proxy per test, direct ClickHouse queries and
 * per-test Kafka topics; also what every private server of the tests
 * (ch-proxy here, testing/clickhouse_server.ts, testing/kafka_broker.ts) needs:
 * stack templates filled the way scripts/stack.sh fills them, free loopback
 * ports, and Kafka clients on any broker list.
 *
 * @module
 */

import { type Admin, type Kafka, logLevel } from "kafkajs";
import { kafkaClient as anonymizerKafkaClient } from "../lib/source/kafka_client.ts";
import { AnonymizerError, type ErrorCode } from "../lib/errors.ts";

/** Kafka bootstrap brokers, comma-separated. Env `TEST_KAFKA_BROKERS`. Default: `"127.0.0.1:9092"`. */
export const KAFKA_BROKERS: string = Deno.env.get("TEST_KAFKA_BROKERS") ?? "127.0.0.1:9092";

/** One ClickHouse server of the stack that the tests run against. */
export interface ClickHouseTarget {
  /** `"18.16"` (Debian's clickhouse-server) or `"modern"` (ClickHouse 26.9 in chDB, over HTTP). */
  readonly name: "18.16" | "modern";
  /** Its HTTP endpoint, without the proxy. */
  readonly url: string;
  /** The stack's shared ch-proxy in front of it. */
  readonly proxyUrl: string;
}

/** Every server of the stack, whichever a run chose; the modern one is last. */
export const ALL_TARGETS: readonly ClickHouseTarget[] = [
  {
    name: "18.16",
    url: Deno.env.get("TEST_CLICKHOUSE_URL") ?? "http://127.0.0.1:8123",
    proxyUrl: Deno.env.get("TEST_PROXY_URL") ?? "http://127.0.0.1:8124",
  },
  {
    name: "modern",
    url: Deno.env.get("TEST_MODERN_CLICKHOUSE_URL") ?? "http://127.0.0.1:8125",
    proxyUrl: Deno.env.get("TEST_MODERN_PROXY_URL") ?? "http://127.0.0.1:8126",
  },
];

/**
 * The ClickHouse servers every ClickHouse test runs on, chosen by env
 * `TEST_CLICKHOUSE`: `18.16`, `modern` or `both` (the default), as
 * `STACK_CLICKHOUSE` chooses what `scripts/stack.sh up` starts. A test loops
 * over them, so each server gets its own named test.
 *
 * @example One test per server
 * ```ts
 * import { CLICKHOUSE_TARGETS } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * assert.ok(CLICKHOUSE_TARGETS.length >= 1);
 * for (const target of CLICKHOUSE_TARGETS) assert.match(target.url, /^http:\/\/127\./);
 * ```
 */
export const CLICKHOUSE_TARGETS: readonly ClickHouseTarget[] = (() => {
  const chosen = Deno.env.get("TEST_CLICKHOUSE") ?? "both";
  if (chosen === "both") return ALL_TARGETS;
  const one = ALL_TARGETS.filter((t) => t.name === chosen);
  if (one.length === 0) {
    throw new AnonymizerError(
      `Cannot choose test servers as TEST_CLICKHOUSE must be 18.16, modern or both: current value is ${
        JSON.stringify(chosen)
      }`,
      { code: "test_config_invalid" },
    );
  }
  return one;
})();

/**
 * The server a test that does not loop over {@linkcode CLICKHOUSE_TARGETS}
 * runs on: the first chosen. The test matrix (`scripts/test_stack.sh`) runs
 * the stack tests once per server with `TEST_CLICKHOUSE` set to it, so every
 * test meets both servers.
 */
export const CLICKHOUSE_TARGET: ClickHouseTarget = CLICKHOUSE_TARGETS[0]!;

/**
 * ClickHouse HTTP endpoint of {@linkcode CLICKHOUSE_TARGET}, without the
 * proxy. Env `TEST_CLICKHOUSE_URL` (18.16) or `TEST_MODERN_CLICKHOUSE_URL`.
 * Default: `"http://127.0.0.1:8123"` for 18.16, `"http://127.0.0.1:8125"` for modern.
 */
export const CLICKHOUSE_URL: string = CLICKHOUSE_TARGET.url;

/**
 * The stack's shared ch-proxy in front of {@linkcode CLICKHOUSE_TARGET}. Its
 * one request a minute is shared by everyone using the stack: a test that
 * needs a request slot of its own uses {@linkcode startProxy}. Env
 * `TEST_PROXY_URL` (18.16) or `TEST_MODERN_PROXY_URL`. Default:
 * `"http://127.0.0.1:8124"` for 18.16, `"http://127.0.0.1:8126"` for modern.
 */
export const PROXY_URL: string = CLICKHOUSE_TARGET.proxyUrl;

const NGINX_TEMPLATE = new URL("../stack/nginx.conf.tmpl", import.meta.url);

/** One line of a ch-proxy access log (log_format `ch_proxy` in stack/nginx.conf.tmpl). */
export interface AccessLogEntry {
  /** When the response ended (`$msec`): seconds since the Unix epoch, millisecond precision. */
  msec: number;
  /** Status sent to the client (`$status`): 503 when the rate limit refused, 413 for a large body. */
  status: number;
  /** `$request_method`, e.g. `"POST"`. */
  method: string;
  /** `$request_uri`: path and query string as the client sent them. */
  uri: string;
  /** `$request_length`: bytes received, headers included. */
  requestLength: number;
  /** `$request_time`: seconds from the first byte read to the last byte sent. */
  requestTime: number;
  /** `$upstream_status`: ClickHouse's status, or `""` when the request never reached it. */
  upstreamStatus: string;
}

/** Options of {@linkcode startProxy}. */
export interface StartProxyOptions {
  /** `limit_req` rate, e.g. `"60r/m"`. Default: `"1r/m"`, as in production. */
  rate?: string;
  /** ClickHouse HTTP `host:port` to forward to. Default: the host of {@linkcode CLICKHOUSE_URL}. */
  upstream?: string;
  /** nginx `client_max_body_size`, e.g. `"10m"`. Default: unset, so nginx's 1 MiB applies, as in production. */
  clientMaxBodySize?: string;
}

/** A private ch-proxy started by {@linkcode startProxy}. */
export interface TestProxy extends AsyncDisposable {
  /** Base URL, e.g. `"http://127.0.0.1:40123"`. */
  readonly url: string;
  /** Path of its access log; removed by {@linkcode TestProxy.close}. */
  readonly accessLogPath: string;
  /** Reads every access log entry so far, oldest first. */
  readAccessLog(): Promise<AccessLogEntry[]>;
  /** Stops nginx and removes its folder. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Starts a real nginx from the ch-proxy template on a free loopback port, with
 * its own temp folder, so a test gets a fresh rate-limit state and its own
 * access log instead of using up the shared proxy's request slot.
 *
 * @example A private proxy at the production rate
 * ```ts
 * import { startProxy } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * await using proxy = await startProxy();
 * assert.match(proxy.url, /^http:\/\/127\.0\.0\.1:\d+$/);
 * assert.deepEqual(await proxy.readAccessLog(), []);
 * ```
 */
export async function startProxy(options: StartProxyOptions = {}): Promise<TestProxy> {
  const template = await Deno.readTextFile(NGINX_TEMPLATE);
  // A port picked free may be taken before nginx binds it; another try gets another port.
  for (let attempt = 1;; attempt++) {
    const dir = await Deno.makeTempDir({ prefix: "ch-proxy-test-" });
    try {
      return await startNginx(dir, template, options);
    } catch (err) {
      await Deno.remove(dir, { recursive: true });
      if (!(err instanceof PortTakenError) || attempt === 3) throw err;
    }
  }
}

class PortTakenError extends AnonymizerError {
  constructor(message: string) {
    super(message, { code: "test_proxy_port_taken", retriable: true });
    this.name = "PortTakenError";
  }
}

async function startNginx(
  dir: string,
  template: string,
  options: StartProxyOptions,
): Promise<TestProxy> {
  // Workers run as nobody when tests run as root, and write body temp files here.
  await Deno.chmod(dir, 0o755);
  const port = freePort();
  const conf = `${dir}/nginx.conf`;
  const pidFile = `${dir}/nginx.pid`;
  const errorLog = `${dir}/error.log`;
  const accessLogPath = `${dir}/access.log`;
  await Deno.writeTextFile(
    conf,
    fillTemplate(template, {
      listen: `127.0.0.1:${port}`,
      upstream: options.upstream ?? new URL(CLICKHOUSE_URL).host,
      rate: options.rate ?? "1r/m",
      state_dir: dir,
      access_log: accessLogPath,
      error_log: errorLog,
      client_max_body_size: options.clientMaxBodySize === undefined
        ? ""
        : `client_max_body_size ${options.clientMaxBodySize};`,
    }, { name: "stack/nginx.conf.tmpl", code: "test_proxy_failed" }),
  );
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("nginx", {
      args: ["-p", dir, "-c", conf, "-e", errorLog],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  } catch (cause) {
    if (!(cause instanceof Deno.errors.NotFound)) throw cause;
    throw new AnonymizerError(
      "Cannot start a test ch-proxy as nginx is not on PATH: run scripts/install.sh, and put /usr/sbin on PATH",
      { code: "test_proxy_failed", cause },
    );
  }
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });

  // nginx writes its pid file once it listens.
  const deadline = Date.now() + 10_000;
  while (await readOrEmpty(pidFile) !== `${child.pid}\n`) {
    if (exited || Date.now() > deadline) {
      const timedOut = !exited;
      if (timedOut) child.kill("SIGKILL");
      const code = (await status).code;
      const log = await readOrEmpty(errorLog);
      const message = `Cannot start a test ch-proxy on 127.0.0.1:${port}: nginx ${
        timedOut ? "did not listen within 10 s" : `exited with code ${code}`
      }; its error log says: ${log.trim()}`;
      throw log.includes("Address already in use")
        ? new PortTakenError(message)
        : new AnonymizerError(message, { code: "test_proxy_failed" });
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    closing ??= (async () => {
      if (!exited) child.kill("SIGTERM");
      await status;
      await Deno.remove(dir, { recursive: true });
    })();
  return {
    url: `http://127.0.0.1:${port}`,
    accessLogPath,
    readAccessLog: async () =>
      (await Deno.readTextFile(accessLogPath)).split("\n").filter((line) => line !== "")
        .map((line) => JSON.parse(line) as AccessLogEntry),
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** Options of {@linkcode fillTemplate}. */
export interface FillTemplateOptions {
  /** The template's name in the error, e.g. `"stack/nginx.conf.tmpl"`. Required. */
  name: string;
  /** `code` of the error thrown for a leftover placeholder. Required. */
  code: ErrorCode;
}

/**
 * Fills `{{key}}` placeholders of a stack/ template the way scripts/stack.sh
 * does, and refuses a placeholder left without a value, so a template that
 * grew a setting fails loudly instead of starting a half-configured server.
 *
 * @example
 * ```ts
 * import { fillTemplate } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * const options = { name: "x.tmpl", code: "test_failed" };
 * assert.equal(fillTemplate("listen {{listen}};", { listen: "127.0.0.1:1" }, options), "listen 127.0.0.1:1;");
 * assert.throws(() => fillTemplate("{{rate}}", {}, options), /placeholder \{\{rate\}\} has no value/);
 * ```
 */
export function fillTemplate(
  template: string,
  values: Record<string, string>,
  options: FillTemplateOptions,
): string {
  let text = template;
  for (const [key, value] of Object.entries(values)) text = text.replaceAll(`{{${key}}}`, value);
  const left = text.match(/\{\{[a-z_]+\}\}/);
  if (left !== null) {
    throw new AnonymizerError(
      `Cannot render ${options.name} as placeholder ${left[0]} has no value`,
      { code: options.code },
    );
  }
  return text;
}

/**
 * A free TCP port on 127.0.0.1: free when asked, so another process may take
 * it before the caller binds it (the servers started here retry on that).
 *
 * @example
 * ```ts
 * import { freePort } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * assert.ok(freePort() > 0);
 * ```
 */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  listener.close();
  return listener.addr.port;
}

/** The text of the file at `path`, or `""` while it does not exist (e.g. a log not written yet). */
export async function readOrEmpty(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return "";
    throw err;
  }
}

/** Options of {@linkcode clickhouseQuery}. */
export interface ClickHouseQueryOptions {
  /**
   * Data following the query, e.g. the rows of `INSERT ... FORMAT TSV`; the
   * query then travels in the URL. Default: none, the query is the body.
   */
  body?: BodyInit;
  /** Database the query runs in. Default: the server's `default`. */
  database?: string;
  /** ClickHouse HTTP endpoint. Default: {@linkcode CLICKHOUSE_URL}. */
  url?: string;
}

/**
 * Runs `sql` on ClickHouse directly (bypassing ch-proxy and its rate limit)
 * and returns the response body. Throws when ClickHouse is unreachable or
 * answers with a non-2xx status, with its error text in the message.
 *
 * @example Query and insert
 * ```ts
 * import { clickhouseQuery } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(await clickhouseQuery("SELECT 1 + 1"), "2\n");
 * ```
 */
export async function clickhouseQuery(
  sql: string,
  options: ClickHouseQueryOptions = {},
): Promise<string> {
  const url = new URL(options.url ?? CLICKHOUSE_URL);
  if (options.database !== undefined) url.searchParams.set("database", options.database);
  if (options.body !== undefined) url.searchParams.set("query", sql);
  const shown = JSON.stringify(sql.length > 200 ? `${sql.slice(0, 200)}...` : sql);
  let res: Response;
  try {
    res = await fetch(url, {
      method: "POST",
      body: options.body ?? sql,
      signal: AbortSignal.timeout(60_000),
    });
  } catch (cause) {
    throw new AnonymizerError(
      `Cannot run ${shown} as ClickHouse at ${url.origin} did not answer (is the stack up? deno task stack:up): ${cause}`,
      { code: "test_clickhouse_unreachable", cause },
    );
  }
  const text = await res.text();
  if (!res.ok) {
    throw new AnonymizerError(
      `Cannot run ${shown} as ClickHouse at ${url.origin} answered ${res.status}: ${text.trim()}`,
      { code: "test_clickhouse_failed" },
    );
  }
  return text;
}

/**
 * A name no other test run uses: `prefix`, the time and random hex, joined by
 * `_` so it is valid both as a Kafka topic and as a ClickHouse identifier.
 *
 * @example
 * ```ts
 * import { uniqueName } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * assert.match(uniqueName("http_log"), /^http_log_[a-z0-9]+_[0-9a-f]{8}$/);
 * assert.notEqual(uniqueName("t"), uniqueName("t"));
 * ```
 */
export function uniqueName(prefix: string): string {
  if (!/^[A-Za-z][A-Za-z0-9_]*$/.test(prefix)) {
    throw new AnonymizerError(
      `Cannot make a unique name as the prefix must be letters, digits and _, starting with a letter: current value is ${
        JSON.stringify(prefix)
      }`,
      { code: "test_name_invalid" },
    );
  }
  return `${prefix}_${Date.now().toString(36)}_${crypto.randomUUID().slice(0, 8)}`;
}

/** Options of {@linkcode kafkaClient}, {@linkcode createTopic} and {@linkcode topicMessageCount}. */
export interface KafkaTestOptions {
  /** Bootstrap brokers, comma-separated. Default: {@linkcode KAFKA_BROKERS}, the shared stack's. */
  brokers?: string;
}

/** Options of {@linkcode withKafkaAdmin}. */
export interface KafkaAdminOptions extends KafkaTestOptions {
  /** Kafka client id. Default: `"anonymizer-tests"`. */
  clientId?: string;
}

/**
 * A kafkajs client of the tests on {@linkcode KAFKA_BROKERS} (or
 * `options.brokers`), with kafkajs's own logging off: a test reports what it
 * sees itself.
 *
 * @example
 * ```ts
 * import { kafkaClient } from "./stack.ts";
 *
 * const admin = kafkaClient("anonymizer-tests").admin();
 * await admin.connect();
 * await admin.disconnect();
 * ```
 */
export function kafkaClient(clientId: string, options: KafkaTestOptions = {}): Kafka {
  return anonymizerKafkaClient((options.brokers ?? KAFKA_BROKERS).split(","), {
    clientId,
    kafkajs: { logLevel: logLevel.NOTHING },
  });
}

/**
 * Runs `fn` with a connected kafkajs admin client of
 * {@linkcode kafkaClient}, and disconnects it afterwards whatever happens.
 *
 * @example
 * ```ts
 * import { withKafkaAdmin } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * const cluster = await withKafkaAdmin((admin) => admin.describeCluster());
 * assert.ok(cluster.brokers.length > 0);
 * ```
 */
export async function withKafkaAdmin<T>(
  fn: (admin: Admin) => Promise<T>,
  options: KafkaAdminOptions = {},
): Promise<T> {
  const admin = kafkaClient(options.clientId ?? "anonymizer-tests", options).admin();
  await admin.connect();
  try {
    return await fn(admin);
  } finally {
    await admin.disconnect();
  }
}

/**
 * Creates Kafka topic `name` on {@linkcode KAFKA_BROKERS} (or
 * `options.brokers`, e.g. a private broker's) with one replica and waits for
 * its partition leaders. Throws if it already exists, so two tests never
 * share a topic by accident. Returns `name`.
 *
 * @example A fresh topic for one test
 * ```ts
 * import { createTopic, uniqueName } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * const topic = await createTopic(uniqueName("example"), 3);
 * assert.match(topic, /^example_/);
 * ```
 */
export async function createTopic(
  name: string,
  partitions: number,
  options: KafkaTestOptions = {},
): Promise<string> {
  const created = await withKafkaAdmin((admin) =>
    admin.createTopics({
      topics: [{ topic: name, numPartitions: partitions, replicationFactor: 1 }],
      waitForLeaders: true,
    }), options);
  if (!created) {
    throw new AnonymizerError(
      `Cannot create Kafka topic ${JSON.stringify(name)} on ${
        options.brokers ?? KAFKA_BROKERS
      } as it already exists: use uniqueName()`,
      { code: "test_topic_exists" },
    );
  }
  return name;
}

/**
 * Messages in `topic` on {@linkcode KAFKA_BROKERS} (or `options.brokers`):
 * the sum over partitions of high minus low watermark.
 *
 * @example
 * ```ts
 * import { createTopic, topicMessageCount, uniqueName } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * const topic = await createTopic(uniqueName("example"), 1);
 * assert.equal(await topicMessageCount(topic), 0);
 * ```
 */
export async function topicMessageCount(
  topic: string,
  options: KafkaTestOptions = {},
): Promise<number> {
  const offsets = await withKafkaAdmin((admin) => admin.fetchTopicOffsets(topic), options);
  return offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
}
