/**
 * The status view on a real service: `anonymizer status --json` follows
 * records as they flow, the table names every item, an unreachable address is
 * named in the error, and the page at `/` shows the live numbers in Debian's
 * chromium (headless), with a screenshot kept as a test artefact.
 */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  createWorld,
  JOINED_GROUP,
  produceRecords,
  type ServiceProcess,
  spawnService,
  storedCount,
} from "../testing/pipeline.ts";
import { CLICKHOUSE_TARGET, freePort } from "../testing/stack.ts";
import { runCli } from "../testing/cli.ts";
import { report, waitUntil } from "../testing/bad_input.ts";
import { renderStatus, type StatusSnapshot } from "../lib/status.ts";

const CHROMIUM = "/usr/bin/chromium";
const GOOD = 1_500;
const TOO_OLD = 7;
const ARTEFACTS = resolve(
  Deno.env.get("STACK_DIR") ?? fileURLToPath(new URL("../.stack", import.meta.url)),
  "artefacts",
);

async function hasChromium(): Promise<boolean> {
  try {
    return (await Deno.stat(CHROMIUM)).isFile;
  } catch {
    return false;
  }
}

async function statusJson(service: ServiceProcess): Promise<StatusSnapshot> {
  const run = await runCli(["status", "--json"], { METRICS_LISTEN: service.metricsAddr! });
  assert.equal(run.code, 0, `status --json failed: ${run.stderr}`);
  return JSON.parse(run.stdout);
}

/** Runs headless chromium on `url` with `args`; resolves to its stdout. */
async function chromium(url: string, profile: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(CHROMIUM, {
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${profile}`,
      "--window-size=1000,760",
      // Virtual time waits for the page's fetch of /status.json, then runs its script.
      "--virtual-time-budget=5000",
      ...args,
      url,
    ],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `chromium ${args.join(" ")} exited ${out.code}: ${stderr}`);
  return new TextDecoder().decode(out.stdout);
}

/** Text of the element with `id` in a DOM dump, tags removed. */
function textOf(dom: string, id: string): string {
  const m = new RegExp(`id="${id}"[^>]*>(.*?)</(td|span|div|svg)>`, "s").exec(dom);
  assert.ok(m, `the page has an element #${id}`);
  return m[1]!.replace(/<[^>]*>/g, "").replace(/&amp;/g, "&");
}

Deno.test({
  name: "status() shows live numbers as JSON, as a table and as a page",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld({ prefix: "status", proxy: { rate: "6r/m" } });
    const service = await spawnService(world, { metrics: true });
    try {
      await service.waitForLog(JOINED_GROUP);
      const base = `http://${service.metricsAddr}`;
      const snapshot = async (): Promise<StatusSnapshot> =>
        await (await fetch(`${base}/status.json`)).json();

      let instance = "";
      let queued: StatusSnapshot | undefined;
      let sealed: StatusSnapshot | undefined;
      await t.step("status --json shows the owned partitions and an empty queue", async () => {
        const s = await statusJson(service);
        instance = s.instance;
        assert.match(instance, /\S/);
        assert.ok(s.kafka.joined);
        assert.deepEqual(s.kafka.partitions.map((p) => p.partition), [0, 1, 2]);
        assert.equal(s.queue.rows, 0);
        assert.equal(s.queue.landedRows, 0);
        assert.equal(s.batch, null);
        assert.deepEqual(s.deadLetters, {});
        assert.ok(s.queue.diskBytes > 0, "KV on disk has a size");
        assert.ok(s.history.samples.length >= 1);
        assert.equal(s.clickhouse.dedupSetting, "auto");
      });

      await t.step("status --json shows rows queued, then sealed, then landed", async () => {
        await produceRecords(world, { count: GOOD, seed: 7_100 });
        // 40 days old: past MAX_PAST_AGE_MS (30 days), so each is dead-lettered as timestamp_too_old.
        await produceRecords(world, {
          count: TOO_OLD,
          seed: 7_200,
          now: Date.now() - 40 * 86_400_000,
        });
        // The proxy allows one request per 10 s, so the rows wait in KV for the next slot.
        assert.ok(
          await waitUntil(
            async () => {
              const s = await snapshot();
              if (s.queue.landedRows === 0 && s.queue.rows === GOOD) queued = s;
              return queued !== undefined || s.queue.landedRows > 0;
            },
            60_000,
            100,
          ),
          "the rows were consumed within 60 s",
        );
        assert.ok(queued, `all ${GOOD} rows were seen queued before any landed`);
        assert.ok(queued.queue.oldestAgeMs >= 0);
        report(
          `queued: ${queued.queue.rows} rows, next slot in ${
            queued.pacing.nextSlotAt - queued.at
          } ms`,
        );

        await waitUntil(
          async () => {
            const s = await snapshot();
            if (s.batch !== null) sealed = s;
            return sealed !== undefined || s.queue.landedRows === GOOD;
          },
          60_000,
          50,
        );
        assert.ok(sealed?.batch, "the sealed batch was seen before it landed");
        assert.match(sealed.batch.id, /^\d+$/);
        assert.equal(sealed.batch.rows, GOOD);
        assert.ok(sealed.batch.bytes > 0);
        assert.match(sealed.batch.state, /^(sealed|sending)$/);
        assert.equal(sealed.queue.sealedRows, GOOD);
        report(
          `sealed: batch ${sealed.batch.id}, ${sealed.batch.rows} rows, ${sealed.batch.state}`,
        );

        const landedSeen = new Set<number>();
        const done = await waitUntil(
          async () => {
            const s = await snapshot();
            landedSeen.add(s.queue.landedRows);
            return s.queue.landedRows === GOOD && s.queue.rows === 0 &&
              s.deadLetters.timestamp_too_old === TOO_OLD;
          },
          120_000,
          200,
        );
        assert.ok(done, `all ${GOOD} rows landed and ${TOO_OLD} dead-lettered within 120 s`);
        assert.equal(await storedCount(world.database), GOOD);
        report(`landed rows seen while polling: ${[...landedSeen].join(", ")}`);

        const s = await statusJson(service);
        assert.equal(s.instance, instance);
        assert.equal(s.queue.landedRows, GOOD);
        assert.ok(s.queue.landedBatches >= 1);
        assert.equal(s.queue.rows, 0);
        assert.equal(s.queue.oldestAgeMs, 0);
        assert.deepEqual(s.deadLetters, { timestamp_too_old: TOO_OLD });
        assert.ok(
          s.flushes.some((f) => f.kind === "insert" && f.outcome === "ok" && f.rows !== null),
          `an ok insert among the last flushes: ${JSON.stringify(s.flushes)}`,
        );
        assert.match(
          s.clickhouse.version ?? "",
          CLICKHOUSE_TARGET.name === "18.16" ? /^18\.16\./ : /^2\d\./,
        );
        assert.equal(s.clickhouse.dedup, CLICKHOUSE_TARGET.name === "18.16" ? "check" : "token");
        assert.ok(s.pacing.nextSlotAt > 0);
        const history = s.history.samples;
        assert.equal(history[0]!.landedRows, 0, "the first sample predates the records");
        assert.equal(history.at(-1)!.landedRows, GOOD, "the last sample is the snapshot's");
        assert.deepEqual(
          s.kafka.partitions.map((p) => p.lag),
          [0, 0, 0],
          "no lag once every message is consumed",
        );
      });

      await t.step("status prints a table naming each item", async () => {
        const run = await runCli(["status"], { METRICS_LISTEN: service.metricsAddr! });
        assert.equal(run.code, 0, run.stderr);
        report(`anonymizer status:\n${run.stdout}`);
        const table = run.stdout;
        assert.match(table, new RegExp(`^Instance +${instance} at `, "m"));
        assert.match(table, /^Kafka +joined$/m);
        assert.match(table, /^Partitions +0 \(lag 0\), 1 \(lag 0\), 2 \(lag 0\)$/m);
        assert.match(table, /^Consumer lag +0 messages in total$/m);
        assert.match(table, /^Queued +0 rows \(0 sealed\), oldest 0\.0 s$/m);
        assert.match(table, /^KV on disk +[\d.]+ (B|KiB|MiB)$/m);
        assert.match(table, /^Sealed batch +none$/m);
        assert.match(table, /^Next slot +(now|in [\d.]+ s)/m);
        assert.match(table, /^(Last flushes| {14}).* ago: insert ok, \d+ rows, \d+ ms$/m);
        assert.match(table, /^Refusals +\d+ since start, 0 in a row$/m);
        assert.match(
          table,
          new RegExp(`^Dead letters +timestamp_too_old ${TOO_OLD} \\(since start\\)$`, "m"),
        );
        assert.match(table, /^ClickHouse +[\d.]+, dedup (check|token) \(CLICKHOUSE_DEDUP=auto\)$/m);
        assert.match(table, new RegExp(`^Landed +${GOOD} rows in \\d+ batches by this KV$`, "m"));
        // The rows in flight were seen as JSON only; the same rendering shows them.
        assert.match(
          renderStatus(queued!),
          new RegExp(`^Queued +${GOOD} rows \\(0 sealed\\), oldest`, "m"),
        );
        assert.match(
          renderStatus(sealed!),
          new RegExp(
            `^Sealed batch +\\d+: ${GOOD} rows, [\\d.]+ (B|KiB|MiB), (sealed|sending), \\d+ attempts`,
            "m",
          ),
        );
      });

      await t.step("status names the address when no instance answers there", async () => {
        const url = `http://127.0.0.1:${freePort()}`;
        const run = await runCli(["status", "--url", url], {});
        assert.equal(run.code, 1);
        assert.match(run.stderr, new RegExp(`no anonymizer answered at ${url}/status\\.json`));
        assert.equal(run.stdout, "");
      });

      const browser = await hasChromium();
      await t.step({
        name: browser
          ? "the page at / shows the live numbers in headless chromium"
          : `the page at / in headless chromium: SKIPPED as ${CHROMIUM} is absent (apt-get install -y chromium)`,
        ignore: !browser,
        async fn() {
          const profile = await Deno.makeTempDir({ dir: world.dir, prefix: "chromium-" });
          const dom = await chromium(`${base}/`, profile, ["--dump-dom"]);
          const now = await snapshot();
          assert.match(dom, /<body data-loaded="\d+"/, "the page's script rendered a snapshot");
          assert.equal(textOf(dom, "instance"), instance);
          assert.equal(textOf(dom, "partitions"), "0 (lag 0), 1 (lag 0), 2 (lag 0)");
          assert.equal(
            textOf(dom, "landed"),
            `${GOOD} rows in ${now.queue.landedBatches} batches by this KV`,
          );
          assert.equal(textOf(dom, "dead"), `timestamp_too_old ${TOO_OLD} (since start)`);
          assert.match(textOf(dom, "clickhouse"), new RegExp(`^${now.clickhouse.version}, dedup`));
          assert.match(textOf(dom, "flushes"), /insert ok/);
          for (const id of ["spark-queued", "spark-landed"]) {
            const m = new RegExp(
              `id="${id}"[^>]*data-points="(\\d+)"[^>]*><polyline points="([^"]+)"`,
            )
              .exec(dom);
            assert.ok(
              m,
              `#${id} holds a sparkline: ${dom.slice(dom.indexOf(id), dom.indexOf(id) + 300)}`,
            );
            assert.ok(Number(m[1]) >= 2, `#${id} has at least two samples`);
          }

          await Deno.mkdir(ARTEFACTS, { recursive: true });
          const shot = resolve(ARTEFACTS, `status_page-${CLICKHOUSE_TARGET.name}.png`);
          await Deno.remove(shot).catch(() => {});
          await chromium(`${base}/`, profile, [`--screenshot=${shot}`]);
          const png = await Deno.readFile(shot);
          assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], "the screenshot is a PNG");
          report(`screenshot of the status page: ${shot} (${png.byteLength} bytes)`);
        },
      });
    } finally {
      await service.kill("SIGTERM");
    }
  },
});
