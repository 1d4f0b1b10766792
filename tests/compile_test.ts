/**
 * scripts/compile.sh (`deno task compile`): without a denort it says SKIPPED
 * and exits 3, never 0; with one, dist/anonymizer shows its usage, migrates
 * from the schema embedded in it, and as the service stores records exactly
 * once. The build needs a denort, which only DENORT_BIN or Deno's cache can
 * give here; without one the build test is registered as ignored, so a
 * missing build shows as ignored, never as passed.
 */
import assert from "node:assert/strict";
import {
  assertExactlyOnce,
  createWorld,
  delay,
  produceRecords,
  storedCount,
  waitForRows,
} from "../testing/pipeline.ts";
import { CLICKHOUSE_URL, clickhouseQuery, uniqueName } from "../testing/stack.ts";

const ROOT = new URL("..", import.meta.url);
const BINARY = new URL("dist/anonymizer", ROOT).pathname;
const SCRIPT = "scripts/compile.sh";

interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

/** The deno running this test first on PATH, so the script calls the same one. */
function pathWithThisDeno(path = Deno.env.get("PATH") ?? ""): string {
  const exe = Deno.execPath();
  return `${exe.slice(0, exe.lastIndexOf("/"))}:${path}`;
}

async function sh(
  cmd: string,
  args: string[],
  options: { env?: Record<string, string>; clearEnv?: boolean } = {},
): Promise<Output> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", ...options.env, PATH: pathWithThisDeno(options.env?.PATH) },
    clearEnv: options.clearEnv ?? false,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

/** The environment without DENORT_BIN, and with a Deno cache that holds no denort. */
async function envWithoutDenort(): Promise<Record<string, string>> {
  const env = Deno.env.toObject();
  delete env.DENORT_BIN;
  return { ...env, DENO_DIR: await Deno.makeTempDir({ prefix: "deno-dir-empty-" }) };
}

/** Asks the script which denort it would build on, so the test and the build agree. */
async function findDenort(): Promise<string | null> {
  const out = await sh("bash", [SCRIPT, "--print-denort"]);
  return out.code === 0 ? out.stdout.trim() : null;
}

const denort = await findDenort();

Deno.test("compile.sh without a denort says SKIPPED and exits 3, not 0", async (t) => {
  const env = await envWithoutDenort();
  try {
    const out = await sh("bash", [SCRIPT], { env, clearEnv: true });
    await t.step("exit status 3", () => assert.equal(out.code, 3, out.stdout + out.stderr));
    await t.step("one SKIPPED line on stdout that names denort and DENORT_BIN", () => {
      const lines = out.stdout.split("\n").filter((l) => l !== "");
      assert.equal(lines.length, 1, out.stdout);
      assert.match(lines[0]!, /^SKIPPED: deno compile needs denort\b.*\bDENORT_BIN\b/);
    });
    const task = await sh(Deno.execPath(), ["task", "compile"], { env, clearEnv: true });
    await t.step("deno task compile passes the 3 on", () => {
      assert.equal(task.code, 3, task.stdout + task.stderr);
      assert.match(task.stdout, /^SKIPPED: /m);
    });
  } finally {
    await Deno.remove(env.DENO_DIR!, { recursive: true });
  }
});

Deno.test("compile.sh refuses a DENORT_BIN that is not an executable file", async (t) => {
  const missing = "/nonexistent/denort";
  const out = await sh("bash", [SCRIPT], { env: { DENORT_BIN: missing } });
  await t.step("exit status 2, distinct from a skip", () => assert.equal(out.code, 2));
  await t.step("one line naming DENORT_BIN and its value", () => {
    const lines = out.stderr.split("\n").filter((l) => l !== "");
    assert.equal(lines.length, 1, out.stderr);
    assert.match(lines[0]!, /DENORT_BIN/);
    assert.ok(lines[0]!.includes(JSON.stringify(missing)), lines[0]);
    assert.doesNotMatch(out.stdout, /SKIPPED/);
  });
});

Deno.test({
  name: denort === null
    ? "dist/anonymizer builds, shows usage, migrates and stores records exactly once (SKIPPED: no denort; set DENORT_BIN)"
    : "dist/anonymizer builds, shows usage, migrates and stores records exactly once",
  ignore: denort === null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const built = await t.step("deno task compile builds dist/anonymizer", async () => {
      const out = await sh(Deno.execPath(), ["task", "compile"], {
        env: denort!.endsWith(".zip") ? {} : { DENORT_BIN: denort! },
      });
      assert.equal(out.code, 0, out.stdout + out.stderr);
      const info = await Deno.stat(BINARY);
      assert.ok(info.isFile && (info.mode! & 0o111) !== 0, "not an executable file");
    });
    // Without a binary every later step would fail for the same reason.
    if (!built) return;

    await t.step("each subcommand's --help exits 0 with its usage", async () => {
      const top = await sh(BINARY, ["--help"], { clearEnv: true });
      assert.equal(top.code, 0, top.stderr);
      assert.match(top.stdout, /^Usage: anonymizer <command>/);
      for (const command of ["run", "produce", "migrate", "status", "demo"]) {
        const out = await sh(BINARY, [command, "--help"], { clearEnv: true });
        assert.equal(out.code, 0, `${command}: ${out.stderr}`);
        assert.match(out.stdout, new RegExp(`^Usage: anonymizer ${command}\\b`));
      }
    });

    await t.step("a bad setting is one line and exit 2, as from deno run", async () => {
      const out = await sh(BINARY, ["run"], { env: { KAFKA_BROKERS: "x" }, clearEnv: true });
      assert.equal(out.code, 2);
      assert.deepEqual(out.stderr.trim().split("\n"), [
        'Cannot start as KAFKA_BROKERS must be host:port[,host:port...]: current value is "x"',
      ]);
    });

    await t.step("migrate creates the tables from the schema inside the binary", async () => {
      const database = uniqueName("compiled");
      const dir = await Deno.makeTempDir({ prefix: "anonymizer-compiled-" });
      try {
        // Run from an empty folder: the schema must come from the binary, not the work tree.
        const out = await new Deno.Command(BINARY, {
          args: ["migrate", "--direct", CLICKHOUSE_URL],
          cwd: dir,
          clearEnv: true,
          env: { CLICKHOUSE_DATABASE: database, KV_PATH: `${dir}/queue.kv`, NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
        assert.equal(out.code, 0, text);
        const tables = await clickhouseQuery(
          `SELECT name FROM system.tables WHERE database = '${database}' ORDER BY name`,
        );
        assert.deepEqual(tables.trim().split("\n"), [
          "http_log",
          "http_log_totals_1m",
          "http_log_totals_ip_1h",
          "http_log_totals_resource_1h",
          "http_log_totals_resource_ip_1h",
        ]);
      } finally {
        await clickhouseQuery(`DROP DATABASE IF EXISTS ${database}`);
        await Deno.remove(dir, { recursive: true });
      }
    });

    await t.step("as the service it stores 2,000 records exactly once", async () => {
      await using world = await createWorld();
      const { records } = await produceRecords(world, { count: 2_000, seed: 2_000 });
      const logPath = `${world.dir}/compiled-service.log`;
      const log = await Deno.open(logPath, { create: true, write: true, truncate: true });
      const child = new Deno.Command(BINARY, {
        args: ["run"],
        cwd: world.dir,
        clearEnv: true,
        env: { ...world.env, NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const writer = log.writable.getWriter();
      const pump = async (s: ReadableStream<Uint8Array>) => {
        for await (const chunk of s) await writer.write(chunk);
      };
      const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]).finally(() =>
        writer.close()
      );
      try {
        assert.equal(
          await waitForRows(world.database, 2_000, 180_000),
          2_000,
          await Deno.readTextFile(logPath),
        );
        await assertExactlyOnce(world.database, records);
      } finally {
        child.kill("SIGTERM");
        const status = await child.status;
        await pumped;
        assert.equal(status.code, 0, `SIGTERM exit:\n${await Deno.readTextFile(logPath)}`);
      }
      // A late duplicate would show up after the stop, when nothing can mask it.
      await delay(1_000);
      assert.equal(await storedCount(world.database), 2_000);
    });
  },
});
