import assert from "node:assert/strict";
import { main } from "./produce_command.ts";

/** Runs main() with no Kafka needed: every case here stops before connecting. */
async function run(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ status: number; out: string[]; err: string[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const status = await main(args, {
    env,
    stdout: (line) => out.push(line),
    stderr: (line) => err.push(line),
    signal: AbortSignal.abort(),
  });
  return { status, out, err };
}

Deno.test("main() refuses a bad option with one line and status 2", async (t) => {
  const cases: [string[], Record<string, string>, string][] = [
    [
      ["--rate", "fast"],
      {},
      '--rate must be a number ≥ 0 (0 = unthrottled): current value is "fast"',
    ],
    [["--rate", "-5"], {}, '--rate must be a number ≥ 0 (0 = unthrottled): current value is "-5"'],
    [["--count", "1.5"], {}, '--count must be a whole number ≥ 0: current value is "1.5"'],
    [["--count", "1e3"], {}, '--count must be a whole number ≥ 0: current value is "1e3"'],
    [
      ["--seed", "4294967296"],
      {},
      '--seed must be an integer in [0, 4294967295]: current value is "4294967296"',
    ],
    [
      ["--kafka-brokers", "kafka"],
      {},
      '--kafka-brokers must be host:port[,host:port...]: current value is "kafka"',
    ],
    [
      ["--kafka-brokers", "a:9092,b:99999"],
      {},
      '--kafka-brokers must be host:port[,host:port...]: current value is "a:9092,b:99999"',
    ],
    [
      ["--kafka-brokers", "[::1]:9092"],
      {},
      '--kafka-brokers must be host:port[,host:port...]: current value is "[::1]:9092"',
    ],
    [
      [],
      { KAFKA_BROKERS: "a:1," },
      'KAFKA_BROKERS must be host:port[,host:port...]: current value is "a:1,"',
    ],
    [
      ["--kafka-topic", "a b"],
      {},
      '--kafka-topic must be 1 to 249 of [A-Za-z0-9._-], not starting with -: current value is "a b"',
    ],
    [
      [],
      { KAFKA_TOPIC: "-x" },
      'KAFKA_TOPIC must be 1 to 249 of [A-Za-z0-9._-], not starting with -: current value is "-x"',
    ],
    [["--kafka-topic"], {}, '--kafka-topic needs a value: current value is ""'],
    [["--distinct-ids=yes"], {}, '--distinct-ids takes no value: current value is "yes"'],
    [
      ["--frob"],
      {},
      "an option must be one of --kafka-brokers, --kafka-topic, --rate, --count, --seed, --distinct-ids, --help: " +
      'current value is "--frob"',
    ],
    [["1000"], {}, 'produce takes no positional argument: current value is "1000"'],
  ];
  for (const [args, env, message] of cases) {
    await t.step(`${args.join(" ") || JSON.stringify(env)}`, async () => {
      const { status, out, err } = await run(args, env);
      assert.equal(status, 2);
      assert.deepEqual(out, []);
      assert.deepEqual(err, [`Cannot start as ${message}`]);
    });
  }
});

Deno.test("main() prints help and exits 0", async (t) => {
  for (const flag of ["--help", "-h"]) {
    await t.step(flag, async () => {
      const { status, out, err } = await run([flag, "--rate", "fast"]);
      assert.equal(status, 0);
      assert.equal(err.length, 0);
      assert.match(out[0]!, /^Usage: anonymizer produce \[options\]/);
      for (
        const option of [
          "--kafka-brokers",
          "--kafka-topic",
          "--rate",
          "--count",
          "--seed",
          "--distinct-ids",
        ]
      ) {
        assert.ok(out[0]!.includes(option), option);
      }
    });
  }
});

Deno.test("main() accepts valid options and stops on its signal before connecting", async (t) => {
  await t.step("flags", async () => {
    const { status, out, err } = await run([
      "--kafka-brokers=127.0.0.1:1,localhost:2",
      "--kafka-topic",
      "http_log.v2",
      "--rate",
      "0.5",
      "--count",
      "10",
      "--seed",
      "4294967295",
      "--distinct-ids",
    ]);
    assert.deepEqual(err, []);
    assert.equal(status, 0);
    assert.deepEqual(out, [
      "produce: stopped after 0 records to http_log.v2 (partitions none) in 0.0 s, 0.0 msg/s, seed 4294967295",
    ]);
  });
  await t.step("environment", async () => {
    const { status, out } = await run(["--seed", "1"], {
      KAFKA_BROKERS: "127.0.0.1:1",
      KAFKA_TOPIC: "from_env",
    });
    assert.equal(status, 0);
    assert.match(out[0]!, /to from_env /);
  });
});
