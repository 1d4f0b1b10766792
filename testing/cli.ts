/**
 * Runs the anonymizer CLI as an operator would, with the service's own
 * permissions and nothing of the test's environment but what deno needs to
 * find its cache.
 *
 * @module
 */
import { runTaskFlags } from "./run_task_flags.ts";

const ROOT = new URL("..", import.meta.url);

/** What a run of the CLI printed and returned. */
export interface CliRun {
  /** Exit code. */
  code: number;
  /** Everything on stdout. */
  stdout: string;
  /** Everything on stderr. */
  stderr: string;
}

/** Options of {@linkcode runCli}. */
export interface RunCliOptions {
  /** A run still going after this long is killed and fails the test, ms. Default: `30_000`. */
  timeoutMs?: number;
}

/**
 * Runs `deno run <flags of deno task run> main.ts ...args` with only `env` (plus PATH,
 * HOME, DENO_DIR and XDG_CACHE_HOME) and `NO_COLOR=1`.
 *
 * @example
 * ```ts
 * import { runCli } from "./cli.ts";
 * import assert from "node:assert/strict";
 *
 * const run = await runCli(["--help"], {});
 * assert.equal(run.code, 0);
 * assert.match(run.stdout, /Usage/);
 * ```
 */
export async function runCli(
  args: string[],
  env: Record<string, string>,
  options: RunCliOptions = {},
): Promise<CliRun> {
  const keep = ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME"].flatMap((k) => {
    const v = Deno.env.get(k);
    return v === undefined ? [] : [[k, v]];
  });
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...runTaskFlags(), "main.ts", ...args],
    cwd: ROOT,
    clearEnv: true,
    env: { ...Object.fromEntries(keep), NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(options.timeoutMs ?? 30_000),
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}
