/**
 * No secret is ever echoed. A marker password is set in every setting that
 * is or can hold a secret (`CLICKHOUSE_PASSWORD`, `KAFKA_SASL_PASSWORD`, the
 * userinfo of `CLICKHOUSE_URL` and `KAFKA_BROKERS`), then every path that
 * prints runs for real: config errors at start-up, `--help`, a running
 * service's logs at trace level, its /metrics, its KV files and the headers
 * and values of its dead letters. The marker must appear nowhere.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { readTopic } from "../testing/bad_input.ts";
import { runCli } from "../testing/cli.ts";
import { createWorld, produceRecords, spawnService, until } from "../testing/pipeline.ts";
import { CLICKHOUSE_TARGETS, kafkaClient } from "../testing/stack.ts";

const MARKER = `Mk${crypto.randomUUID().replaceAll("-", "")}`;

/** Every secret setting holding the marker. */
const SECRETS: Readonly<Record<string, string>> = {
  CLICKHOUSE_PASSWORD: MARKER,
  KAFKA_SASL_PASSWORD: MARKER,
};

/** Asserts the marker is not in `text`, naming where it was looked for. */
function assertNoMarker(where: string, text: string): void {
  const at = text.indexOf(MARKER);
  assert.equal(
    at,
    -1,
    `the marker password is in ${where}: …${text.slice(Math.max(0, at - 200), at + 100)}…`,
  );
}

/** {@linkcode runCli}: the exit code and all output. */
async function cli(args: string[], env: Record<string, string>): Promise<[number, string]> {
  const run = await runCli(args, env, { timeoutMs: 60_000 });
  return [run.code, run.stdout + run.stderr];
}

/** Every byte of the files of the queue at `kvPath` (database, WAL, lock), as Latin-1 text. */
async function kvFilesText(kvPath: string): Promise<string> {
  let text = "";
  for (const suffix of ["", "-wal", "-shm", ".lock"]) {
    try {
      text += new TextDecoder("latin1").decode(await Deno.readFile(kvPath + suffix));
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  return text;
}

Deno.test("anonymizer never echoes a secret in config errors or --help", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-secrets-" });
  const base = {
    ...SECRETS,
    KAFKA_BROKERS: "127.0.0.1:9",
    CLICKHOUSE_URL: "http://127.0.0.1:9",
    KV_PATH: `${dir}/q.kv`,
    METRICS_LISTEN: "",
  };
  try {
    const cases: Array<[string, string[], Record<string, string>]> = [
      ["CLICKHOUSE_URL with userinfo", ["run"], {
        CLICKHOUSE_URL: `http://admin:${MARKER}@127.0.0.1:8124`,
      }],
      ["--clickhouse-url with userinfo", ["run", "--clickhouse-url", `http://a:${MARKER}@h:1`], {}],
      ["KAFKA_BROKERS with userinfo", ["run"], { KAFKA_BROKERS: `user:${MARKER}@127.0.0.1:9092` }],
      ["a misspelt password flag", ["run", `--clickhouse-pasword=${MARKER}`], {}],
      ["a bad value beside set secrets", ["run"], { LOG_LEVEL: "verbose" }],
      ["SASL without a user", ["run"], { KAFKA_SASL_MECHANISM: "plain" }],
    ];
    for (const [what, args, env] of cases) {
      await t.step(`a start-up failure on ${what} exits 2 without the marker`, async () => {
        const [code, output] = await cli(args, { ...base, ...env });
        assert.equal(code, 2, output);
        assertNoMarker(`the output of ${what}`, output);
      });
    }
    await t.step("a URL's password is shown as ***", async () => {
      const [, output] = await cli(["run"], {
        ...base,
        CLICKHOUSE_URL: `http://admin:${MARKER}@127.0.0.1:8124`,
      });
      assert.match(output, /"http:\/\/\*\*\*@127\.0\.0\.1:8124"/);
    });
    for (const command of ["run", "produce", "migrate", "demo"]) {
      await t.step(`${command} --help shows no secret`, async () => {
        const [code, output] = await cli([command, "--help"], base);
        assert.equal(code, 0, output);
        assertNoMarker(`${command} --help`, output);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "anonymizer run logs nothing secret at trace level in JSON while Kafka refuses its SASL login",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "anonymizer-secrets-sasl-" });
    const world = {
      dir,
      env: {
        ...SECRETS,
        KAFKA_SASL_MECHANISM: "plain",
        KAFKA_SASL_USERNAME: "anonymizer",
        CLICKHOUSE_URL: "http://127.0.0.1:9",
        KV_PATH: `${dir}/q.kv`,
        METRICS_LISTEN: "",
        LOG_LEVEL: "trace",
        LOG_FORMAT: "json",
      },
    } as unknown as Parameters<typeof spawnService>[0];
    const service = await spawnService(world, { name: "sasl" });
    try {
      // The stack's broker has no SASL listener: the login fails and start-up retries.
      await service.waitForLog(/Cannot connect the dead-letter producer with Kafka/, {
        timeoutMs: 90_000,
      });
      const status = await service.kill("SIGTERM");
      assert.equal(status.code, 0, service.log().slice(-3000));
      assertNoMarker("the service's output", service.log());
      assertNoMarker("the KV files", await kvFilesText(`${dir}/q.kv`));
    } finally {
      await service.kill("SIGKILL");
      await Deno.remove(dir, { recursive: true });
    }
  },
});

for (const target of CLICKHOUSE_TARGETS) {
  Deno.test({
    name:
      `anonymizer run shows no secret in logs, /metrics, KV or dead letters on ClickHouse ${target.name}`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      await using world = await createWorld({
        prefix: "secrets",
        clickhouse: { url: target.url },
        env: { ...SECRETS, LOG_LEVEL: "trace" },
      });
      const service = await spawnService(world, { metrics: true });
      try {
        await t.step("it consumes records and dead-letters a bad message", async () => {
          await service.waitForLog(/Joined group/, { timeoutMs: 90_000 });
          await produceRecords(world, { count: 20, seed: 11 });
          const producer = kafkaClient("anonymizer-tests-secrets").producer();
          await producer.connect();
          await producer.send({
            topic: world.topic,
            messages: [{ value: Buffer.from("not capnp at all") }],
          });
          await producer.disconnect();
          await until("the dead letter", async () => {
            const letters = await readTopic(world.dlqTopic);
            return letters.length >= 1 ? true : undefined;
          });
        });
        await t.step("it sends at least one request to ClickHouse", async () => {
          await service.waitForLog(/Request \S+ for batch|Flushed batch/, { timeoutMs: 90_000 });
        });
        await t.step("/metrics holds no marker", async () => {
          assertNoMarker("/metrics", (await service.scrape()).text);
        });
        await t.step("dead letters hold no marker in headers, key or value", async () => {
          const letters = await readTopic(world.dlqTopic);
          assert.ok(letters.length >= 1);
          for (const l of letters) {
            assertNoMarker("a dead letter's headers", JSON.stringify(l.headers));
            assertNoMarker("a dead letter's key", l.key ?? "");
            assertNoMarker(
              "a dead letter's value",
              new TextDecoder("latin1").decode(l.value ?? new Uint8Array()),
            );
          }
        });
        await t.step("the output and the KV files hold no marker", async () => {
          const status = await service.kill("SIGTERM");
          assert.equal(status.code, 0, service.log().slice(-3000));
          assertNoMarker("the service's output", service.log());
          assertNoMarker("the KV files", await kvFilesText(world.env.KV_PATH!));
        });
      } finally {
        await service.kill("SIGKILL");
      }
    },
  });
}
