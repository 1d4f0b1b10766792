/**
 * A full disk under the KV queue: consumption pauses with a log line and a
 * metric, nothing is lost or corrupted, and it resumes when space returns.
 * The disk is a real tmpfs (needs root, as CI and the stack scripts run).
 */
import assert from "node:assert/strict";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import { startService } from "../lib/service.ts";
import { startFaultProxy } from "../testing/fault_proxy.ts";
import { CLICKHOUSE_URL } from "../testing/stack.ts";
import {
  assertExactlyOnce,
  createWorld,
  delay,
  produceRecords,
  waitForRows,
  worldConfig,
} from "../testing/pipeline.ts";

async function mount(dir: string, size: string, remount = false): Promise<boolean> {
  const args = remount
    ? ["-o", `remount,size=${size}`, dir]
    : ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir];
  return (await new Deno.Command("mount", { args, stderr: "null" }).output()).success;
}

const mnt = await Deno.makeTempDir({ prefix: "anonymizer-kvdisk-" });
const canMount = await mount(mnt, "1m") &&
  (await new Deno.Command("umount", { args: [mnt] }).output()).success;
if (!canMount && Deno.env.get("CI") === "true") {
  throw new Error(
    "Cannot mount a tmpfs for the disk-full test: CI runs as root and must be able to",
  );
}

function metric(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : NaN;
}

Deno.test({
  name: "anonymizer pauses consumption while the KV disk is full and resumes when space returns",
  ignore: !canMount,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const lines: string[] = [];
    await configure({
      reset: true,
      sinks: { mem: (r: LogRecord) => lines.push(r.message.map(String).join("")) },
      loggers: [{ category: ["anonymizer"], lowestLevel: "info", sinks: ["mem"] }],
    });
    // Compressed, 30,000 stock rows take about 2.4 MB of KV with its WAL.
    assert.ok(await mount(mnt, "1536k"), "mount a 1.5 MiB tmpfs");
    await using fault = await startFaultProxy(new URL(CLICKHOUSE_URL).host, {
      mode: "down",
    });
    await using world = await createWorld({
      proxy: { rate: "120r/m", upstream: fault.hostPort },
      env: { KV_PATH: `${mnt}/queue.kv` },
    });
    const service = await startService(worldConfig(world));
    try {
      let records: Awaited<ReturnType<typeof produceRecords>>["records"] = [];
      await t.step("30,000 records do not fit in 1.5 MiB of KV: consumption pauses", async () => {
        ({ records } = await produceRecords(world, { count: 30_000, seed: 31 }));
        const deadline = Date.now() + 90_000;
        let text = "";
        while (Date.now() < deadline) {
          text = await service.metrics.registry.metrics();
          if (metric(text, "anonymizer_backpressure") === 1) break;
          await delay(500);
        }
        assert.equal(metric(text, "anonymizer_backpressure"), 1, "the back-pressure metric");
        assert.ok(
          lines.some((l) => l.includes("Consumption paused as KV refuses writes")),
          "the log line",
        );
        const consumed = metric(text, "anonymizer_records_consumed_total");
        assert.ok(consumed < 30_000, `consumption stopped short: ${consumed} of 30000`);
        await delay(3_000);
        const later = metric(
          await service.metrics.registry.metrics(),
          "anonymizer_records_consumed_total",
        );
        assert.equal(later, consumed, "nothing more is consumed while the disk is full");
      });
      await t.step("space returns: consumption resumes on its own", async () => {
        assert.ok(await mount(mnt, "64m", true), "grow the tmpfs");
        const deadline = Date.now() + 90_000;
        let text = "";
        while (Date.now() < deadline) {
          text = await service.metrics.registry.metrics();
          if (metric(text, "anonymizer_records_consumed_total") === 30_000) break;
          await delay(500);
        }
        assert.equal(metric(text, "anonymizer_backpressure"), 0);
        assert.equal(metric(text, "anonymizer_records_consumed_total"), 30_000);
        assert.ok(lines.some((l) => l.includes("KV accepts writes again")), "the resume log line");
      });
      await t.step("ClickHouse returns: every record lands exactly once", async () => {
        fault.mode = "pass";
        assert.equal(await waitForRows(world.database, 30_000, 180_000), 30_000);
        await assertExactlyOnce(world.database, records);
      });
    } finally {
      await service.stop();
      await reset();
      await new Deno.Command("umount", { args: [mnt] }).output();
    }
  },
});
