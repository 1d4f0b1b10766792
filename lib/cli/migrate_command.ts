/**
 * `anonymizer migrate`: applies schema/clickhouse through ch-proxy (paced,
 * sharing the service's pacing state in KV) or directly with `--direct`.
 *
 * @module
 */
// deno-lint-ignore-file no-console -- a command talks to its user on stdout and stderr
import { dirname } from "node:path";
import { ClickHouseClient } from "../sink/clickhouse/clickhouse_client.ts";
import { settingsHelp } from "../config.ts";
import { migrate } from "../sink/clickhouse/migrate.ts";
import { openQueue } from "../queue/kv_queue.ts";
import { Pacer, slotUsedBy } from "../pacer.ts";
import { configuredOrExit } from "./_command_config.ts";
import { ClickHouseError } from "../errors.ts";

const HELP = `Usage: anonymizer migrate [--direct URL] [options]

Creates the ClickHouse database, http_log and the totals tables and views,
skipping what exists. Through ch-proxy each statement waits for a request
slot; progress is printed while waiting. The pacing state is shared with the
service through KV_PATH, so the service does not hit a refusal afterwards.

  --direct URL   talk to ClickHouse at URL directly, unpaced (e.g. http://127.0.0.1:8123)

Settings used: CLICKHOUSE_URL, CLICKHOUSE_DATABASE, CLICKHOUSE_USER,
CLICKHOUSE_PASSWORD, CLICKHOUSE_SPACING_MS, CLICKHOUSE_MARGIN_MS,
CLICKHOUSE_TIMEOUT_MS, KV_PATH, LOG_LEVEL:
${settingsHelp()}`;

/**
 * Entry point of `anonymizer migrate`; resolves to the exit code.
 *
 * @example
 * ```ts
 * import { main } from "./migrate_command.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(await main(["--direct", "ftp://x"]), 2);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  const i = args.indexOf("--direct");
  const direct = i >= 0 ? args[i + 1] : undefined;
  if (i >= 0 && (direct === undefined || !/^https?:\/\//.test(direct))) {
    console.error(
      `Cannot migrate as --direct must be an http:// URL: current value is ${
        JSON.stringify(direct ?? "")
      }`,
    );
    return 2;
  }
  const rest = i >= 0 ? [...args.slice(0, i), ...args.slice(i + 2)] : args;
  const config = await configuredOrExit(rest, HELP);
  if (typeof config === "number") return config;
  const client = new ClickHouseClient(direct ?? config.clickhouseUrl, {
    user: config.clickhouseUser,
    password: config.clickhousePassword,
    timeoutMs: config.clickhouseTimeoutMs,
  });
  await Deno.mkdir(dirname(config.kvPath), { recursive: true });
  await using queue = await openQueue(config.kvPath);
  const pacer = new Pacer(queue, {
    spacingMs: config.clickhouseSpacingMs,
    marginMs: config.clickhouseMarginMs,
  });
  const slotUsed = (err: unknown) =>
    slotUsedBy(err instanceof ClickHouseError ? err.outcome : null);
  const send = async (what: string, request: () => Promise<string>): Promise<string> => {
    for (;;) {
      const at = await pacer.nextSlot();
      while (Date.now() < at) {
        const left = Math.ceil((at - Date.now()) / 1000);
        console.log(`migrate: ${what}: next request slot in ${left} s`);
        await new Promise((r) => setTimeout(r, Math.min(at - Date.now(), 15_000)));
      }
      const r = await pacer.request(request, slotUsed);
      if (r.ok) return r.value;
      if (!(r.error instanceof ClickHouseError) || r.error.outcome !== "refused") throw r.error;
      console.log(`migrate: ${what}: ch-proxy refused the request; retrying`);
    }
  };
  const r = await migrate(client, {
    database: config.clickhouseDatabase,
    ...(direct === undefined ? { send } : {}),
  });
  // The service then spends its first slot on data, not on a version check.
  await queue.setServer({ version: r.version, checkedAt: Date.now() });
  console.log(
    `migrate: ClickHouse ${r.version}: created ${
      r.created.join(", ") || "nothing"
    } in ${r.requests} requests`,
  );
  return 0;
}
