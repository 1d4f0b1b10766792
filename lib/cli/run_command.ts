/**
 * `anonymizer run`: the service, until SIGTERM or SIGINT.
 *
 * @module
 */
import { settingsHelp } from "../config.ts";
import { startService } from "../service.ts";
import { configuredOrExit } from "./_command_config.ts";
import { tuneMalloc } from "../_malloc.ts";
import { getLogger } from "@logtape/logtape";

const log = getLogger(["anonymizer", "run"]);

const HELP = `Usage: anonymizer run [options]

Consumes HttpLogRecord messages from Kafka, masks client addresses and stores
every record exactly once in ClickHouse through ch-proxy, queueing in Deno KV.
Stops gracefully on SIGTERM or SIGINT.

Every option can also be set by its environment variable (the flag wins):
${settingsHelp()}`;

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
  const config = await configuredOrExit(args, HELP);
  if (typeof config === "number") return config;
  const malloc = tuneMalloc();
  if (malloc.skipped !== null) {
    log.info("malloc left at its defaults, so RSS may hold freed buffers: {reason}", {
      reason: malloc.skipped,
    });
  } else {
    log.debug("malloc: mmap threshold {mmapThreshold}, arenas {arenaMax}", { ...malloc });
  }
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
