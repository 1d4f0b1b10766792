/**
 * Helpers of the benches and tests that run SQL on two ClickHouse engines: a server over
 * HTTP and chDB through `chdb_runner.py`, with the schema applied as migrate resolves it.
 *
 * @module
 */
import { AnonymizerError } from "../lib/errors.ts";
import type { SqlRunner } from "../lib/sink/clickhouse/migrate.ts";
import { serverProfile } from "../lib/sink/clickhouse/server_version.ts";

/** One ClickHouse engine the bench and tests run SQL on. */
export interface Engine {
  /** Product and version, e.g. `"clickhouse-server 18.16.1"`. */
  readonly label: string;
  /** Server version, e.g. `"18.16.1"`. */
  readonly version: string;
  /** Whether `/*+modern ... *\/` template blocks apply (23.3 and later). */
  readonly modern: boolean;
  /** Runs one statement; `ms` is the engine's wall time (HTTP round trip, or the chDB call). */
  run(sql: string, format?: string): Promise<{ data: string; ms: number }>;
  /** Releases the connection or subprocess. */
  close(): Promise<void>;
}

function sqlFailed(where: string, sql: string, detail: string): AnonymizerError {
  return new AnonymizerError(
    `Cannot run SQL on ${where} as it failed: ${detail.trim().slice(0, 2000)}; statement starts ` +
      JSON.stringify(sql.trim().slice(0, 200)),
    { code: "sql_failed" },
  );
}

/**
 * Connects to a ClickHouse server's HTTP interface, e.g. `http://127.0.0.1:8123`. On servers
 * before 23.3 every request enables LowCardinality, which the schema uses.
 *
 * @example Needs a server
 * ```ts ignore
 * import { openHttpEngine } from "./sql_engines.ts";
 *
 * const engine = await openHttpEngine("http://127.0.0.1:8123");
 * console.log(engine.label, (await engine.run("SELECT 1")).ms);
 * await engine.close();
 * ```
 */
export async function openHttpEngine(url: string): Promise<Engine> {
  const post = async (sql: string, params: Record<string, string>) => {
    const target = new URL(url);
    for (const [key, value] of Object.entries(params)) target.searchParams.set(key, value);
    const started = performance.now();
    const res = await fetch(target, { method: "POST", body: sql });
    const data = await res.text();
    if (!res.ok) throw sqlFailed(url, sql, `status ${res.status}: ${data}`);
    return { data, ms: performance.now() - started };
  };
  const version = (await post("SELECT version() FORMAT TabSeparated", {})).data.trim();
  const modern = serverProfile(version).modern;
  const settings: Record<string, string> = modern
    ? {}
    : { allow_experimental_low_cardinality_type: "1" };
  return {
    label: `clickhouse-server ${version}`,
    version,
    modern,
    run: (sql, format = "TabSeparated") => post(sql, { ...settings, default_format: format }),
    close: () => Promise.resolve(),
  };
}

async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buffered = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    for (let end = buffered.indexOf("\n"); end >= 0; end = buffered.indexOf("\n")) {
      yield buffered.slice(0, end);
      buffered = buffered.slice(end + 1);
    }
  }
}

/**
 * Opens a chDB session stored in `sessionDir` (created if missing) in a Python subprocess.
 * Requires `pip install chdb==4.4.0`; `python` defaults to `"python3"`.
 *
 * @example Needs chdb installed
 * ```ts ignore
 * import { openChdbEngine } from "./sql_engines.ts";
 *
 * const engine = await openChdbEngine(await Deno.makeTempDir());
 * console.log(engine.label, engine.modern);
 * await engine.close();
 * ```
 */
export async function openChdbEngine(
  sessionDir: string,
  options: { python?: string } = {},
): Promise<Engine> {
  const runner = new URL("./chdb_runner.py", import.meta.url).pathname;
  const child = new Deno.Command(options.python ?? "python3", {
    args: [runner, sessionDir],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  const answers = readLines(child.stdout);
  const encoder = new TextEncoder();
  const where = `chDB session ${sessionDir}`;
  const run = async (sql: string, format = "TabSeparated") => {
    await writer.write(encoder.encode(JSON.stringify({ sql, format }) + "\n"));
    const line = await answers.next();
    if (line.done) throw sqlFailed(where, sql, "the chDB runner exited");
    const answer = JSON.parse(line.value);
    if (!answer.ok) throw sqlFailed(where, sql, answer.error);
    return { data: answer.data as string, ms: answer.elapsed_ms as number };
  };
  const version = (await run("SELECT version()")).data.trim();
  return {
    label: `chdb ${version}`,
    version,
    modern: serverProfile(version).modern,
    run,
    close: async () => {
      await writer.close();
      await child.status;
    },
  };
}

/**
 * Adapts `engine` to what {@linkcode migrate} needs, so the bench and tests
 * create their tables with the product's own migration on either engine.
 *
 * @example Needs a server
 * ```ts ignore
 * import { openHttpEngine, sqlRunner } from "./sql_engines.ts";
 * import { migrate } from "../lib/sink/clickhouse/migrate.ts";
 *
 * const engine = await openHttpEngine("http://127.0.0.1:8123");
 * await migrate(sqlRunner(engine), { database: "scratch" });
 * await engine.close();
 * ```
 */
export function sqlRunner(engine: Engine): SqlRunner {
  return { query: async (sql) => (await engine.run(sql)).data };
}
