/**
 * The start every command that takes the service settings shares: parse the
 * settings (or answer `--help` / a bad setting with an exit code), then set
 * up logging from them, scrubbed of the secrets.
 *
 * @module
 */
// deno-lint-ignore-file no-console -- a command talks to its user on stdout and stderr
import { type Config, loadConfig, secretValues } from "../config.ts";
import { ConfigError } from "../errors.ts";
import { configureLogging } from "../logging.ts";

/**
 * Parses settings, or prints a one-line error and returns exit code 2.
 *
 * @example
 * ```ts
 * import { configOrExit } from "./_command_config.ts";
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
 * {@linkcode configOrExit}, then logging configured from the settings.
 *
 * @example
 * ```ts
 * import { configuredOrExit } from "./_command_config.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(await configuredOrExit(["--clickhouse-timeout-ms", "x"], "usage"), 2);
 * ```
 */
export async function configuredOrExit(args: string[], help: string): Promise<Config | number> {
  const config = configOrExit(args, help);
  if (typeof config === "number") return config;
  await configureLogging({
    level: config.logLevel,
    format: config.logFormat,
    secrets: secretValues(config),
  });
  return config;
}
