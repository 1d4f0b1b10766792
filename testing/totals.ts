/**
 * Checks that the totals views of schema/clickhouse/ count every row of
 * `http_log` exactly once, group by group, whatever their keys: a view's
 * columns are read from the server, its measures (`requests`, `bytes_sent`,
 * `request_time_milli`) are compared with `count()` and the sums over the
 * raw table, grouped by its other columns.
 *
 * @module
 */
import assert from "node:assert/strict";
import { readSchema } from "../lib/sink/clickhouse/migrate.ts";

/** What each measure column of a totals view adds up on `http_log`. */
const MEASURES: Record<string, string> = {
  requests: "count()",
  bytes_sent: "sum(bytes_sent)",
  request_time_milli: "sum(request_time_milli)",
};

/** `http_log` expressions of the time keys; any other key is an `http_log` column. */
const TIME_KEYS: Record<string, string> = {
  minute: "toStartOfMinute(timestamp)",
  hour: "toStartOfHour(timestamp)",
  day: "toStartOfDay(timestamp)",
};

/** One totals view compared with `http_log`. */
export interface TotalsComparison {
  /** View name. */
  view: string;
  /** Its grouping columns. */
  keys: string[];
  /** Groups in the view. */
  groups: number;
  /** The view's measures summed over all groups, tab-separated, e.g. `"3000\t31…\t44…"`. */
  totals: string;
}

/**
 * Asserts every totals view in `database` holds, for each group, exactly the
 * count and sums of the `http_log` rows of that group. `query` runs SQL on the
 * server holding `database` and returns TSV.
 *
 * @example Against the shared ClickHouse (needs the stack and a migrated database)
 * ```ts ignore
 * import { assertTotalsMatch } from "./totals.ts";
 * import { clickhouseQuery } from "./stack.ts";
 *
 * const compared = await assertTotalsMatch((sql) => clickhouseQuery(sql), "e2e_x");
 * console.log(compared.map((c) => `${c.view}: ${c.groups} groups`));
 * ```
 */
export async function assertTotalsMatch(
  query: (sql: string) => Promise<string>,
  database: string,
): Promise<TotalsComparison[]> {
  const views = (await readSchema()).map((s) => s.object).filter((o) => o !== "http_log");
  assert.ok(views.length > 0, "schema/clickhouse/ defines no totals view");
  const out: TotalsComparison[] = [];
  for (const view of views) {
    const columns = (await query(`DESCRIBE TABLE ${database}.${view}`)).trim().split("\n")
      .map((line) => line.split("\t")[0]!);
    const measures = columns.filter((c) => c in MEASURES);
    const keys = columns.filter((c) => !(c in MEASURES));
    assert.ok(measures.includes("requests"), `${view} has no requests column: ${columns}`);
    const order = keys.length === 0
      ? ""
      : ` GROUP BY ${keys.join(", ")} ORDER BY ${keys.join(", ")}`;
    const grouped = (await query(
      `SELECT ${[...keys, ...measures.map((m) => `sum(${m})`)].join(", ")} ` +
        `FROM ${database}.${view}${order}`,
    )).trim();
    const expected = (await query(
      `SELECT ${
        [
          ...keys.map((k) => `${TIME_KEYS[k] ?? k} AS ${k}`),
          ...measures.map((m) => MEASURES[m]),
        ].join(", ")
      } FROM ${database}.http_log${order}`,
    )).trim();
    const totals = (await query(
      `SELECT ${measures.map((m) => `sum(${m})`).join(", ")} FROM ${database}.${view}`,
    )).trim();
    const raw = (await query(
      `SELECT ${measures.map((m) => MEASURES[m]).join(", ")} FROM ${database}.http_log`,
    )).trim();
    assert.equal(totals, raw, `${view}: totals (${measures}) differ from http_log`);
    const groups = grouped === "" ? 0 : grouped.split("\n").length;
    assert.equal(groups, expected === "" ? 0 : expected.split("\n").length, `${view}: groups`);
    assert.ok(grouped === expected, `${view}: a group's totals (${measures}) differ from http_log`);
    out.push({ view, keys, groups, totals });
  }
  return out;
}
