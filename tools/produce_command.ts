/**
 * `anonymizer produce`: writes synthetic records to Kafka from the command
 * line (`deno task produce`).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { parseHostPort } from "../lib/host_port.ts";
import { isTopicName, TOPIC_NAME_RULE } from "../lib/source/topic_name.ts";
import { ConfigError } from "../lib/errors.ts";
import { produce, type ProduceSummary } from "./produce.ts";

/** Options of {@linkcode main}, for embedding and tests. */
export interface ProduceCommandOptions {
  /** Environment to read KAFKA_BROKERS and KAFKA_TOPIC from. Default: `Deno.env.toObject()`. */
  env?: Record<string, string | undefined>;
  /** Receives each output line (help, progress, summary). Default: `console.log`. */
  stdout?: (line: string) => void;
  /** Receives each error line. Default: `console.error`. */
  stderr?: (line: string) => void;
  /** Stops an unbounded run. Default: SIGINT or SIGTERM. */
  signal?: AbortSignal;
  /** Milliseconds between progress lines. Default: `2000`. */
  progressIntervalMs?: number;
}

const USAGE = `Usage: anonymizer produce [options]

Writes synthetic HttpLogRecord messages (Cap'n Proto, no key, round-robin over
partitions, acks=all) to Kafka. Stops after --count records, or on Ctrl-C.

Options:
  --kafka-brokers <host:port,...>
                             Kafka bootstrap brokers. Env KAFKA_BROKERS.
                             Default: 127.0.0.1:9092
  --kafka-topic <name>       Topic to write to. Env KAFKA_TOPIC. Default: http_log
  --rate <n>                 Messages per second; 0 = as fast as Kafka acknowledges.
                             Default: 200
  --count <n>                Records to send. Default: until Ctrl-C
  --seed <n>                 Seed in [0, 4294967295] of a reproducible sequence.
                             Default: random, printed in the summary
  --distinct-ids             Give every record a distinct resourceId
  -h, --help                 Show this help

Exit status: 0 done, 1 Kafka failed, 2 bad option.`;

const FLAGS = {
  "kafka-brokers": { type: "string" },
  "kafka-topic": { type: "string" },
  rate: { type: "string" },
  count: { type: "string" },
  seed: { type: "string" },
  "distinct-ids": { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

interface Settings {
  brokers: string[];
  topic: string;
  rate: number;
  count: number | undefined;
  seed: number | undefined;
  distinctResourceIds: boolean;
}

/**
 * Runs `produce` with command-line `args` and returns the exit status: `0`
 * when the records are sent (or a signal stopped an unbounded run), `1` when
 * Kafka fails, `2` for a bad option, printed as one line naming the option and
 * its value. Prints a progress line every ~2 s and a summary line at the end.
 *
 * @example A bad option exits with 2 and one line naming it
 * ```ts
 * import { main } from "./produce_command.ts";
 * import assert from "node:assert/strict";
 *
 * const errors: string[] = [];
 * const status = await main(["--rate", "fast"], { stderr: (line) => errors.push(line) });
 * assert.equal(status, 2);
 * assert.deepEqual(errors, [
 *   'Cannot start as --rate must be a number ≥ 0 (0 = unthrottled): current value is "fast"',
 * ]);
 * ```
 */
export async function main(args: string[], options: ProduceCommandOptions = {}): Promise<number> {
  // deno-lint-ignore no-console -- a command's output is its interface, not logging
  const stdout = options.stdout ?? ((line: string) => console.log(line));
  // deno-lint-ignore no-console -- as above
  const stderr = options.stderr ?? ((line: string) => console.error(line));
  let settings: Settings | "help";
  try {
    settings = parseSettings(args, options.env ?? Deno.env.toObject());
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    stderr(err.message);
    return 2;
  }
  if (settings === "help") {
    stdout(USAGE);
    return 0;
  }

  const controller = new AbortController();
  const stop = () => controller.abort();
  const signals = ["SIGINT", "SIGTERM"] as const;
  if (options.signal === undefined) {
    for (const name of signals) Deno.addSignalListener(name, stop);
  }
  const progressIntervalMs = options.progressIntervalMs ?? 2_000;
  let nextProgress = progressIntervalMs;
  try {
    const summary = await produce(settings.brokers, {
      topic: settings.topic,
      rate: settings.rate,
      count: settings.count,
      seed: settings.seed,
      distinctResourceIds: settings.distinctResourceIds,
      signal: options.signal ?? controller.signal,
      onProgress: ({ sent, elapsedMs }) => {
        if (elapsedMs < nextProgress) return;
        nextProgress = elapsedMs + progressIntervalMs;
        stdout(`produce: sent ${sent} records, ${perSecond(sent, elapsedMs)} msg/s`);
      },
    });
    stdout(summaryLine(summary));
    return 0;
  } catch (err) {
    stderr(err instanceof Error ? err.message : String(err));
    return 1;
  } finally {
    if (options.signal === undefined) {
      for (const name of signals) Deno.removeSignalListener(name, stop);
    }
  }
}

function parseSettings(args: string[], env: Record<string, string | undefined>): Settings | "help" {
  // Not strict: node's own errors span several lines; these checks name the option in one.
  const { values, tokens } = parseArgs({
    args,
    options: FLAGS,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  for (const token of tokens) {
    if (token.kind === "positional") {
      throw new ConfigError("produce", token.value, "takes no positional argument");
    }
    if (token.kind !== "option") continue;
    const flag = FLAGS[token.name as keyof typeof FLAGS];
    if (flag === undefined) {
      throw new ConfigError(
        "an option",
        token.rawName,
        `must be one of ${Object.keys(FLAGS).map((name) => `--${name}`).join(", ")}`,
      );
    }
    if (flag.type === "string" && token.value === undefined) {
      throw new ConfigError(token.rawName, "", "needs a value");
    }
    if (flag.type === "boolean" && token.value !== undefined) {
      throw new ConfigError(token.rawName, token.value, "takes no value");
    }
  }
  if (values.help) return "help";
  const text = (flag: keyof typeof FLAGS): string | undefined => {
    const value = values[flag];
    return typeof value === "string" ? value : undefined;
  };

  const brokersFlag = text("kafka-brokers");
  const brokersSource = brokersFlag !== undefined ? "--kafka-brokers" : "KAFKA_BROKERS";
  const brokersValue = brokersFlag ?? env.KAFKA_BROKERS ?? "127.0.0.1:9092";
  const brokers = brokersValue.split(",").map((b) => b.trim());
  if (brokers.some((b) => parseHostPort(b) === null)) {
    throw new ConfigError(brokersSource, brokersValue, "must be host:port[,host:port...]");
  }
  const topicFlag = text("kafka-topic");
  const topicSource = topicFlag !== undefined ? "--kafka-topic" : "KAFKA_TOPIC";
  const topic = topicFlag ?? env.KAFKA_TOPIC ?? "http_log";
  if (!isTopicName(topic)) throw new ConfigError(topicSource, topic, TOPIC_NAME_RULE);
  const rate = parseNumber(
    text("rate"),
    "--rate",
    /^\d+(\.\d+)?$/,
    "a number ≥ 0 (0 = unthrottled)",
  );
  const count = parseNumber(text("count"), "--count", /^\d+$/, "a whole number ≥ 0");
  const seed = parseNumber(text("seed"), "--seed", /^\d+$/, "an integer in [0, 4294967295]");
  if (seed !== undefined && seed > 0xffff_ffff) {
    throw new ConfigError("--seed", text("seed")!, "must be an integer in [0, 4294967295]");
  }
  return {
    brokers,
    topic,
    rate: rate ?? 200,
    count,
    seed,
    distinctResourceIds: values["distinct-ids"] === true,
  };
}

function parseNumber(
  value: string | undefined,
  flag: string,
  shape: RegExp,
  rule: string,
): number | undefined {
  if (value === undefined) return undefined;
  const number = Number(value);
  if (!shape.test(value) || !Number.isSafeInteger(Math.floor(number))) {
    throw new ConfigError(flag, value, `must be ${rule}`);
  }
  return number;
}

function perSecond(sent: number, elapsedMs: number): string {
  return elapsedMs > 0 ? (sent / (elapsedMs / 1000)).toFixed(1) : "0.0";
}

function summaryLine(s: ProduceSummary): string {
  const partitions = s.partitions.length > 0 ? s.partitions.join(",") : "none";
  return `produce: ${s.aborted ? "stopped after" : "done,"} ${s.sent} records to ${s.topic} ` +
    `(partitions ${partitions}) in ${(s.elapsedMs / 1000).toFixed(1)} s, ` +
    `${perSecond(s.sent, s.elapsedMs)} msg/s, seed ${s.seed}`;
}
