/**
 * The Grafana dashboard queries in `schema/queries/`, ready to run on any
 * ClickHouse version: `{{database}}` is filled in and `{name:Type}`
 * placeholders (ClickHouse query-parameter syntax, which 18.16 lacks) become
 * literals.
 *
 * @module
 */
import { AnonymizerError } from "../lib/errors.ts";

/** A value for a `{name:Type}` placeholder; `DateTime` takes Unix seconds. */
export type ParamValue = number | bigint | string;

/** Options of {@linkcode bindQuery}. */
export interface BindQueryOptions {
  /** Database holding the tables. Default: `"default"`. */
  database?: string;
  /** Values of the `{name:Type}` placeholders. Default: `{}`. */
  params?: Record<string, ParamValue>;
}

/**
 * Fills in a dashboard query template.
 *
 * @example
 * ```ts
 * import { bindQuery } from "./dashboard_query.ts";
 * import assert from "node:assert/strict";
 *
 * const sql = "SELECT * FROM {{database}}.t WHERE minute >= {from:DateTime} AND ip = {ip:String}";
 * assert.equal(
 *   bindQuery(sql, { database: "db", params: { from: 60, ip: "1.2.3.X" } }),
 *   "SELECT * FROM db.t WHERE minute >= toDateTime(60) AND ip = '1.2.3.X'",
 * );
 * ```
 */
export function bindQuery(template: string, options: BindQueryOptions = {}): string {
  const params = options.params ?? {};
  return template
    .replaceAll("{{database}}", options.database ?? "default")
    .replace(/\{(\w+):(\w+)\}/g, (_placeholder, name: string, type: string) => {
      const value = params[name];
      if (value === undefined) {
        throw new AnonymizerError(
          `Cannot bind query parameter as no value was given: current value is "${name}"`,
          { code: "param_missing" },
        );
      }
      if (type === "String") return `'${String(value).replace(/[\\']/g, "\\$&")}'`;
      return `to${type}(${value})`;
    });
}

/**
 * Reads `schema/queries/<name>.sql`.
 *
 * @example
 * ```ts
 * import { bindQuery, readDashboardQuery } from "./dashboard_query.ts";
 * import assert from "node:assert/strict";
 *
 * const sql = bindQuery(await readDashboardQuery("traffic_over_time"), {
 *   database: "logs",
 *   params: { from: 0, to: 3600, step: 60 },
 * });
 * assert.match(sql, /FROM logs\.http_log_totals_1m/);
 * ```
 */
export async function readDashboardQuery(name: string): Promise<string> {
  if (!/^[a-z0-9_]+$/.test(name)) {
    throw new AnonymizerError(
      `Cannot read dashboard query as the name is not [a-z0-9_]+: current value is "${name}"`,
      {
        code: "query_name_invalid",
      },
    );
  }
  return await Deno.readTextFile(new URL(`../schema/queries/${name}.sql`, import.meta.url));
}
