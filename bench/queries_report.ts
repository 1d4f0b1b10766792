/**
 * Markdown tables from recorded bench:queries runs, so the tables in README.md and
 * docs/performance.md are printed from `bench/results/` rather than copied by hand.
 *
 * ```sh
 * deno run -R bench/queries_report.ts bench/results/queries-<stamp>.json [more files]
 *   [--engine 26.9] [--size 100000000] [--by phase] [--range 1d] [--concurrency 8]
 *   [--phase optimized] [--key hot]
 * ```
 *
 * For each run in the files that matches `--engine` (a substring of the server's version string;
 * default: every engine) and `--size` (default: every size) it prints:
 *
 * - a table of p50 / p95 in ms, one row per query (R, I, S, C are `combination_totals` with a
 *   resource, network, status, cache status). `--by phase` (the default) has one column per phase
 *   and key (settled/optimized × hot/cold) at `--range` (default `1d`) and `--concurrency`
 *   (default 8); `--by range` has one column per time range at `--phase` (default `optimized`),
 *   `--key` (default `hot`) and `--concurrency`. `top_resources` ranks one hour, in every
 *   `--by phase` table and in the `1h` column of `--by range`.
 * - the worst p50 and p95 of the 15 combinations in each column, against the goal of issue 12
 *   (p50 ≤ 100 ms, p95 ≤ 500 ms);
 * - bytes per row of each table after `OPTIMIZE … FINAL`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { AnonymizerError } from "../lib/errors.ts";
import type { QueriesRun, QueryTiming } from "./_queries_results.ts";

const LETTERS: Record<string, string> = {
  resource_id: "R",
  remote_addr: "I",
  response_status: "S",
  cache_status: "C",
};

function label(timing: QueryTiming): string {
  if (timing.query === "top_resources") return "top_resources, 1 h range";
  if (timing.query !== "combination_totals") return timing.query;
  return timing.combination.split("+").map((dimension) => LETTERS[dimension] ?? dimension).join(
    "+",
  );
}

function cell(timing: QueryTiming | undefined): string {
  return timing === undefined ? "—" : `${timing.p50_ms} / ${timing.p95_ms}`;
}

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    engine: { type: "string", default: "" },
    size: { type: "string", default: "" },
    by: { type: "string", default: "phase" },
    range: { type: "string", default: "1d" },
    concurrency: { type: "string", default: "8" },
    phase: { type: "string", default: "optimized" },
    key: { type: "string", default: "hot" },
  },
});
if (positionals.length === 0) {
  throw new AnonymizerError(
    "Cannot report as no bench:queries results file was given: current value is []",
    { code: "config_invalid" },
  );
}
if (values.by !== "phase" && values.by !== "range") {
  throw new AnonymizerError(
    `Cannot report as --by must be phase or range: current value is "${values.by}"`,
    { code: "config_invalid" },
  );
}
const concurrency = Number(values.concurrency);

const columns: { title: string; phase: string; key: string; range: string }[] =
  values.by === "phase"
    ? ["settled", "optimized"].flatMap((phase) =>
      ["hot", "cold"].map((key) => ({ title: `${phase}, ${key}`, phase, key, range: values.range }))
    )
    : ["1h", "1d", "7d", "30d"].map((range) => ({
      title: range,
      phase: values.phase,
      key: values.key,
      range,
    }));

const lines: string[] = [];
for (const file of positionals) {
  const { results: runs, points = 0 } = JSON.parse(await Deno.readTextFile(file)) as {
    results: QueriesRun[];
    points?: number;
  };
  const series = points > 0 ? `about ${points} points a series` : "one point a minute";
  for (const run of runs) {
    if (!run.engine.includes(values.engine)) continue;
    if (values.size !== "" && String(run.size) !== values.size) continue;
    const pick = (query: string, column: (typeof columns)[number]) =>
      run.queries.find((timing) =>
        label(timing) === query && timing.phase === column.phase &&
        timing.concurrency === concurrency &&
        // Queries with no key are listed once, under hot; top_resources ranks one hour only.
        (timing.key === column.key || (timing.key === "-" && column.key === "hot")) &&
        (timing.range === column.range ||
          (timing.query === "top_resources" && values.by === "phase"))
      );
    const queries = [...new Set(run.queries.map(label))];
    const scope = values.by === "phase"
      ? `${values.range} range`
      : `${values.phase}, ${values.key} keys`;
    lines.push(
      `${file}: ${run.engine}, ${run.size} rows over ${run.days} d, ${scope}, concurrency ${concurrency}, ${series}, p50 / p95 ms`,
      "",
      `| query | ${columns.map((column) => column.title).join(" | ")} |`,
      `|---|${columns.map(() => "---:").join("|")}|`,
    );
    for (const query of queries) {
      lines.push(
        `| ${query} | ${columns.map((column) => cell(pick(query, column))).join(" | ")} |`,
      );
    }
    const combinations = queries.filter((query) => /^[RISC](\+[RISC])*$/.test(query));
    lines.push("");
    for (const column of columns) {
      const timings = combinations.flatMap((query) => pick(query, column) ?? []);
      if (timings.length === 0) continue;
      const p50 = Math.max(...timings.map((timing) => timing.p50_ms));
      const p95 = Math.max(...timings.map((timing) => timing.p95_ms));
      const met = p50 <= 100 && p95 <= 500 ? "meets" : "misses";
      lines.push(
        `- ${column.title}: ${timings.length} combinations, worst p50 ${p50}, worst p95 ${p95}: ${met} p50 ≤ 100, p95 ≤ 500`,
      );
    }
    lines.push(
      "",
      "| table | rows | bytes/row |",
      "|---|---:|---:|",
      ...Object.entries(run.tables_optimized).sort().map(([table, size]) =>
        `| ${table} | ${size.rows} | ${size.bytes_per_row} |`
      ),
      "",
    );
  }
}
Deno.stdout.writeSync(new TextEncoder().encode(lines.join("\n") + "\n"));
