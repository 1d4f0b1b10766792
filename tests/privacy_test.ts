/**
 * No raw client address may leave the pure middle of the pipeline: after an
 * end-to-end run with debug logging, good records and malformed ones (IPv6,
 * ports, mapped and invalid addresses, dead letters), no address produced
 * appears in the KV files, the service's logs, /metrics or any ClickHouse
 * table of the world's database. Each search must also find strings known to
 * be there, so that finding no address means something.
 */
import assert from "node:assert/strict";
import { zstdDecompressSync } from "node:zlib";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import { createWorld, scrapeMetrics, spawnService, storedCount } from "../testing/pipeline.ts";
import { clickhouseQuery, freePort, topicMessageCount } from "../testing/stack.ts";
import {
  BUILDERS,
  goodMessages,
  interleave,
  leakForms,
  malformedMessages,
  type TestMessage,
} from "../testing/malformed.ts";
import { metricSum, produceRaw, report, waitUntil } from "../testing/bad_input.ts";

const GOOD = 2_000;
const MALFORMED = Object.keys(BUILDERS).length * 4;
/** Shorter texts (e.g. `::1`) occur in unrelated output, so finding them would prove nothing. */
const MIN_NEEDLE = 7;

/** Bytes as a string of the same length, one char per byte, so ASCII needles match raw bytes. */
function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return s;
}

/**
 * The text of every value in a copy of a KV folder, zstd frames opened: the
 * queue stores rows as a format tag byte and one zstd frame, so an address
 * in them would not show in the files' raw bytes.
 */
async function kvValues(
  files: ReadonlyArray<{ path: string; bytes: Uint8Array }>,
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-privacy-kv-" });
  try {
    for (const f of files) await Deno.writeFile(`${dir}/${f.path.split("/").pop()}`, f.bytes);
    const main = files.map((f) => f.path.split("/").pop()!).find((n) => n.endsWith(".kv"));
    assert.ok(main !== undefined, "a .kv file in the copy");
    using kv = await Deno.openKv(`${dir}/${main}`);
    const texts: string[] = [];
    // Chunks are objects with the frame in a field; batch row parts are the bytes alone.
    const walk = (v: unknown): void => {
      if (v instanceof Uint8Array) {
        texts.push(latin1(v));
        try {
          texts.push(latin1(zstdDecompressSync(v.subarray(1))));
        } catch {
          // Not a compressed value: its raw bytes are searched as they are.
        }
      } else if (typeof v === "string") {
        texts.push(v);
      } else if (typeof v === "object" && v !== null) {
        for (const x of Object.values(v)) walk(x);
      }
    };
    for await (const e of kv.list({ prefix: [] })) walk(e.value);
    return texts.join("\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The needles that occur in `haystack` (exact substrings). */
function findNeedles(haystack: string, needles: ReadonlySet<string>): Set<string> {
  const byFirst = new Map<number, Set<number>>();
  for (const n of needles) {
    const c = n.charCodeAt(0);
    let lengths = byFirst.get(c);
    if (lengths === undefined) byFirst.set(c, lengths = new Set());
    lengths.add(n.length);
  }
  const found = new Set<string>();
  for (let i = 0; i < haystack.length; i++) {
    const lengths = byFirst.get(haystack.charCodeAt(i));
    if (lengths === undefined) continue;
    for (const len of lengths) {
      const s = haystack.slice(i, i + len);
      if (needles.has(s)) found.add(s);
    }
  }
  return found;
}

async function readTree(dir: string): Promise<Array<{ path: string; bytes: Uint8Array }>> {
  const out = [];
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await readTree(path));
    else if (e.isFile) out.push({ path, bytes: await Deno.readFile(path) });
  }
  return out;
}

Deno.test({
  name: "anonymizer dead-letters and stores malformed input without leaking a client address",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const metricsPort = freePort();
    await using world = await createWorld({
      // A long spacing keeps every row queued in KV for a while, where it is searched.
      spacingMs: 15_000,
      env: { LOG_LEVEL: "debug", METRICS_LISTEN: `127.0.0.1:${metricsPort}` },
    });
    const now = Date.now();
    const records = syntheticRecords({ seed: 9090, now, distinctResourceIds: true }).take(GOOD)
      .toArray();
    const bad = malformedMessages({ count: MALFORMED, seed: 9091, now });
    const all: TestMessage[] = interleave(goodMessages(records), bad, 9092);
    const expectStored = all.filter((m) => m.expected.outcome === "stored").length;
    const expectDead = all.length - expectStored;

    const needles = new Set<string>();
    for (const m of all) {
      for (const form of leakForms(m.remoteAddr ?? "")) {
        if (form.length >= MIN_NEEDLE) needles.add(form);
      }
    }
    const kinds = new Set(
      all.filter((m) => (m.remoteAddr ?? "").length >= MIN_NEEDLE).map((m) => m.kind),
    );
    for (
      const k of [
        "good",
        "ipv6",
        "ipv6_bracketed_port",
        "ipv4_port",
        "ipv4_mapped",
        "ipv4_mapped_hex",
        "remote_addr_invalid",
        "timestamp_zero",
      ]
    ) {
      assert.ok(kinds.has(k), `addresses of kind ${k} are searched`);
    }
    // Known to be present where noted; searched with the same needles.
    const goodUrl = records[0]!.url;
    const goodMasked = records[0]!.remoteAddr.replace(/\.\d+$/, ".X");
    for (const a of needles) {
      assert.ok(!goodUrl.includes(a) && !goodMasked.includes(a) && !world.topic.includes(a));
    }

    /** Searches `text` of `source` for every address and every marker; returns what it found. */
    const search = (source: string, text: string, markers: string[]) => {
      const found = findNeedles(text, new Set([...needles, ...markers]));
      const leaked = [...needles].filter((n) => found.has(n));
      const missing = markers.filter((m) => !found.has(m));
      report(
        `  ${source}: ${text.length} chars, ${needles.size} addresses searched, ${leaked.length} found, ` +
          `markers ${markers.length - missing.length}/${markers.length}`,
      );
      for (const n of leaked.slice(0, 3)) {
        const i = text.indexOf(n);
        report(
          `    ${JSON.stringify(n)} in …${
            JSON.stringify(text.slice(Math.max(0, i - 80), i + 80))
          }…`,
        );
      }
      assert.deepEqual(
        { leaked: leaked.slice(0, 10), missing },
        { leaked: [], missing: [] },
        source,
      );
    };

    await t.step(`produce ${GOOD} good and ${MALFORMED} malformed messages`, async () => {
      await produceRaw(world.topic, all, { partitions: 3, seed: 9093 });
    });

    const service = await spawnService(world);
    const metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
    const scrapes: string[] = [];
    let scraping = true;
    const scraper = (async () => {
      while (scraping) {
        try {
          scrapes.push((await scrapeMetrics(metricsUrl)).text);
        } catch {
          // Not listening yet.
        }
        await new Promise((r) => setTimeout(r, 250));
      }
    })();
    let kvDuring: Array<{ path: string; bytes: Uint8Array }> = [];
    try {
      await t.step("snapshot the KV files while every row is queued", async () => {
        const queued = await waitUntil(
          async () => {
            const { series } = await scrapeMetrics(metricsUrl).catch(() => ({ series: new Map() }));
            return metricSum(series, "anonymizer_records_consumed_total") === all.length &&
              metricSum(series, "anonymizer_queue_rows") === expectStored &&
              metricSum(series, "anonymizer_records_flushed_total") === 0;
          },
          60_000,
          200,
        );
        assert.ok(queued, "all messages consumed, all rows queued, none flushed yet");
        kvDuring = await readTree(`${world.dir}/a`);
        report(
          `  KV files: ${
            kvDuring.map((f) => `${f.path.split("/").pop()} ${f.bytes.length} B`).join(", ")
          }`,
        );
      });

      await t.step("everything is stored or dead-lettered", async () => {
        const done = await waitUntil(
          async () =>
            await storedCount(world.database) === expectStored &&
            await topicMessageCount(world.dlqTopic) === expectDead,
          120_000,
        );
        assert.ok(done, `${expectStored} stored and ${expectDead} dead-lettered within 120 s`);
        scrapes.push((await scrapeMetrics(metricsUrl)).text);
      });
    } finally {
      scraping = false;
      await scraper;
      const status = await service.kill("SIGTERM");
      assert.equal(status.code, 0, "the service stops cleanly");
    }
    // Read once the child has exited, so the log holds everything it wrote.
    const log = await Deno.readTextFile(service.logPath);
    const instance = /anonymizer-[0-9a-f]{8}-[0-9a-f-]{27}/.exec(log)?.[0] ??
      "(instance id not logged)";

    await t.step("KV files while queued: no address, rows present", async () => {
      const raw = kvDuring.map((f) => latin1(f.bytes)).join("\n");
      search("KV during the run", `${raw}\n${await kvValues(kvDuring)}`, [
        goodUrl,
        goodMasked,
        instance,
      ]);
    });

    await t.step("KV files after the run: no address", async () => {
      const files = await readTree(`${world.dir}/a`);
      const raw = files.map((f) => latin1(f.bytes)).join("\n");
      search("KV after the run", `${raw}\n${await kvValues(files)}`, [instance]);
    });

    await t.step("debug logs: no address", () => {
      assert.match(log, /\[DBG\]/, "debug lines were written");
      search("service log", log, [world.topic, instance, "Dead-lettered offset"]);
    });

    await t.step("/metrics: no address", () => {
      assert.ok(scrapes.length >= 3, `${scrapes.length} scrapes`);
      search("metrics scrapes", scrapes.join("\n"), ["anonymizer_records_consumed_total"]);
    });

    await t.step("every ClickHouse table of the database: no address", async () => {
      const tables = (await clickhouseQuery(
        `SELECT name FROM system.tables WHERE database = '${world.database}' ORDER BY name FORMAT TSV`,
      )).trim().split("\n");
      // A view's storage is `.inner.<view>` on 18.16 and `.inner_id.<uuid>` in an Atomic database.
      assert.ok(tables.some((n) => n.startsWith(".inner")), `tables: ${tables.join(", ")}`);
      const dumps: string[] = [];
      for (const name of tables) {
        dumps.push(await clickhouseQuery(`SELECT * FROM ${world.database}.\`${name}\` FORMAT TSV`));
      }
      report(`tables: ${tables.join(", ")}`);
      search("ClickHouse", dumps.join("\n"), [goodUrl, goodMasked]);
      const ipTotals = await clickhouseQuery(
        `SELECT * FROM ${world.database}.http_log_totals_ip_1h FORMAT TSV`,
      );
      search("ClickHouse http_log_totals_ip_1h", ipTotals, [goodMasked, "2001:db8::X"]);
    });
  },
});
