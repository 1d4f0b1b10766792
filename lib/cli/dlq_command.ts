/**
 * `anonymizer dlq replay`: re-validates dead letters with the current
 * settings and queues what now passes, exactly once; `--dry-run` only counts.
 *
 * @module
 */
// deno-lint-ignore-file no-console -- a command talks to its user on stdout and stderr
import { dirname } from "node:path";
import { type Config, settingsHelp } from "../config.ts";
import { ConfigError, QueueError } from "../errors.ts";
import { lockKvPath } from "../queue/kv_lock.ts";
import { openQueue } from "../queue/kv_queue.ts";
import { isUnreachable } from "../source/dead_letters.ts";
import { countDeadLetters } from "../source/dlq_count.ts";
import {
  type DlqFilter,
  type DlqProgress,
  type DlqSummary,
  replayDeadLetters,
  type ReplayOptions,
} from "../source/dlq_replay.ts";
import { configuredOrExit } from "./_command_config.ts";

const HELP = `Usage: anonymizer dlq replay [--code C] [--since T] [--dry-run] [options]

Re-reads the dead-letter topic (KAFKA_DLQ_TOPIC) up to its end offsets at the
start and re-validates every dead letter with the current settings, e.g. a
raised --max-past-age-ms. What now passes is queued exactly once into the
service's queue (KV_PATH), fenced by the consumer group
<KAFKA_GROUP_ID>-dlq-replay; the service flushes it when it starts again.
What still fails stays in the dead-letter topic and is not written again.
Prints the counts by code: replayed, still dead, skipped by filter.

The replay holds the lock of KV_PATH: stop the service on that queue first.
A dead letter left out by --code or --since is passed over for good by the
replay group: count first with --dry-run.

  --code C     only dead letters with anonymizer.error.code C
  --since T    only dead letters the dead-letter topic received at or after T:
               an ISO 8601 time, epoch milliseconds, or a duration back from
               now (90s, 30m, 6h, 2d)
  --dry-run    count only: queue nothing, commit nothing (runs beside the service)

Every service setting applies, from its environment variable or flag:
${settingsHelp()}`;

const DURATION_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** The command's own flags, and the rest for the service settings. */
interface DlqArgs {
  filter: DlqFilter;
  dryRun: boolean;
  rest: string[];
}

/**
 * Entry point of `anonymizer dlq`; resolves to the exit code.
 *
 * @example
 * ```ts
 * import { main } from "./dlq_command.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(await main(["replay", "--help"]), 0);
 * assert.equal(await main(["replay", "--since", "yesterday"]), 2);
 * assert.equal(await main(["purge"]), 2);
 * assert.equal(await main([]), 2);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  const [action, ...rest] = args;
  if (action === undefined || action === "--help" || action === "-h") {
    console.log(HELP);
    return action === undefined ? 2 : 0;
  }
  if (action !== "replay") {
    console.error(
      `Cannot run dlq as the action must be replay: current value is ${JSON.stringify(action)}`,
    );
    console.error(HELP.split("\n")[0]);
    return 2;
  }
  let parsed: DlqArgs;
  try {
    parsed = parseDlqArgs(rest, Date.now());
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(err.message);
    return 2;
  }
  const config = await configuredOrExit(parsed.rest, HELP);
  if (typeof config === "number") return config;
  const interrupt = new AbortController();
  const onSignal = () => interrupt.abort(new DOMException("interrupted", "AbortError"));
  for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, onSignal);
  let lastProgress = Date.now();
  const options = {
    filter: parsed.filter,
    signal: interrupt.signal,
    onProgress: (p: DlqProgress) => {
      if (Date.now() - lastProgress < 5_000) return;
      lastProgress = Date.now();
      console.error(`… ${p.read} dead letters read, ${p.remaining} left`);
    },
  };
  try {
    const summary = parsed.dryRun
      ? await countDeadLetters(config, options)
      : await replayInto(config, options);
    console.log(formatSummary(summary, { dryRun: parsed.dryRun, kvPath: config.kvPath }));
    return 0;
  } catch (err) {
    if (interrupt.signal.aborted && err === interrupt.signal.reason) {
      console.error(
        "Interrupted: rows queued so far stay queued and fenced; run dlq replay again to continue",
      );
      return 130;
    }
    if (err instanceof QueueError && err.code === "kv_locked") {
      console.error(err.message);
      console.error(
        "dlq replay writes into the service's queue: stop the service on this KV_PATH first, " +
          "or count with --dry-run",
      );
      return 1;
    }
    if (isUnreachable(err)) {
      console.error(
        `Cannot replay dead letters as Kafka is unreachable at KAFKA_BROKERS=${
          config.kafkaBrokers.join(",")
        }: ${(err as Error).name}: ${(err as Error).message}`,
      );
      return 1;
    }
    throw err;
  } finally {
    for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.removeSignalListener(sig, onSignal);
  }
}

async function replayInto(
  config: Config,
  options: ReplayOptions,
): Promise<DlqSummary> {
  await Deno.mkdir(dirname(config.kvPath), { recursive: true });
  using _lock = await lockKvPath(config.kvPath);
  await using queue = await openQueue(config.kvPath);
  return await replayDeadLetters(queue, config, options);
}

function parseDlqArgs(args: readonly string[], now: number): DlqArgs {
  const out: DlqArgs = { filter: {}, dryRun: false, rest: [] };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const [flag, inline] = arg.startsWith("--") && arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, undefined];
    if (flag === "--dry-run" && inline === undefined) {
      out.dryRun = true;
      continue;
    }
    if (flag !== "--code" && flag !== "--since") {
      out.rest.push(arg);
      continue;
    }
    const value = inline ?? args[++i];
    if (value === undefined) throw new ConfigError(flag, "", "needs a value");
    if (flag === "--code") {
      if (!/^[a-z0-9_]+$/.test(value)) {
        throw new ConfigError(flag, value, "must be an error code such as timestamp_too_old");
      }
      out.filter.code = value;
    } else {
      out.filter.since = parseSince(value, now);
    }
  }
  return out;
}

function parseSince(raw: string, now: number): number {
  const duration = /^(\d+)([smhd])$/.exec(raw);
  if (duration !== null) return now - Number(duration[1]) * DURATION_MS[duration[2]!]!;
  const t = /^\d+$/.test(raw) ? Number(raw) : Date.parse(raw);
  if (!Number.isFinite(t) || t < 0) {
    throw new ConfigError(
      "--since",
      raw,
      "must be an ISO 8601 time, epoch milliseconds or a duration such as 30m, 6h or 2d",
    );
  }
  return t;
}

function formatSummary(summary: DlqSummary, options: { dryRun: boolean; kvPath: string }): string {
  const lines = [
    `Dead letters of ${JSON.stringify(summary.topic)}, replay group ${
      JSON.stringify(summary.groupId)
    }${options.dryRun ? " (dry run: nothing queued or committed)" : ""}: ${summary.read} read`,
  ];
  const rows = Object.entries(summary.byCode);
  if (rows.length > 0) {
    const width = Math.max(5, ...rows.map(([code]) => code.length));
    const line = (code: string, a: number, b: number, c: number) =>
      `${code.padEnd(width)}  ${String(a).padStart(8)}  ${String(b).padStart(10)}  ${
        String(c).padStart(17)
      }`;
    lines.push(`${"code".padEnd(width)}  ${"replayed"}  ${"still dead"}  skipped by filter`);
    const total = { replayed: 0, stillDead: 0, skipped: 0 };
    for (const [code, c] of rows) {
      lines.push(line(code, c.replayed, c.stillDead, c.skipped));
      total.replayed += c.replayed;
      total.stillDead += c.stillDead;
      total.skipped += c.skipped;
    }
    lines.push(line("total", total.replayed, total.stillDead, total.skipped));
    const now = Object.entries(summary.stillDeadNow).map(([code, n]) => `${code} ${n}`);
    if (now.length > 0) lines.push(`Still dead, by the code they fail with now: ${now.join(", ")}`);
  }
  if (!options.dryRun && rows.some(([, c]) => c.replayed > 0)) {
    lines.push(
      `Replayed rows are queued in KV_PATH ${
        JSON.stringify(options.kvPath)
      }; the service sends them when it starts.`,
    );
  }
  return lines.join("\n");
}
