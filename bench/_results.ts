/**
 * Recorded bench runs: every bench writes its report with the commit, host, command and date to
 * `bench/results/<bench>-<YYYYMMDD-HHMMSS>.json`, so each figure in the README and docs names the
 * file it comes from (tests/readme_test.ts checks the README's tables against those files).
 *
 * @module
 */

/** Where {@linkcode recordResults} writes. */
export const RESULTS_DIR: URL = new URL("./results/", import.meta.url);

/** The machine a run was measured on. */
export interface Host {
  /** CPU model from /proc/cpuinfo, or `"unknown"`. */
  cpu: string;
  /** Logical cores. */
  cores: number;
  /** Total memory, GiB, rounded. */
  memory_gib: number;
}

/** The commit a run measured: HEAD, and `dirty` when the work tree had changes. */
export interface Commit {
  /** `git rev-parse HEAD`, or `"unknown"` outside a git checkout. */
  sha: string;
  /** Whether `git status --porcelain` listed changes (results/ itself ignored). */
  dirty: boolean;
  /**
   * The paths it listed, when dirty, so that a reader can tell an edit the run
   * never loaded from one it measured. Absent when clean.
   */
  changed?: string[];
}

/** Options of {@linkcode recordResults}. */
export interface RecordResultsOptions {
  /** The run's start, which names the file. Default: `new Date()` at the call. */
  date?: Date;
  /** The command line recorded. Default: `deno <Deno.args of the bench>` with the main module. */
  command?: string;
  /** Directory written to. Default: {@linkcode RESULTS_DIR}. */
  dir?: URL;
}

async function git(args: string[]): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("git", {
      args,
      cwd: new URL("../", import.meta.url),
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success ? new TextDecoder().decode(out.stdout) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The commit of this checkout.
 *
 * @example
 * ```ts
 * import { currentCommit } from "./_results.ts";
 * import assert from "node:assert/strict";
 *
 * const commit = await currentCommit();
 * assert.match(commit.sha, /^([0-9a-f]{40}|unknown)$/);
 * ```
 */
export async function currentCommit(): Promise<Commit> {
  const sha = (await git(["rev-parse", "HEAD"]))?.trim() ?? "unknown";
  const status = await git(["status", "--porcelain", "--", ".", ":!bench/results"]);
  const changed = (status ?? "").split("\n").filter((line) => line.trim() !== "")
    .map((line) => line.slice(3));
  return changed.length === 0 ? { sha, dirty: false } : { sha, dirty: true, changed };
}

/**
 * The machine this process runs on.
 *
 * @example
 * ```ts
 * import { currentHost } from "./_results.ts";
 * import assert from "node:assert/strict";
 *
 * assert.ok((await currentHost()).cores >= 1);
 * ```
 */
export async function currentHost(): Promise<Host> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  return {
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    memory_gib: Math.round(Deno.systemMemoryInfo().total / 2 ** 30),
  };
}

const pad = (n: number) => String(n).padStart(2, "0");

/**
 * Writes `report` (the bench's figures) with `bench`, `commit`, `host`, `command` and `date` to
 * `<dir>/<bench>-<YYYYMMDD-HHMMSS>.json` (UTC) and returns the file's URL.
 *
 * @example
 * ```ts
 * import { recordResults } from "./_results.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = new URL(`file://${await Deno.makeTempDir()}/`);
 * const file = await recordResults("demo", { p50_ms: 1.5 }, {
 *   dir,
 *   date: new Date("2026-12-04T18:00:09Z"),
 *   command: "deno task bench:demo",
 * });
 * assert.match(file.pathname, /demo-20261204-180009\.json$/);
 * const saved = JSON.parse(await Deno.readTextFile(file));
 * assert.equal(saved.p50_ms, 1.5);
 * assert.equal(saved.command, "deno task bench:demo");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function recordResults(
  bench: string,
  report: Record<string, unknown>,
  options: RecordResultsOptions = {},
): Promise<URL> {
  const date = options.date ?? new Date();
  const dir = options.dir ?? RESULTS_DIR;
  const stamp = `${date.getUTCFullYear()}${pad(date.getUTCMonth() + 1)}${pad(date.getUTCDate())}-` +
    `${pad(date.getUTCHours())}${pad(date.getUTCMinutes())}${pad(date.getUTCSeconds())}`;
  const main = new URL(Deno.mainModule).pathname.replace(/^.*\/(bench\/)/, "$1");
  const record = {
    bench,
    commit: await currentCommit(),
    host: await currentHost(),
    command: options.command ?? ["deno run -A", main, ...Deno.args].join(" "),
    date: date.toISOString(),
    ...report,
  };
  await Deno.mkdir(dir, { recursive: true });
  const file = new URL(`${bench}-${stamp}.json`, dir);
  await Deno.writeTextFile(file, JSON.stringify(record, null, 2) + "\n");
  return file;
}
