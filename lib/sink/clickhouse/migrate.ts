/**
 * Creates the ClickHouse database, `http_log` and the totals, idempotently,
 * on ClickHouse 18.16 and modern servers alike.
 *
 * Through ch-proxy every statement costs a 62.5 s slot, so migrate first
 * learns the server version and the existing tables with one SELECT, then
 * sends only the statements whose object is missing.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { ClickHouseClient } from "./clickhouse_client.ts";
import { AnonymizerError } from "../../errors.ts";
import { serverProfile } from "./server_version.ts";

/** What {@linkcode migrate} needs of a connection: {@linkcode ClickHouseClient.query}. */
export type SqlRunner = Pick<ClickHouseClient, "query">;

const log = getLogger(["anonymizer", "migrate"]);

/** One schema statement, read from `schema/clickhouse/NNN_name.sql`. */
export interface SchemaStatement {
  /** File name. */
  file: string;
  /** Name of the object it creates (table or view). */
  object: string;
  /** The SQL with `{{database}}` and `/*+modern ... *\/` still unresolved. */
  template: string;
}

/**
 * Resolves a schema template for a server of `version`: `/*+modern ... *\/`
 * blocks (codecs, TTL) are kept where {@linkcode serverProfile} calls the
 * server modern, and dropped otherwise.
 *
 * @example
 * ```ts
 * import { resolveTemplate } from "./migrate.ts";
 * import assert from "node:assert/strict";
 *
 * const sql = "CREATE TABLE {{database}}.t (x UInt8 /*+modern CODEC(ZSTD(3)) *\/) ENGINE = Log";
 * assert.equal(resolveTemplate(sql, { database: "db", version: "18.16.1" }),
 *   "CREATE TABLE db.t (x UInt8 ) ENGINE = Log");
 * assert.equal(resolveTemplate(sql, { database: "db", version: "24.8.1" }),
 *   "CREATE TABLE db.t (x UInt8  CODEC(ZSTD(3)) ) ENGINE = Log");
 * ```
 */
export function resolveTemplate(
  template: string,
  options: { database: string; version: string },
): string {
  const modern = serverProfile(options.version).modern;
  return template
    .replaceAll("{{database}}", options.database)
    .replace(/\/\*\+modern([\s\S]*?)\*\//g, (_, body: string) => modern ? body : "");
}

/**
 * Reads the statements in `dir`, in file-name order.
 *
 * @example
 * ```ts
 * import { readSchema } from "./migrate.ts";
 * import assert from "node:assert/strict";
 *
 * const statements = await readSchema();
 * assert.equal(statements[0]?.object, "http_log");
 * ```
 */
export async function readSchema(
  dir: URL = new URL("../../../schema/clickhouse/", import.meta.url),
): Promise<SchemaStatement[]> {
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && /^\d+_.*\.sql$/.test(e.name)) files.push(e.name);
  }
  files.sort();
  const out: SchemaStatement[] = [];
  for (const file of files) {
    const template = await Deno.readTextFile(new URL(file, dir));
    const m =
      /CREATE\s+(?:TABLE|MATERIALIZED\s+VIEW|VIEW)\s+IF\s+NOT\s+EXISTS\s+\{\{database\}\}\.`?(\w+)`?/i
        .exec(template);
    if (m === null) {
      throw new Error(
        `Cannot migrate as ${file} does not start with CREATE ... IF NOT EXISTS {{database}}.name`,
      );
    }
    out.push({ file, object: m[1]!, template });
  }
  return out;
}

function parseDiscovery(answer: string): [string, number | string, string[]] {
  try {
    const row = JSON.parse(answer).data[0];
    if (typeof row[0] === "string" && Array.isArray(row[2])) return row;
  } catch {
    // Reported below with the answer itself.
  }
  throw new AnonymizerError(
    `Cannot migrate as ClickHouse answered the schema discovery with something other than ` +
      `JSONCompact: current value is ${JSON.stringify(answer.slice(0, 200))}`,
    { code: "server_answer_invalid", retriable: false },
  );
}

/** Options of {@linkcode migrate}. */
export interface MigrateOptions {
  /** Database to create and fill. Default: `"default"`. */
  database?: string;
  /** Statements to apply. Default: {@linkcode readSchema} of `schema/clickhouse/`. */
  statements?: SchemaStatement[];
  /**
   * Runs each request; through ch-proxy this waits for a slot. Default:
   * sends at once (for a direct ClickHouse connection).
   */
  send?: (what: string, request: () => Promise<string>) => Promise<string>;
}

/** What {@linkcode migrate} did. */
export interface MigrateResult {
  /** Server version. */
  version: string;
  /** Objects created now. */
  created: string[];
  /** Objects that already existed. */
  existing: string[];
  /** Requests sent, including the discovery SELECT. */
  requests: number;
}

/**
 * Applies the schema through `client`.
 *
 * @example Against ClickHouse directly (needs the stack)
 * ```ts ignore
 * import { ClickHouseClient } from "./clickhouse_client.ts";
 * import { migrate } from "./migrate.ts";
 *
 * const result = await migrate(new ClickHouseClient("http://127.0.0.1:8123"), { database: "demo" });
 * console.log(result.created);
 * ```
 */
export async function migrate(
  client: SqlRunner,
  options: MigrateOptions = {},
): Promise<MigrateResult> {
  const database = options.database ?? "default";
  const statements = options.statements ?? await readSchema();
  const send = options.send ?? ((_what: string, request: () => Promise<string>) => request());
  const quoted = `'${database.replaceAll("'", "\\'")}'`;
  const discovery =
    `SELECT version(), (SELECT count() FROM system.databases WHERE name = ${quoted}), ` +
    `(SELECT groupArray(name) FROM system.tables WHERE database = ${quoted}) FORMAT JSONCompact`;
  const answer = await send(
    "discovery",
    () => client.query(discovery, { what: "schema discovery" }),
  );
  const [version, dbCount, tables] = parseDiscovery(answer);
  let requests = 1;
  const existing = new Set(tables);
  const created: string[] = [];
  const settings: Record<string, string> = serverProfile(version).modern
    ? {}
    : { allow_experimental_low_cardinality_type: "1" };
  log.info("ClickHouse {version}; {missing} of {total} objects missing in {database}", {
    version,
    missing: statements.filter((s) => !existing.has(s.object)).length,
    total: statements.length,
    database,
  });
  if (Number(dbCount) === 0) {
    await send(
      `CREATE DATABASE ${database}`,
      () =>
        client.query(`CREATE DATABASE IF NOT EXISTS ${database}`, {
          what: `CREATE DATABASE ${database}`,
        }),
    );
    requests++;
  }
  for (const s of statements) {
    if (existing.has(s.object)) continue;
    const sql = resolveTemplate(s.template, { database, version });
    await send(
      `create ${s.object}`,
      () => client.query(sql, { params: settings, what: `CREATE of ${s.object} (${s.file})` }),
    );
    requests++;
    created.push(s.object);
    log.info("Created {object} from {file}", { object: s.object, file: s.file });
  }
  return {
    version,
    created,
    existing: statements.filter((s) => existing.has(s.object)).map((s) => s.object),
    requests,
  };
}
