/**
 * `anonymizer run`: the service, until SIGTERM or SIGINT.
 *
 * @module
 */
// deno-lint-ignore-file no-console -- a command talks to its user on stdout and stderr
import { type Config, loadConfig, secretValues, settingsHelp } from "../config.ts";
import { ConfigError } from "../errors.ts";
import { configureLogging } from "../logging.ts";
import { startService } from "../service.ts";

const HELP = `Usage: anonymizer run [options]

Consumes HttpLogRecord messages from Kafka, masks client addresses and stores
every record exactly once in ClickHouse through ch-proxy, queueing in Deno KV.
Stops gracefully on SIGTERM or SIGINT.

Every option can also be set by its environment variable (the flag wins):
${settingsHelp()}`;

/**
 * Parses settings, or prints a one-line error and returns exit code 2.
 * Shared by the commands that take the service settings.
 *
 * @example
 * ```ts
 * import { configOrExit } from "./run_command.ts";
 * import assert from "node:assert/strict";
 *
 * const config = configOrExit(["--kafka-topic", "logs"], "usage");
 * assert.equal(typeof config === "object" && config.kafkaTopic, "logs");
 * assert.equal(configOrExit(["--clickhouse-timeout-ms", "x"], "usage"), 2);
 * ```
 */
export function configOrExit(args: string[], help: string): Config | number {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(help);
    return 0;
  }
  try {
    return loadConfig(Deno.env.toObject(), args);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      return 2;
    }
    throw err;
  }
}

/**
 * Entry point of `anonymizer run`; resolves to the exit code.
 *
 * @example
 * ```ts
 * import { main } from "./run_command.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(await main(["--help"]), 0);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  const config = configOrExit(args, HELP);
  if (typeof config === "number") return config;
  await configureLogging({
    level: config.logLevel,
    format: config.logFormat,
    secrets: secretValues(config),
  });
  // Listen before starting: a signal during startup must stop, not kill, a flusher already sending.
  const { promise: signalled, resolve } = Promise.withResolvers<string>();
  const startup = new AbortController();
  const onSignal = (name: string) => () => {
    startup.abort(new DOMException(`stopped by ${name} during start-up`, "AbortError"));
    resolve(name);
  };
  const handlers = (["SIGTERM", "SIGINT"] as const).map((sig) => {
    const h = onSignal(sig);
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  try {
    const service = await startService(config, { signal: startup.signal });
    await signalled;
    await service.stop();
    return 0;
  } catch (err) {
    // A signal while Kafka was still unreachable: startService already stopped everything.
    if (startup.signal.aborted && err === startup.signal.reason) return 0;
    throw err;
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  }
}
