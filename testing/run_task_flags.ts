/**
 * The `deno run` flags of the `run` task in deno.json (permissions and V8
 * heap limits), so that tests and benches start the service exactly as an
 * operator's `deno task run` does and measure its default memory settings.
 *
 * @module
 */

const DENO_JSON = new URL("../deno.json", import.meta.url);

/**
 * Flags between `deno run` and `main.ts` in deno.json's `run` task.
 *
 * @example
 * ```ts
 * import { runTaskFlags } from "./run_task_flags.ts";
 * import assert from "node:assert/strict";
 *
 * const flags = runTaskFlags();
 * assert.ok(flags.includes("--allow-net"));
 * assert.ok(flags.some((f) => f.startsWith("--v8-flags=")));
 * ```
 */
export function runTaskFlags(): string[] {
  const task: unknown = JSON.parse(Deno.readTextFileSync(DENO_JSON)).tasks?.run;
  const words = typeof task === "string" ? task.split(/\s+/) : [];
  const end = words.indexOf("main.ts");
  if (words[0] !== "deno" || words[1] !== "run" || end < 2) {
    throw new Error(
      `Cannot read the service's flags as deno.json's run task must be "deno run <flags> main.ts run": current value is ${
        JSON.stringify(task)
      }`,
    );
  }
  return words.slice(2, end);
}

/**
 * The V8 flags of deno.json's `run` task, comma-separated as `--v8-flags=`
 * takes them (e.g. `--max-old-space-size=48,--expose-gc`), read from the task
 * so that no copy of the list here can fall behind it.
 *
 * @example
 * ```ts
 * import { runTaskV8Flags } from "./run_task_flags.ts";
 * import assert from "node:assert/strict";
 *
 * assert.match(runTaskV8Flags(), /--max-old-space-size=\d+/);
 * ```
 */
export function runTaskV8Flags(): string {
  const flag = runTaskFlags().find((f) => f.startsWith("--v8-flags="));
  if (flag === undefined) {
    throw new Error(
      "Cannot read the service's V8 flags as deno.json's run task has no --v8-flags=",
    );
  }
  return flag.slice("--v8-flags=".length);
}
