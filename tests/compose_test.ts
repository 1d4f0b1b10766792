/**
 * compose.yaml and deploy/ as Docker would read them, without Docker: the
 * file as `docker-compose config` resolves it, the settings the anonymizer
 * gets there (checked with lib/config.ts), Prometheus's scrape target,
 * ch-proxy's limits, and the Grafana dashboard, whose SQL must be
 * schema/queries/*.sql and which must run on ClickHouse.
 */
import assert from "node:assert/strict";
import { ClickHouseClient } from "../lib/sink/clickhouse/clickhouse_client.ts";
import { loadConfig } from "../lib/config.ts";
import { SETTINGS } from "../lib/settings.ts";
import { migrate } from "../lib/sink/clickhouse/migrate.ts";
import { DASHBOARD_FILE, dashboardText, NOT_ON_DASHBOARD } from "../deploy/grafana/dashboard.ts";
import { ALL_TARGETS, CLICKHOUSE_URL, clickhouseQuery, uniqueName } from "../testing/stack.ts";

const ROOT = new URL("..", import.meta.url);
const IN_CI = (Deno.env.get("CI") ?? "") !== "";

/** The services on-call expects, each with the host port it publishes (if any). */
const SERVICES: Readonly<Record<string, number | null>> = {
  kafka: 9092,
  clickhouse: 8123,
  "ch-proxy": 8124,
  migrate: null,
  producer: null,
  anonymizer: 9464,
  prometheus: 9090,
  grafana: 3000,
};

async function commandExists(name: string, versionFlag = "--version"): Promise<boolean> {
  try {
    const out = await new Deno.Command(name, {
      args: [versionFlag],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

async function run(cmd: string, args: string[], stdin?: string): Promise<string> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const err = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${cmd} ${args.join(" ")} failed:\n${err}`);
  return new TextDecoder().decode(out.stdout);
}

/**
 * YAML to plain data through Python's PyYAML, which Debian's docker-compose
 * itself depends on, so it is there wherever docker-compose is.
 */
async function parseYaml(text: string): Promise<unknown> {
  const json = await run("python3", [
    "-c",
    "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
  ], text);
  return JSON.parse(json);
}

// deno-lint-ignore no-explicit-any -- compose's resolved model, checked field by field below
type Service = Record<string, any>;

/** A port as docker-compose 1.x prints it ("127.0.0.1:9092:29092/tcp") or as Compose v2 does. */
function parsePort(p: unknown): { hostIp: string; published: number; target: number } {
  if (typeof p === "string") {
    const m = /^(?:([\d.]+):)?(\d+):(\d+)(?:\/\w+)?$/.exec(p);
    assert.ok(m, `unexpected port syntax ${p}`);
    return { hostIp: m[1] ?? "", published: Number(m[2]), target: Number(m[3]) };
  }
  const o = p as { host_ip?: string; published: string | number; target: number };
  return { hostIp: o.host_ip ?? "", published: Number(o.published), target: Number(o.target) };
}

/** A mount as `{source, target, type}`, from the short ("src:dst:ro") or long syntax. */
function parseMount(v: unknown): { source: string; target: string; type: "bind" | "volume" } {
  if (typeof v === "string") {
    const [source = "", target = ""] = v.split(":");
    return {
      source,
      target,
      type: source.startsWith("/") || source.startsWith(".") ? "bind" : "volume",
    };
  }
  const o = v as { source: string; target: string; type: "bind" | "volume" };
  return { source: o.source, target: o.target, type: o.type };
}

function mountAt(service: Service, target: string) {
  const mount = (service.volumes ?? []).map(parseMount).find((m: { target: string }) =>
    m.target === target
  );
  assert.ok(mount, `no mount at ${target}`);
  return mount;
}

/** The environment of a service as strings, whether compose gives a mapping or a list. */
function envOf(service: Service): Record<string, string> {
  const env = service.environment ?? {};
  if (Array.isArray(env)) {
    return Object.fromEntries(env.map((e: string) => {
      const i = e.indexOf("=");
      return [e.slice(0, i), e.slice(i + 1)];
    }));
  }
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v ?? "")]));
}

/** Collapses whitespace, so nginx directives compare by content. */
const squash = (s: string) => s.replace(/\s+/g, " ").trim();

const hasCompose = await commandExists("docker-compose");

Deno.test({
  name: hasCompose || IN_CI
    ? "compose.yaml runs the pipeline with documented settings, a stock ch-proxy and a matching Prometheus target"
    : "compose.yaml runs the pipeline ... (SKIPPED: docker-compose is not installed; apt-get install docker-compose)",
  ignore: !hasCompose && !IN_CI,
  async fn(t) {
    assert.ok(hasCompose, "docker-compose is not installed, and CI must check compose.yaml");
    let services: Record<string, Service> = {};
    await t.step("docker-compose config accepts compose.yaml", async () => {
      await run("docker-compose", ["-f", "compose.yaml", "config", "-q"]);
      const resolved = await parseYaml(
        await run("docker-compose", ["-f", "compose.yaml", "config"]),
      );
      services = (resolved as { services: Record<string, Service> }).services;
    });

    await t.step("it has every service, each publishing its port on 127.0.0.1 only", () => {
      for (const name of Object.keys(SERVICES)) assert.ok(services[name], `no service ${name}`);
      const published = new Map<number, string>();
      for (const [name, s] of Object.entries(services)) {
        for (const p of (s.ports ?? []).map(parsePort)) {
          assert.equal(p.hostIp, "127.0.0.1", `${name} publishes ${p.published} beyond loopback`);
          published.set(p.published, name);
        }
      }
      for (const [name, port] of Object.entries(SERVICES)) {
        if (port !== null) assert.equal(published.get(port), name, `port ${port}`);
      }
    });

    const anonymizer = () => services.anonymizer!;
    await t.step("the anonymizer's environment holds only documented settings, all valid", () => {
      const documented = new Set(SETTINGS.map((s) => s.env));
      const env = envOf(anonymizer());
      const unknown = Object.keys(env).filter((k) => !documented.has(k));
      assert.deepEqual(unknown, [], "settings missing from lib/config.ts SETTINGS");
      const config = loadConfig(env, []);
      assert.deepEqual(config.kafkaBrokers, ["kafka:9092"]);
      assert.equal(config.clickhouseUrl, "http://ch-proxy:8124");
      assert.deepEqual(config.metricsListen, { hostname: "0.0.0.0", port: 9464 });
      assert.deepEqual(anonymizer().command, ["run"]);
    });

    await t.step("its KV_PATH is on a named volume that migrate shares", () => {
      const kvPath = loadConfig(envOf(anonymizer()), []).kvPath;
      const dir = kvPath.slice(0, kvPath.lastIndexOf("/"));
      const mount = mountAt(anonymizer(), dir);
      assert.equal(mount.type, "volume", `${dir} must survive the container`);
      const migrateService = services.migrate!;
      const migrateEnv = envOf(migrateService);
      assert.equal(loadConfig(migrateEnv, []).kvPath, kvPath);
      assert.deepEqual(mountAt(migrateService, dir), mount);
    });

    await t.step("migrate talks to ClickHouse directly with documented, valid settings", () => {
      const env = envOf(services.migrate!);
      const documented = new Set(SETTINGS.map((s) => s.env));
      assert.deepEqual(Object.keys(env).filter((k) => !documented.has(k)), []);
      assert.doesNotThrow(() => loadConfig(env, []));
      assert.deepEqual(services.migrate!.command, [
        "migrate",
        "--direct",
        "http://clickhouse:8123",
      ]);
    });

    await t.step("Prometheus scrapes the anonymizer on its METRICS_LISTEN port", async () => {
      const listen = loadConfig(envOf(anonymizer()), []).metricsListen!;
      const mount = mountAt(services.prometheus!, "/etc/prometheus/prometheus.yml");
      const prom = await parseYaml(await Deno.readTextFile(mount.source)) as {
        scrape_configs: {
          job_name: string;
          metrics_path?: string;
          static_configs: { targets: string[] }[];
        }[];
      };
      const targets = prom.scrape_configs.flatMap((c) =>
        c.static_configs.flatMap((s) =>
          s.targets.map((target) => ({ target, path: c.metrics_path }))
        )
      );
      assert.deepEqual(targets, [{ target: `anonymizer:${listen.port}`, path: "/metrics" }]);
    });

    await t.step(
      "ch-proxy mounts the stock limits: same limit_req lines, no body size",
      async () => {
        const mount = mountAt(services["ch-proxy"]!, "/etc/nginx/conf.d/default.conf");
        assert.equal(mount.type, "bind");
        const conf = await Deno.readTextFile(mount.source);
        const directives = conf.split("\n").map((l) => l.replace(/#.*/, "")).join("\n");
        const stock = await Deno.readTextFile(new URL("stack/nginx.conf.tmpl", ROOT));
        const stockLines = stock.split("\n").map(squash).filter((l) => l.startsWith("limit_req"))
          .map((l) => l.replace("{{rate}}", "1r/m"));
        assert.deepEqual(stockLines, [
          "limit_req_zone $binary_remote_addr zone=ch-limit:10m rate=1r/m;",
          "limit_req zone=ch-limit;",
        ]);
        const ours = directives.split("\n").map(squash).filter((l) => l.startsWith("limit_req"));
        assert.deepEqual(ours, stockLines);
        assert.doesNotMatch(directives, /client_max_body_size|burst/);
        assert.match(directives, /listen 8124;/);
        assert.match(directives, /proxy_pass http:\/\/clickhouse:8123;/);
        assert.equal(services["ch-proxy"]!.image, "nginx:1.27");
      },
    );

    await t.step("ClickHouse is the release family the modern test server runs", async () => {
      const modern = ALL_TARGETS.find((target) => target.name === "modern")!;
      const version = (await clickhouseQuery("SELECT version() FORMAT TabSeparated", {
        url: modern.url,
      })).trim();
      const family = version.split(".").slice(0, 2).join(".");
      assert.equal(services.clickhouse!.image, `clickhouse/clickhouse-server:${family}`);
    });

    // Debian puts nginx in /usr/sbin, which a non-login PATH may lack.
    const nginxBins = ["nginx", "/usr/sbin/nginx"];
    let nginx: string | undefined;
    for (const bin of nginxBins) {
      if (nginx === undefined && await commandExists(bin, "-v")) nginx = bin;
    }
    await t.step({
      name: nginx
        ? "nginx accepts the ch-proxy config"
        : "nginx accepts the ch-proxy config (SKIPPED: no nginx)",
      ignore: nginx === undefined,
      fn: async () => {
        const mount = mountAt(services["ch-proxy"]!, "/etc/nginx/conf.d/default.conf");
        const dir = await Deno.makeTempDir({ prefix: "ch-proxy-conf-" });
        try {
          // The compose network's names do not resolve here; only the upstream differs.
          const conf = (await Deno.readTextFile(mount.source)).replace(
            "clickhouse:8123",
            "127.0.0.1:8123",
          );
          await Deno.writeTextFile(`${dir}/server.conf`, conf);
          await Deno.writeTextFile(
            `${dir}/nginx.conf`,
            `pid ${dir}/nginx.pid;\nerror_log ${dir}/error.log;\nevents {}\nhttp {\n` +
              `client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy;\n` +
              `access_log off;\ninclude ${dir}/server.conf;\n}\n`,
          );
          await run(nginx!, [
            "-t",
            "-q",
            "-p",
            dir,
            "-c",
            `${dir}/nginx.conf`,
            "-e",
            `${dir}/error.log`,
          ]);
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      },
    });
  },
});

// deno-lint-ignore no-explicit-any -- Grafana's dashboard model, checked field by field below
type Panel = Record<string, any>;

/**
 * Undoes the Grafana rewrite of a query, independently of deploy/grafana/dashboard.ts:
 * plugin macros and dashboard variables back to ClickHouse placeholders.
 */
function templateFromGrafana(sql: string): string {
  return sql
    .replaceAll("${database}", "{{database}}")
    .replaceAll("$__fromTime", "{from:DateTime}")
    .replaceAll("$__toTime", "{to:DateTime}")
    .replaceAll("$__interval_s", "{step:UInt32}")
    .replace(/\bto(\w+)\(\$\{(\w+):sqlstring\}\)/g, "{$2:$1}")
    .replace(/\$\{(\w+):sqlstring\}/g, "{$1:String}");
}

/** SQL without comments and with collapsed whitespace. */
const normalizeSql = (sql: string) => squash(sql.replace(/--[^\n]*/g, ""));

/** The file a ClickHouse panel says it runs. */
function queryFileOf(panel: Panel): string {
  const m = /SQL: schema\/queries\/(\w+)\.sql/.exec(panel.description ?? "");
  assert.ok(m, `panel "${panel.title}" does not name its schema/queries file`);
  return m[1]!;
}

async function readDashboard(): Promise<{ panels: Panel[]; templating: { list: Panel[] } }> {
  return JSON.parse(await Deno.readTextFile(DASHBOARD_FILE));
}

const isClickHouse = (p: Panel) => p.datasource?.type === "grafana-clickhouse-datasource";
const isPrometheus = (p: Panel) => p.datasource?.type === "prometheus";

Deno.test("deploy/grafana dashboard runs schema/queries SQL and only metrics the service exports", async (t) => {
  const dashboard = await readDashboard();
  const chPanels = dashboard.panels.filter(isClickHouse);

  await t.step("the JSON is what deploy/grafana/dashboard.ts generates", async () => {
    assert.equal(
      await Deno.readTextFile(DASHBOARD_FILE),
      await dashboardText(),
      "stale: run deno run -R -W deploy/grafana/dashboard.ts",
    );
  });

  await t.step(
    "each ClickHouse panel runs its schema/queries file with Grafana macros",
    async () => {
      assert.ok(chPanels.length > 0);
      for (const panel of chPanels) {
        const name = queryFileOf(panel);
        const file = await Deno.readTextFile(new URL(`schema/queries/${name}.sql`, ROOT));
        assert.equal(panel.targets.length, 1, panel.title);
        const sql: string = panel.targets[0].rawSql;
        assert.doesNotMatch(
          sql,
          /(?<!\$)\{\w+:\w+\}|\{\{database\}\}/,
          `${name}: a placeholder is left`,
        );
        assert.equal(normalizeSql(templateFromGrafana(sql)), normalizeSql(file), name);
      }
    },
  );

  await t.step("every query file is on the dashboard or listed as left off", async () => {
    const files: string[] = [];
    for await (const e of Deno.readDir(new URL("schema/queries/", ROOT))) {
      if (e.name.endsWith(".sql")) files.push(e.name.slice(0, -4));
    }
    const shown = chPanels.map(queryFileOf);
    assert.deepEqual(
      [...shown, ...Object.keys(NOT_ON_DASHBOARD)].sort(),
      files.sort(),
    );
  });

  await t.step("every variable a panel uses is defined on the dashboard", () => {
    const defined = new Set(dashboard.templating.list.map((v) => v.name));
    for (const panel of dashboard.panels) {
      const text = JSON.stringify([panel.title, panel.targets ?? []]);
      for (const m of text.matchAll(/\$\{(\w+)(?::\w+)?\}|\$(?!__)(\w+)/g)) {
        const name = m[1] ?? m[2]!;
        assert.ok(defined.has(name), `panel "${panel.title}" uses undefined variable ${name}`);
      }
    }
  });

  await t.step("Prometheus panels use only metrics that lib/metrics.ts registers", async () => {
    const source = await Deno.readTextFile(new URL("lib/metrics.ts", ROOT));
    const registered = new Set([...source.matchAll(/name: "(anonymizer_\w+)"/g)].map((m) => m[1]!));
    const required = [
      "anonymizer_queue_rows",
      "anonymizer_queue_oldest_age_seconds",
      "anonymizer_next_request_seconds",
      "anonymizer_clickhouse_requests_total",
      "anonymizer_request_rows",
      "anonymizer_consumer_lag",
    ];
    const used = new Set<string>();
    for (const panel of dashboard.panels.filter(isPrometheus)) {
      for (const target of panel.targets) {
        for (const [name] of (target.expr as string).matchAll(/anonymizer_\w+/g)) {
          used.add(name.replace(/_(bucket|sum|count)$/, ""));
        }
      }
    }
    for (const name of used) assert.ok(registered.has(name), `${name} is not in lib/metrics.ts`);
    for (const name of required) assert.ok(used.has(name), `no panel shows ${name}`);
  });

  await t.step("panels use the data sources that Grafana provisions", async () => {
    // A flat list of "- name:" entries; read without a YAML parser, so this
    // test needs nothing but Deno.
    const yaml = await Deno.readTextFile(
      new URL("deploy/grafana/provisioning/datasources/datasources.yaml", ROOT),
    );
    const known = new Set(
      yaml.split(/^\s*- name:/m).slice(1).map((entry) => {
        const uid = /^\s*uid:\s*(\S+)\s*$/m.exec(entry)?.[1];
        const type = /^\s*type:\s*(\S+)\s*$/m.exec(entry)?.[1];
        return `${type}/${uid}`;
      }),
    );
    assert.deepEqual(
      [...known].sort(),
      ["grafana-clickhouse-datasource/clickhouse", "prometheus/prometheus"],
    );
    for (const panel of dashboard.panels.filter((p) => p.type !== "row")) {
      for (const ds of [panel.datasource, ...panel.targets.map((x: Panel) => x.datasource)]) {
        assert.ok(known.has(`${ds.type}/${ds.uid}`), `${panel.title}: ${JSON.stringify(ds)}`);
      }
    }
  });
});

/** Expands macros and variables as the Grafana ClickHouse plugin and Grafana do. */
function expandLikeGrafana(
  sql: string,
  at: { from: number; to: number; intervalS: number; vars: Record<string, string> },
): string {
  return sql
    .replaceAll("$__fromTime", `toDateTime(${at.from})`)
    .replaceAll("$__toTime", `toDateTime(${at.to})`)
    .replaceAll("$__interval_s", String(at.intervalS))
    .replace(/\$\{(\w+)(?::(\w+))?\}/g, (_m, name: string, format?: string) => {
      const value = at.vars[name];
      assert.ok(value !== undefined, `no value for variable ${name}`);
      // Grafana's sqlstring format: quoted, with ' doubled.
      return format === "sqlstring" ? `'${value.replaceAll("'", "''")}'` : value;
    });
}

/** Rows of a TSVWithNames answer as objects keyed by column name. */
function tsvRows(text: string): Record<string, string>[] {
  const [header = "", ...lines] = text.trim().split("\n");
  const names = header.split("\t");
  return lines.filter((l) => l !== "").map((l) => {
    const cells = l.split("\t");
    return Object.fromEntries(names.map((n, i) => [n, cells[i] ?? ""]));
  });
}

/** Sums column `value` of `rows` per value of column `key`. */
function sumBy(rows: Record<string, string>[], key: string, value: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of rows) out[r[key]!] = (out[r[key]!] ?? 0) + Number(r[value]);
  return out;
}

const total = (rows: Record<string, string>[], column: string) =>
  rows.reduce((n, r) => n + Number(r[column]), 0);

Deno.test({
  name: "dashboard SQL, expanded as Grafana would, totals rows stored in ClickHouse",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const database = uniqueName("dashboard");
    const now = Math.floor(Date.now() / 1000);
    // From the start of the previous clock hour to now, with every row one
    // minute into that hour: inside [from, to] and inside the hour of from,
    // whichever of the two a query looks at.
    const from = Math.floor(now / 3600) * 3600 - 3600;
    const at = {
      from,
      to: now,
      intervalS: 60,
      vars: {
        database,
        remote_addr: "10.1.2.X",
        resource_id: "4242",
        response_status: "",
        cache_status: "",
      },
    };
    const panels = new Map(
      (await readDashboard()).panels.filter(isClickHouse).map((p) => [queryFileOf(p), p]),
    );
    const query = async (name: string, vars: Record<string, string> = {}) => {
      const panel = panels.get(name);
      assert.ok(panel, `no panel runs schema/queries/${name}.sql`);
      const sql = expandLikeGrafana(panel.targets[0].rawSql, {
        ...at,
        vars: { ...at.vars, ...vars },
      });
      return tsvRows(await clickhouseQuery(`${sql}\nFORMAT TSVWithNames`));
    };
    try {
      await t.step("a migrated database with four rows", async () => {
        await migrate(new ClickHouseClient(CLICKHOUSE_URL), { database });
        const rows = [
          [4242, 1000, 10, 200, "HIT", "10.1.2.X"],
          [4242, 2000, 30, 200, "MISS", "10.1.2.X"],
          [4242, 3000, 50, 404, "HIT", "10.1.2.X"],
          [7, 500, 20, 200, "HIT", "10.9.9.X"],
        ].map(([id, bytes, ms, status, cache, addr]) =>
          `(toDateTime(${
            from + 60
          }), ${id}, ${bytes}, ${ms}, ${status}, '${cache}', 'GET', '${addr}', '/r', 1)`
        );
        await clickhouseQuery(
          `INSERT INTO ${database}.http_log (timestamp, resource_id, bytes_sent, request_time_milli, ` +
            `response_status, cache_status, method, remote_addr, url, batch_id) VALUES ${
              rows.join(", ")
            }`,
        );
      });
      await t.step("every ClickHouse panel's SQL runs", async () => {
        for (const name of panels.keys()) await query(name);
      });
      await t.step("traffic over time counts all four rows", async () => {
        const rows = await query("traffic_over_time");
        assert.equal(total(rows, "total_requests"), 4);
        assert.equal(total(rows, "total_bytes_sent"), 6500);
      });
      await t.step("top resources puts 4242 first", async () => {
        const rows = await query("top_resources");
        assert.deepEqual(
          rows.map((r) => [r.resource_id, r.total_bytes_sent, r.total_requests]),
          [["4242", "6000", "3"], ["7", "500", "1"]],
        );
      });
      await t.step("cache status and status codes split the four", async () => {
        assert.deepEqual(
          sumBy(await query("cache_status_over_time"), "cache_status", "total_requests"),
          { HIT: 3, MISS: 1 },
        );
        assert.deepEqual(
          sumBy(await query("status_codes_over_time"), "response_status", "total_requests"),
          { "200": 3, "404": 1 },
        );
      });
      await t.step("ip totals for the $remote_addr variable", async () => {
        const rows = await query("ip_totals");
        assert.equal(total(rows, "total_requests"), 3);
        assert.equal(total(rows, "total_bytes_sent"), 6000);
      });
      await t.step("a quote in $remote_addr stays inside the string", async () => {
        assert.equal(
          total(await query("ip_totals", { remote_addr: "10.1.2.X' OR '1'='1" }), "total_requests"),
          0,
        );
      });
      await t.step("resource day for the $resource_id variable", async () => {
        assert.equal(total(await query("resource_day"), "total_requests"), 3);
      });
      await t.step("combination totals for the chosen variables, empty meaning any", async () => {
        const count = async (vars: Record<string, string>) =>
          total(await query("combination_totals", vars), "total_requests");
        assert.equal(await count({ remote_addr: "", resource_id: "" }), 4);
        assert.equal(await count({ remote_addr: "", cache_status: "HIT" }), 2);
        assert.equal(await count({ response_status: "200", cache_status: "HIT" }), 1);
        assert.equal(await count({ resource_id: "", response_status: "200" }), 2);
      });
      await t.step("a $resource_id that is not a number is an error, not SQL", async () => {
        await assert.rejects(
          query("combination_totals", { resource_id: "1) OR (1", cache_status: "HIT" }),
          /Cannot parse/,
        );
        await assert.rejects(query("resource_day", { resource_id: "1) OR (1" }), /Cannot parse/);
      });
    } finally {
      await clickhouseQuery(`DROP DATABASE IF EXISTS ${database}`);
    }
  },
});
