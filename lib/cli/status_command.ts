/**
 * `anonymizer status`: asks a running instance for its status snapshot
 * (`/status.json` on its observability listener) and prints it as a short
 * table, or as JSON with `--json`.
 *
 * @module
 */
// deno-lint-ignore-file no-console -- a command talks to its user on stdout and stderr
import { settingsHelp } from "../config.ts";
import { AnonymizerError } from "../errors.ts";
import { renderStatus, type StatusSnapshot } from "../status.ts";
import { configOrExit } from "./_command_config.ts";

/** How long the instance may take to answer, ms. */
const TIMEOUT_MS = 5_000;

const HELP = `Usage: anonymizer status [--json] [--url URL] [options]

Asks a running anonymizer for its status and prints a short table: partitions
owned and consumer lag, rows queued and the oldest row's age, the sealed batch,
the next request slot, the last ClickHouse requests, refusals, dead letters by
code, and the ClickHouse version and dedup mode. The same view is a page at
the instance's address, e.g. http://127.0.0.1:9464/.

  --json      print the status as JSON (what /status.json serves), for scripts
  --url URL   the instance's observability address, e.g. http://10.0.0.5:9464
              (default: http://METRICS_LISTEN, a wildcard host read as 127.0.0.1)

Settings used: METRICS_LISTEN:
${settingsHelp()}`;

/**
 * Entry point of `anonymizer status`; resolves to the exit code.
 *
 * @example
 * ```ts
 * import { main } from "./status_command.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(await main(["--help"]), 0);
 * assert.equal(await main(["--url", "ftp://x"]), 2);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  const json = args.includes("--json");
  let rest = args.filter((a) => a !== "--json");
  const i = rest.indexOf("--url");
  let base: string | undefined;
  if (i >= 0) {
    base = rest[i + 1];
    if (base === undefined || !/^https?:\/\/[^/]+/.test(base)) {
      console.error(
        `Cannot read the status as --url must be an http:// URL: current value is ${
          JSON.stringify(base ?? "")
        }`,
      );
      return 2;
    }
    rest = [...rest.slice(0, i), ...rest.slice(i + 2)];
  }
  const config = configOrExit(rest, HELP);
  if (typeof config === "number") return config;
  if (base === undefined) {
    if (config.metricsListen === null) {
      console.error(
        'Cannot read the status as METRICS_LISTEN is empty (no observability listener): current value is ""; pass --url',
      );
      return 2;
    }
    base = `http://${hostForClient(config.metricsListen.hostname)}:${config.metricsListen.port}`;
  }
  const snapshot = await fetchStatus(base);
  console.log(json ? JSON.stringify(snapshot, null, 2) : renderStatus(snapshot));
  return 0;
}

/** A listener on every address is reached on loopback; an IPv6 literal needs brackets in a URL. */
function hostForClient(hostname: string): string {
  if (hostname === "0.0.0.0" || hostname === "::" || hostname === "[::]") return "127.0.0.1";
  return hostname.includes(":") && !hostname.startsWith("[") ? `[${hostname}]` : hostname;
}

async function fetchStatus(base: string): Promise<StatusSnapshot> {
  const url = new URL("/status.json", base).href;
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (cause) {
    throw new AnonymizerError(
      `Cannot read the status as no anonymizer answered at ${url}: ${
        cause instanceof Error ? cause.message : String(cause)
      } (is it running, and is METRICS_LISTEN or --url its observability address?)`,
      { code: "status_unreachable", retriable: true, cause },
    );
  }
  if (!response.ok) {
    const body = (await response.text()).slice(0, 200).trim();
    throw new AnonymizerError(
      `Cannot read the status as ${url} answered HTTP ${response.status}: ${
        JSON.stringify(body)
      } (an anonymizer older than the status view, or another server on that address?)`,
      { code: "status_unavailable", retriable: response.status >= 500 },
    );
  }
  return await response.json() as StatusSnapshot;
}
