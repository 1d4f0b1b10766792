/**
 * The disk estimate from a recorded bench:queries run: bytes per row of http_log and of each
 * totals table as measured after `OPTIMIZE ... FINAL` on each server, times the rows a day each
 * table gets at a message rate, times the retention.
 *
 * ```sh
 * deno run -A bench/disk_estimate.ts bench/results/queries-<stamp>.json [more files]
 * ```
 *
 * Of all the runs in the files, the largest of each server is used: bytes per row are closest to
 * production volumes there.
 *
 * Rows a day: http_log gets one row per message. A totals table gets one row per distinct key per
 * bucket; with n = rate × bucket seconds uniform draws from K possible keys that is
 * K × (1 − e^(−n/K)) (the expected count of distinct values):
 *
 * - http_log_totals_1m: K = 8 statuses × 8 cache statuses = 64, bucket 60 s;
 * - http_log_totals_resource_1h: K = 9e8 resource ids, bucket 3600 s;
 * - http_log_totals_ip_1h: K = 2^24 networks × 64, bucket 3600 s;
 * - http_log_totals_resource_ip_1h: K = 9e8 resource ids × 2^24 networks × 64, bucket 3600 s
 *   (near one row per message, as resource ids are near unique).
 *
 * The report checks this count against the rows measured in the run, then tabulates rates of
 * 0.2, 20, 200 and 300 msg/s for 7, 30 and 365 days. The bytes per row of a totals table are
 * those measured at the run's rate; at other rates the same key has as many bytes, but
 * compression of sorted keys improves somewhat as they get denser. The report goes to
 * bench/results/disk-<stamp>.json; the last stdout line is the JSON report.
 *
 * @module
 */
import { AnonymizerError } from "../lib/errors.ts";
import type { QueriesRun } from "./_queries_results.ts";
import { recordResults } from "./_results.ts";

const DAY = 86_400;
const RATES = [0.2, 20, 200, 300];
const RETENTION_DAYS = [7, 30, 365];

/** Keys and bucket of each table; http_log has one row per message. */
const MODELS: Record<string, { keys: number; bucket: number } | null> = {
  http_log: null,
  http_log_totals_1m: { keys: 64, bucket: 60 },
  http_log_totals_resource_1h: { keys: 900_000_000, bucket: 3600 },
  http_log_totals_ip_1h: { keys: 2 ** 24 * 64, bucket: 3600 },
  http_log_totals_resource_ip_1h: { keys: 900_000_000 * 2 ** 24 * 64, bucket: 3600 },
};

function rowsPerDay(table: string, rate: number): number {
  const model = MODELS[table];
  if (model === null || model === undefined) return rate * DAY;
  const draws = rate * model.bucket;
  return model.keys * -Math.expm1(-draws / model.keys) * (DAY / model.bucket);
}

/** Bytes with a decimal unit and three significant digits, e.g. `4.75 GB`. */
function human(bytes: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let unit = 0;
  while (bytes >= 1000 && unit < units.length - 1) {
    bytes /= 1000;
    unit++;
  }
  return `${Number(bytes.toPrecision(3))} ${units[unit]}`;
}

const sources = Deno.args;
if (sources.length === 0) {
  throw new AnonymizerError(
    "Cannot estimate disk as no bench:queries results file was given: current value is undefined",
    { code: "config_invalid" },
  );
}
const largest = new Map<string, { result: QueriesRun; source: string }>();
for (const source of sources) {
  const queries = JSON.parse(await Deno.readTextFile(source)) as { results: QueriesRun[] };
  for (const result of queries.results) {
    if ((largest.get(result.engine)?.result.size ?? 0) < result.size) {
      largest.set(result.engine, {
        result,
        source: source.replace(/^.*\/(bench\/results\/)/, "$1"),
      });
    }
  }
}

const servers = [...largest.values()].map(({ result, source }) => {
  const rate = result.size / (result.days * DAY);
  const tables = Object.fromEntries(
    Object.keys(MODELS).map((table) => {
      const measured = result.tables_optimized[table];
      if (measured === undefined) {
        throw new AnonymizerError(
          `Cannot estimate disk as the run has no size for a table: current value is "${table}"`,
          { code: "results_invalid" },
        );
      }
      return [table, {
        bytes_per_row: measured.bytes_per_row,
        rows_measured: measured.rows,
        rows_predicted: Math.round(rowsPerDay(table, rate) * result.days),
      }];
    }),
  );
  const estimates = RATES.map((msgPerS) => {
    const perDay = (names: string[]) =>
      names.reduce(
        (sum, table) => sum + rowsPerDay(table, msgPerS) * tables[table]!.bytes_per_row,
        0,
      );
    const raw = perDay(["http_log"]);
    const totals = perDay(Object.keys(MODELS).filter((t) => t !== "http_log"));
    return {
      rate: msgPerS,
      raw_per_day: human(raw),
      totals_per_day: human(totals),
      retention: RETENTION_DAYS.map((days) => ({
        days,
        raw: human(raw * days),
        totals: human(totals * days),
      })),
    };
  });
  return {
    engine: result.engine,
    source,
    measured_size: result.size,
    measured_days: result.days,
    measured_rate: Number(rate.toFixed(2)),
    tables,
    estimates,
  };
});

const report = {
  sources: sources.map((source) => source.replace(/^.*\/(bench\/results\/)/, "$1")),
  servers,
};
await recordResults("disk", report);
// The same figures as markdown, for README.md and docs/performance.md, on stderr.
const markdown = servers.flatMap((server) => [
  `${server.engine}, from ${server.source} (${server.measured_size} rows over ${server.measured_days} d):`,
  "",
  "| rate | raw per day | totals per day | 7 d raw / totals | 30 d raw / totals | 365 d raw / totals |",
  "|---|---:|---:|---:|---:|---:|",
  ...server.estimates.map((estimate) =>
    `| ${estimate.rate} msg/s | ${estimate.raw_per_day} | ${estimate.totals_per_day} | ${
      estimate.retention.map((kept) => `${kept.raw} / ${kept.totals}`).join(" | ")
    } |`
  ),
  "",
  "| table | bytes/row | rows measured | rows predicted |",
  "|---|---:|---:|---:|",
  ...Object.entries(server.tables).map(([table, size]) =>
    `| ${table} | ${size.bytes_per_row} | ${size.rows_measured} | ${size.rows_predicted} |`
  ),
  "",
]);
Deno.stderr.writeSync(new TextEncoder().encode(markdown.join("\n") + "\n"));
Deno.stdout.writeSync(
  new TextEncoder().encode(JSON.stringify({ bench: "disk", ...report }) + "\n"),
);
