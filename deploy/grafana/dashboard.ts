/**
 * Generates `deploy/grafana/dashboards/anonymizer.json`, the dashboard that
 * compose.yaml provisions: ClickHouse panels running `schema/queries/*.sql`
 * verbatim except for the query parameters, which become Grafana macros and
 * variables, and Prometheus panels on the anonymizer's own metrics.
 *
 * ```sh
 * deno run -R -W deploy/grafana/dashboard.ts          # rewrite the JSON
 * deno run -R deploy/grafana/dashboard.ts --check     # exit 1 when the JSON is stale
 * ```
 *
 * tests/compose_test.ts fails while the JSON differs from what this writes,
 * and checks each panel's SQL against its file independently of this code.
 *
 * @module
 */

const ROOT = new URL("../../", import.meta.url);
const QUERIES = new URL("schema/queries/", ROOT);
/** Where the generated dashboard is written. */
export const DASHBOARD_FILE: URL = new URL("deploy/grafana/dashboards/anonymizer.json", ROOT);

const CLICKHOUSE = { type: "grafana-clickhouse-datasource", uid: "clickhouse" } as const;
const PROMETHEUS = { type: "prometheus", uid: "prometheus" } as const;

/**
 * Rewrites a `schema/queries` template for the Grafana ClickHouse plugin:
 * `{{database}}` becomes the dashboard constant `${database}`; `{from:DateTime}`,
 * `{to:DateTime}` and `{step:UInt32}` become the plugin's `$__fromTime`,
 * `$__toTime` and `$__interval_s`; any other `{name:String}` becomes the
 * variable `${name:sqlstring}` (quoted, `'` doubled) and `{name:Type}` becomes
 * `toType(${name:sqlstring})`, so a typed-in value can never inject SQL.
 *
 * @example
 * ```ts
 * import { grafanaSql } from "./dashboard.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(
 *   grafanaSql("SELECT 1 FROM {{database}}.t WHERE id = {resource_id:UInt64} AND t <= {to:DateTime}"),
 *   "SELECT 1 FROM ${database}.t WHERE id = toUInt64(${resource_id:sqlstring}) AND t <= $__toTime",
 * );
 * ```
 */
export function grafanaSql(template: string): string {
  const macros: Record<string, string> = {
    "from:DateTime": "$__fromTime",
    "to:DateTime": "$__toTime",
    "step:UInt32": "$__interval_s",
  };
  return template
    .replaceAll("{{database}}", "${database}")
    .replace(/\{(\w+):(\w+)\}/g, (placeholder, name: string, type: string) => {
      const macro = macros[`${name}:${type}`];
      if (macro !== undefined) return macro;
      if (["from", "to", "step"].includes(name)) {
        throw new Error(
          `Cannot map ${placeholder} to a Grafana macro as ${name} must be ${
            Object.keys(macros).find((k) => k.startsWith(`${name}:`))
          }: current value is "${placeholder}"`,
        );
      }
      return type === "String" ? `\${${name}:sqlstring}` : `to${type}(\${${name}:sqlstring})`;
    });
}

/** Grid position of a panel: 24 columns wide, rows of 8. */
interface GridPos {
  x: number;
  y: number;
  w: number;
  h: number;
}

/**
 * One ClickHouse panel: which query file and how to show it. Its description
 * is the file's leading comment, so it says what the SQL does now.
 */
interface SqlPanel {
  query: string;
  title: string;
  type: "timeseries" | "table" | "stat";
  /** Relative time of the panel (e.g. `"1h"`), overriding the dashboard's. */
  timeFrom?: string;
  /** Smallest `$__interval`: the totals tables hold one row per minute or hour. */
  interval?: string;
}

/** Units of the columns the queries share; bytes go on a right axis in time series. */
const UNITS: Readonly<Record<string, string>> = {
  total_bytes_sent: "bytes",
  mean_request_time_milli: "ms",
};

const SQL_PANELS: SqlPanel[] = [
  { query: "traffic_over_time", title: "Traffic over time", type: "timeseries", interval: "1m" },
  { query: "top_resources", title: "Top resources, last hour", type: "table", timeFrom: "1h" },
  {
    query: "cache_status_over_time",
    title: "Cache status over time",
    type: "timeseries",
    interval: "1m",
  },
  {
    query: "status_codes_over_time",
    title: "HTTP status codes over time",
    type: "timeseries",
    interval: "1m",
  },
  { query: "ip_totals", title: "Totals for client network $remote_addr", type: "stat" },
  {
    query: "resource_day",
    title: "Resource $resource_id, last 24 hours",
    type: "timeseries",
    timeFrom: "24h",
    interval: "1h",
  },
  {
    query: "combination_totals",
    title: "Traffic of the chosen resource, network, status and cache status (empty: any)",
    type: "timeseries",
    interval: "1m",
  },
];

/** Query files deliberately not on the dashboard, with the reason: none today. */
export const NOT_ON_DASHBOARD: Readonly<Record<string, string>> = {};

/** One Prometheus panel on the anonymizer's metrics. */
interface PromPanel {
  title: string;
  what: string;
  unit: string;
  targets: { expr: string; legend: string }[];
}

// Requests come once per CLICKHOUSE_SPACING_MS (62.5 s), so per-request series
// are summed over windows that hold several of them.
const PROM_PANELS: PromPanel[] = [
  {
    title: "Queue rows",
    what:
      "Rows waiting in the KV queue (anonymizer_queue_rows). Grows while ClickHouse or ch-proxy refuse; should drain afterwards.",
    unit: "short",
    targets: [{ expr: "anonymizer_queue_rows", legend: "queued rows" }],
  },
  {
    title: "Oldest queued row age",
    what:
      "Age of the oldest queued row (anonymizer_queue_oldest_age_seconds): about one request spacing when healthy.",
    unit: "s",
    targets: [{ expr: "anonymizer_queue_oldest_age_seconds", legend: "oldest row" }],
  },
  {
    title: "Next request slot in",
    what:
      "Seconds until ch-proxy allows the next request (anonymizer_next_request_seconds); counts down from the spacing.",
    unit: "s",
    targets: [{ expr: "anonymizer_next_request_seconds", legend: "next request" }],
  },
  {
    title: "ClickHouse requests by outcome, per 10 min",
    what:
      "Requests through ch-proxy by kind and outcome (anonymizer_clickhouse_requests_total). 503 means the pacing is off; 413 a body over the limit.",
    unit: "short",
    targets: [{
      expr: "sum by (kind, outcome) (increase(anonymizer_clickhouse_requests_total[10m]))",
      legend: "{{kind}} {{outcome}}",
    }],
  },
  {
    title: "Rows per INSERT",
    what: "Rows per successful INSERT over 30 minutes (anonymizer_request_rows histogram).",
    unit: "short",
    targets: [
      {
        expr:
          "sum(rate(anonymizer_request_rows_sum[30m])) / sum(rate(anonymizer_request_rows_count[30m]))",
        legend: "mean",
      },
      {
        expr: "histogram_quantile(0.5, sum by (le) (rate(anonymizer_request_rows_bucket[30m])))",
        legend: "p50",
      },
      {
        expr: "histogram_quantile(0.95, sum by (le) (rate(anonymizer_request_rows_bucket[30m])))",
        legend: "p95",
      },
    ],
  },
  {
    title: "Consumer lag by partition",
    what:
      "Messages between the last consumed offset and the high watermark (anonymizer_consumer_lag).",
    unit: "short",
    targets: [{ expr: "anonymizer_consumer_lag", legend: "partition {{partition}}" }],
  },
  {
    title: "Records per second",
    what:
      "Consumed from Kafka, confirmed stored in ClickHouse, and dead-lettered by reason, over 5 minutes.",
    unit: "short",
    targets: [
      { expr: "sum(rate(anonymizer_records_consumed_total[5m]))", legend: "consumed" },
      { expr: "sum(rate(anonymizer_records_flushed_total[5m]))", legend: "stored" },
      {
        expr: "sum by (reason) (rate(anonymizer_records_dead_lettered_total[5m]))",
        legend: "dead-lettered {{reason}}",
      },
    ],
  },
  {
    title: "KV back-pressure",
    what:
      "1 while consumption is paused because KV refuses writes, e.g. a full disk (anonymizer_backpressure).",
    unit: "short",
    targets: [{ expr: "anonymizer_backpressure", legend: "paused" }],
  },
];

function unitOverrides(units: Record<string, string>, rightAxis: boolean): unknown[] {
  return Object.entries(units).map(([field, unit]) => ({
    matcher: { id: "byName", options: field },
    properties: [
      { id: "unit", value: unit },
      ...(rightAxis
        ? [{ id: "custom.axisPlacement", value: unit === "bytes" ? "right" : "hidden" }]
        : []),
    ],
  }));
}

/** The `--` comment lines that open a query file, as one paragraph. */
function leadingComment(template: string): string {
  const lines: string[] = [];
  for (const line of template.split("\n")) {
    const m = /^--\s?(.*)$/.exec(line.trim());
    if (m === null) break;
    lines.push(m[1]!);
  }
  return lines.join(" ");
}

function sqlPanel(p: SqlPanel, template: string, id: number, gridPos: GridPos): unknown {
  const table = p.type !== "timeseries";
  return {
    id,
    type: p.type,
    title: p.title,
    description: `${leadingComment(template)}\n\nSQL: schema/queries/${p.query}.sql`,
    datasource: CLICKHOUSE,
    gridPos,
    ...(p.timeFrom === undefined ? {} : { timeFrom: p.timeFrom }),
    ...(p.interval === undefined ? {} : { interval: p.interval }),
    targets: [{
      refId: "A",
      datasource: CLICKHOUSE,
      editorType: "sql",
      queryType: table ? "table" : "timeSeries",
      // The plugin's backend formats: 0 time series (long results become wide), 1 table.
      format: table ? 1 : 0,
      rawSql: grafanaSql(template),
    }],
    fieldConfig: { defaults: {}, overrides: unitOverrides(UNITS, !table) },
    options: p.type === "stat"
      ? { reduceOptions: { values: false, calcs: ["lastNotNull"], fields: "" } }
      : {},
  };
}

function promPanel(p: PromPanel, id: number, gridPos: GridPos): unknown {
  return {
    id,
    type: "timeseries",
    title: p.title,
    description: p.what,
    datasource: PROMETHEUS,
    gridPos,
    targets: p.targets.map((t, i) => ({
      refId: String.fromCharCode(65 + i),
      datasource: PROMETHEUS,
      expr: t.expr,
      legendFormat: t.legend,
    })),
    fieldConfig: { defaults: { unit: p.unit }, overrides: [] },
    options: {},
  };
}

function row(title: string, id: number, y: number): unknown {
  return {
    id,
    type: "row",
    title,
    collapsed: false,
    gridPos: { x: 0, y, w: 24, h: 1 },
    panels: [],
  };
}

/** Builds the dashboard from `schema/queries/` and the panel lists above. */
export async function buildDashboard(): Promise<Record<string, unknown>> {
  const panels: unknown[] = [];
  let id = 1;
  let y = 0;
  const place = (i: number): GridPos => ({
    x: (i % 2) * 12,
    y: y + Math.floor(i / 2) * 8,
    w: 12,
    h: 8,
  });

  panels.push(row("Traffic: ClickHouse totals tables (schema/queries)", id++, y++));
  for (const [i, p] of SQL_PANELS.entries()) {
    const template = await Deno.readTextFile(new URL(`${p.query}.sql`, QUERIES));
    panels.push(sqlPanel(p, template, id++, place(i)));
  }
  y += Math.ceil(SQL_PANELS.length / 2) * 8;

  panels.push(row("Pipeline: anonymizer metrics (Prometheus)", id++, y++));
  for (const [i, p] of PROM_PANELS.entries()) panels.push(promPanel(p, id++, place(i)));

  return {
    uid: "anonymizer",
    title: "anonymizer",
    description:
      "Traffic stored by anonymizer (ClickHouse) and the health of its pipeline (Prometheus). Generated by deploy/grafana/dashboard.ts.",
    tags: ["anonymizer"],
    timezone: "utc",
    editable: false,
    schemaVersion: 39,
    version: 1,
    refresh: "1m",
    time: { from: "now-6h", to: "now" },
    templating: {
      list: [
        {
          type: "constant",
          name: "database",
          label: "ClickHouse database",
          description: "CLICKHOUSE_DATABASE of the anonymizer",
          query: "default",
          hide: 2,
        },
        {
          type: "textbox",
          name: "remote_addr",
          label: "Client network, a.b.c.X (empty: any)",
          query: "",
          current: { text: "", value: "" },
        },
        {
          type: "textbox",
          name: "resource_id",
          label: "Resource id (empty: any)",
          query: "",
          current: { text: "", value: "" },
        },
        {
          type: "textbox",
          name: "response_status",
          label: "HTTP status (empty: any)",
          query: "",
          current: { text: "", value: "" },
        },
        {
          type: "textbox",
          name: "cache_status",
          label: "Cache status (empty: any)",
          query: "",
          current: { text: "", value: "" },
        },
      ],
    },
    panels,
  };
}

/** The dashboard file's text: stable key order, two-space indent, final newline. */
export async function dashboardText(): Promise<string> {
  return `${JSON.stringify(await buildDashboard(), null, 2)}\n`;
}

if (import.meta.main) {
  const text = await dashboardText();
  if (Deno.args.includes("--check")) {
    const current = await Deno.readTextFile(DASHBOARD_FILE).catch(() => "");
    if (current !== text) {
      // deno-lint-ignore no-console -- a script's output is its interface
      console.error(
        `${DASHBOARD_FILE.pathname} is stale: run deno run -R -W deploy/grafana/dashboard.ts`,
      );
      Deno.exit(1);
    }
  } else {
    await Deno.writeTextFile(DASHBOARD_FILE, text);
    // deno-lint-ignore no-console -- as above
    console.log(`wrote ${DASHBOARD_FILE.pathname}`);
  }
}
