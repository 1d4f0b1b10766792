/**
 * The V8 heap limits that deno.json's run task (and scripts/compile.sh and
 * the Dockerfile) give the service leave room for its largest single piece
 * of work: one seal of 40,000 candidate rows into a full 1 MiB body, for
 * each wire encoding, with stock rows and with rows at the 8 KiB URL limit
 * (a seal decodes at most 16 MiB of rows, however many chunks they fill).
 * A limit too low shows here as a child killed by V8's out-of-memory abort.
 */
import assert from "node:assert/strict";
import { runTaskFlags, runTaskV8Flags } from "../testing/run_task_flags.ts";

const ROOT = new URL("..", import.meta.url);
const MIB = 1_048_576;

interface SealReport {
  rows: number;
  bytes: number;
  encoding: string | null;
  offered: number;
  heapMaxMb: number;
  heapLimitMb: number;
}

async function largestSeal(scenario: string, serverVersion: string): Promise<SealReport> {
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-heap-" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...runTaskFlags(),
        "tests/_largest_seal_child.ts",
        `${dir}/queue.kv`,
        scenario,
        serverVersion,
      ],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(
      out.code,
      0,
      `the seal exited with ${out.code} under ${runTaskV8Flags()}: ${stderr}`,
    );
    return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

for (
  const [server, version, encoding] of [
    ["18.16", "18.16.1", "native_clickhouse_zstd"],
    ["26.9", "26.9.2.1", "native_planes_zstd"],
  ] as const
) {
  Deno.test(`seal() of 40,000 candidates fits the run task's heap limit on ${server}`, async (t) => {
    await t.step("stock rows fill a 1 MiB body", async () => {
      const r = await largestSeal("stock", version);
      assert.ok(r.offered >= 40_000 && r.offered < 42_000, `${r.offered} rows offered`);
      assert.equal(r.encoding, encoding);
      assert.ok(r.bytes > 0.97 * MIB && r.bytes <= MIB, `body of ${r.bytes} bytes`);
      assert.ok(r.rows > 15_000, `${r.rows} rows`);
      assert.ok(r.heapMaxMb < r.heapLimitMb, JSON.stringify(r));
    });
    await t.step(
      "rows with 8 KiB random URLs: the seal decodes at most 16 MiB of them",
      async () => {
        const r = await largestSeal("long_urls", version);
        assert.equal(r.encoding, encoding);
        assert.ok(r.offered >= 2_000 && r.offered * 8_192 <= 17 * MIB, `${r.offered} rows offered`);
        assert.ok(r.bytes > 0.9 * MIB && r.bytes <= MIB, `body of ${r.bytes} bytes`);
        assert.ok(r.heapMaxMb < r.heapLimitMb, JSON.stringify(r));
      },
    );
  });
}

Deno.test("compile.sh and the Dockerfile start the service with the run task's V8 flags", async (t) => {
  const flags = runTaskV8Flags();
  await t.step("scripts/compile.sh bakes them into the binary", async () => {
    const script = await Deno.readTextFile(new URL("scripts/compile.sh", ROOT));
    assert.ok(script.includes(`V8_FLAGS="${flags}"`), `compile.sh must set V8_FLAGS="${flags}"`);
    assert.match(script, /deno compile [^\n]*"--v8-flags=\$V8_FLAGS"/);
  });
  await t.step("the Dockerfile's entrypoint passes them", async () => {
    const dockerfile = await Deno.readTextFile(new URL("Dockerfile", ROOT));
    const entrypoint = dockerfile.split("\n").find((l) => l.startsWith("ENTRYPOINT "));
    assert.ok(entrypoint?.includes(`"--v8-flags=${flags}"`), entrypoint);
  });
});
