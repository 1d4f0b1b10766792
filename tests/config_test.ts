/**
 * The command line as on-call meets it: every setting of lib/config.ts
 * SETTINGS rejects a bad value, from the environment or as a flag, with exit
 * status 2 and one line naming the setting and the value; every subcommand
 * explains itself with --help. Each case runs the real CLI as a subprocess.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../lib/config.ts";
import { SETTINGS } from "../lib/settings.ts";
import { runCli } from "../testing/cli.ts";

/** One value per setting that its parser must refuse. */
const BAD_VALUES: Readonly<Record<string, string>> = {
  KAFKA_BROKERS: "x",
  KAFKA_TOPIC: "   ",
  KAFKA_GROUP_ID: "",
  KAFKA_CLIENT_ID: "   ",
  KAFKA_OFFSET_RESET: "sometimes",
  KAFKA_DLQ_TOPIC: "",
  KAFKA_DLQ_PARTITIONS: "0",
  KAFKA_DLQ_RETENTION_MS: "2592000001",
  KAFKA_SSL: "yes",
  KAFKA_SASL_MECHANISM: "kerberos",
  CLICKHOUSE_URL: "ftp://127.0.0.1:8124",
  CLICKHOUSE_DATABASE: "not-an-identifier!",
  CLICKHOUSE_USER: "   ",
  CLICKHOUSE_SPACING_MS: "0",
  CLICKHOUSE_MARGIN_MS: "60001",
  CLICKHOUSE_BODY_LIMIT: "1MiB",
  CLICKHOUSE_TIMEOUT_MS: "30s",
  CLICKHOUSE_ENCODING: "brotli",
  CLICKHOUSE_SLOT_SHARING: "shared",
  KAFKA_SLOTS_TOPIC: "no spaces allowed",
  CLICKHOUSE_DEDUP: "maybe",
  KV_PATH: "  ",
  MAX_PAST_AGE_MS: "30d",
  MAX_FUTURE_SKEW_MS: "1e3",
  LOG_LEVEL: "verbose",
  LOG_FORMAT: "xml",
  METRICS_LISTEN: "host",
  SHUTDOWN_GRACE_MS: "1.5",
};

/**
 * Settings that take any string, so no value is bad; each maps to an odd but
 * valid value that the test shows is accepted. A new setting must be in one
 * of the two tables, so none can skip validation unnoticed.
 */
const ANY_STRING: Readonly<Record<string, string>> = {
  KAFKA_SASL_USERNAME: "any name, even with spaces",
  KAFKA_SASL_PASSWORD: "p@ss: 'word\"",
  CLICKHOUSE_PASSWORD: " starts with a space, ends with ünïcode ",
};

/**
 * Valid settings for every run, so that the value under test is the only bad
 * one, and so that a run that wrongly starts reaches nothing shared: nothing
 * listens on port 9 (discard) and KV lives in a temp folder.
 */
const KV_DIR = await Deno.makeTempDir({ prefix: "anonymizer-config-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(KV_DIR, { recursive: true }));
const BASE: Readonly<Record<string, string>> = {
  KAFKA_BROKERS: "127.0.0.1:9",
  KAFKA_GROUP_ID: `config-test-${crypto.randomUUID()}`,
  CLICKHOUSE_URL: "http://127.0.0.1:9",
  KV_PATH: `${KV_DIR}/queue.kv`,
  METRICS_LISTEN: "",
};

/** What a run of the CLI printed and returned. */
interface Run {
  code: number;
  stdout: string;
  stderrLines: string[];
}

/** {@linkcode runCli}, with stderr as its lines. */
async function cli(args: string[], env: Record<string, string>): Promise<Run> {
  const run = await runCli(args, env);
  return {
    code: run.code,
    stdout: run.stdout,
    stderrLines: run.stderr.split("\n").filter((l) => l !== ""),
  };
}

/** Asserts a refusal: exit 2, nothing on stdout, one stderr line naming `name` and `value`. */
function assertRefused(run: Run, name: string, value: string): void {
  const shown = `exit ${run.code}, stderr ${JSON.stringify(run.stderrLines)}`;
  assert.equal(run.code, 2, shown);
  assert.equal(run.stdout, "", `nothing on stdout; ${shown}`);
  assert.equal(run.stderrLines.length, 1, `exactly one line on stderr; ${shown}`);
  const line = run.stderrLines[0]!;
  assert.ok(line.includes(name), `the line names ${name}: ${line}`);
  assert.ok(line.includes(JSON.stringify(value)), `the line quotes the value: ${line}`);
}

/** Runs the CLI for each item, at most `limit` at a time: the machine has two cores. */
async function runAll<T>(
  items: T[],
  limit: number,
  run: (item: T) => Promise<Run>,
): Promise<Run[]> {
  const out: Run[] = [];
  for (let i = 0; i < items.length; i += limit) {
    out.push(...await Promise.all(items.slice(i, i + limit).map(run)));
  }
  return out;
}

Deno.test("SETTINGS tables of this test cover every setting exactly once", async (t) => {
  const names = SETTINGS.map((s) => s.env);
  await t.step("each setting has a bad value or is listed as taking any string", () => {
    const covered = [...Object.keys(BAD_VALUES), ...Object.keys(ANY_STRING)].sort();
    assert.deepEqual(covered, [...names].sort());
  });
  await t.step("the any-string settings really accept an odd value", () => {
    for (const [name, value] of Object.entries(ANY_STRING)) {
      assert.doesNotThrow(() => loadConfig({ [name]: value }, []), name);
    }
  });
  await t.step("the base environment of the CLI runs is itself valid", () => {
    assert.doesNotThrow(() => loadConfig(BASE, []));
  });
});

Deno.test("anonymizer run refuses a bad value of each setting from the environment", async (t) => {
  const cases = Object.entries(BAD_VALUES);
  const runs = await runAll(cases, 4, ([name, value]) => cli(["run"], { ...BASE, [name]: value }));
  for (const [i, [name, value]] of cases.entries()) {
    await t.step(`${name}=${JSON.stringify(value)}`, () => assertRefused(runs[i]!, name, value));
  }
});

Deno.test("anonymizer run refuses a bad value of each setting given as its flag", async (t) => {
  const flags = new Map(SETTINGS.map((s) => [s.env, `--${s.flag}`]));
  const cases = Object.entries(BAD_VALUES).map(([name, value]) => [flags.get(name)!, value]);
  const runs = await runAll(cases, 4, ([flag, value]) => cli(["run", flag!, value!], BASE));
  for (const [i, [flag, value]] of cases.entries()) {
    await t.step(`${flag} ${JSON.stringify(value)}`, () => assertRefused(runs[i]!, flag!, value!));
  }
});

Deno.test("anonymizer run refuses a SASL mechanism without a user name", async (t) => {
  const run = await cli(["run"], { ...BASE, KAFKA_SASL_MECHANISM: "plain" });
  await t.step("exit 2, one line naming KAFKA_SASL_USERNAME", () => {
    assertRefused(run, "KAFKA_SASL_USERNAME", "");
  });
});

Deno.test("every subcommand refuses an unknown flag with one line naming it", async (t) => {
  for (const command of ["run", "produce", "migrate", "demo"]) {
    const run = await cli([command, "--no-such-flag"], BASE);
    await t.step(command, () => {
      const shown = `exit ${run.code}, stderr ${JSON.stringify(run.stderrLines)}`;
      assert.equal(run.code, 2, shown);
      assert.equal(run.stderrLines.length, 1, shown);
      assert.match(run.stderrLines[0]!, /--no-such-flag/);
    });
  }
});

Deno.test("every subcommand prints its usage for --help and exits 0", async (t) => {
  for (const command of ["run", "produce", "migrate", "demo"]) {
    const run = await cli([command, "--help"], BASE);
    await t.step(command, () => {
      assert.equal(run.code, 0, JSON.stringify(run.stderrLines));
      assert.deepEqual(run.stderrLines, []);
      assert.match(run.stdout, new RegExp(`^Usage: anonymizer ${command}\\b`));
    });
  }
  const top = await cli(["--help"], BASE);
  await t.step("anonymizer --help lists the subcommands", () => {
    assert.equal(top.code, 0);
    for (const command of ["run", "produce", "migrate", "demo"]) {
      assert.match(top.stdout, new RegExp(`^  ${command} `, "m"));
    }
  });
  const help = await cli(["run", "--help"], BASE);
  await t.step("run --help documents every setting: flag, variable and default", () => {
    for (const s of SETTINGS) {
      const line = help.stdout.split("\n").find((l) => l.includes(`--${s.flag} `));
      assert.ok(line, `no help line for --${s.flag}`);
      assert.ok(line.includes(s.env), `${s.env} missing from: ${line}`);
      assert.ok(line.includes(JSON.stringify(s.default)), `default missing from: ${line}`);
    }
  });
});
