/**
 * /metrics must account for every record: at any quiet moment, and exactly
 * at the end, every consumed record is flushed, queued or dead-lettered:
 *
 *   anonymizer_records_consumed_total =
 *     anonymizer_records_flushed_total + anonymizer_queue_rows +
 *     Σ anonymizer_records_dead_lettered_total{reason}
 *
 * The run has decoder and validation dead letters and one row ClickHouse
 * rejects (dead-lettered by the flusher), and the counters are compared with
 * what ClickHouse, the dead-letter topic and the proxy's access log hold.
 */
import assert from "node:assert/strict";
import { encodeRecord } from "../tools/encode_record.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import {
  createWorld,
  type Scrape,
  scrapeMetrics,
  spawnService,
  storedCount,
} from "../testing/pipeline.ts";
import { clickhouseQuery, freePort, topicMessageCount } from "../testing/stack.ts";
import {
  BUILDERS,
  goodMessages,
  interleave,
  malformedMessages,
  type TestMessage,
} from "../testing/malformed.ts";
import {
  groupCaughtUp,
  metricSum,
  produceRaw,
  readTopic,
  report,
  waitUntil,
} from "../testing/bad_input.ts";

const CONSUMED = "anonymizer_records_consumed_total";
const FLUSHED = "anonymizer_records_flushed_total";
const QUEUE = "anonymizer_queue_rows";
const DEAD = "anonymizer_records_dead_lettered_total";
const REQUESTS = "anonymizer_clickhouse_requests_total";
const COUNTERS = [CONSUMED, FLUSHED, DEAD, REQUESTS, "anonymizer_records_queued_total"];

interface Point {
  at: number;
  consumed: number;
  flushed: number;
  queue: number;
  dead: number;
  series: Scrape;
}

function point(series: Scrape): Point {
  return {
    at: performance.now(),
    consumed: metricSum(series, CONSUMED),
    flushed: metricSum(series, FLUSHED),
    queue: metricSum(series, QUEUE),
    dead: metricSum(series, DEAD),
    series,
  };
}

function gap(p: Point): number {
  return p.consumed - (p.flushed + p.queue + p.dead);
}

function show(p: Point): string {
  return `consumed ${p.consumed} = flushed ${p.flushed} + queue ${p.queue} + dead ${p.dead} ` +
    `(gap ${gap(p)})`;
}

/**
 * Every malformed kind but those stored with a method longer than 4 characters
 * (UNKNOWN, OTHER, PATCH, OPTIONS): the FixedString(4) column would make each
 * of them a poison row too.
 */
const KINDS = Object.keys(BUILDERS).filter((k) => !k.startsWith("method_"));

/** Messages of one phase: good records, every malformed kind twice, optionally one poison row. */
function phase(seed: number, now: number, good: number, poisonId: bigint | null): TestMessage[] {
  const records = syntheticRecords({ seed, now, distinctResourceIds: true }).take(good).toArray();
  const bad = malformedMessages({
    count: KINDS.length * 2,
    kinds: KINDS,
    seed: seed + 1,
    now,
    firstResourceId: 10_000_000_000n + BigInt(seed) * 1_000n,
  });
  const messages = interleave(goodMessages(records), bad, seed + 2);
  if (poisonId !== null) {
    const poison = {
      ...records[0]!,
      resourceId: poisonId,
      method: "OPTIONS",
      url: "/poison",
      remoteAddr: "198.51.100.9",
    };
    messages.splice(messages.length >> 1, 0, {
      kind: "poison",
      value: encodeRecord(poison),
      resourceId: poisonId,
      remoteAddr: poison.remoteAddr,
      url: poison.url,
      expected: { outcome: "dead_lettered", code: "clickhouse_rejected" },
    });
  }
  return messages;
}

Deno.test({
  name:
    "anonymizer dead-letters with consistent metrics: consumed = flushed + queued + dead-lettered",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const port = freePort();
    await using world = await createWorld({ env: { METRICS_LISTEN: `127.0.0.1:${port}` } });
    const url = `http://127.0.0.1:${port}/metrics`;
    // A row whose method does not fit FixedString(4) is refused by ClickHouse (code 131).
    await clickhouseQuery(
      `ALTER TABLE ${world.database}.http_log ADD COLUMN method4 FixedString(4) MATERIALIZED toString(method)`,
    );
    const now = Date.now();
    const first = phase(5_000, now, 3_000, 10_000_999_999n);
    const second = phase(6_000, now, 3_000, null);
    const storedOf = (ms: TestMessage[]) =>
      ms.filter((m) => m.expected.outcome === "stored").length;
    const expectStored = storedOf(first) + storedOf(second);
    const expectDead = first.length + second.length - expectStored;

    const points: Point[] = [];
    let scraping = true;
    let scrapeErrors = 0;
    const scraper = (async () => {
      while (scraping) {
        try {
          points.push(point((await scrapeMetrics(url)).series));
        } catch {
          scrapeErrors++;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })();

    /** Two scrapes in a row that agree mean nothing was in flight; the equation must then hold. */
    const quiet = async (what: string): Promise<Point> => {
      let last: Point | undefined;
      let settled: Point | undefined;
      await waitUntil(
        async () => {
          const p = point((await scrapeMetrics(url)).series);
          const same = last !== undefined && last.consumed === p.consumed &&
            last.flushed === p.flushed && last.queue === p.queue && last.dead === p.dead;
          last = p;
          if (same) settled = p;
          return same;
        },
        30_000,
        300,
      );
      assert.ok(settled, `${what}: the counters settled within 30 s`);
      report(`${what}: ${show(settled)}`);
      assert.equal(gap(settled), 0, `${what}: ${show(settled)}`);
      return settled;
    };

    const service = await spawnService(world);
    try {
      await t.step(
        "the service starts with every counter at zero and the equation holding",
        async () => {
          assert.ok(
            await waitUntil(
              async () => (await scrapeMetrics(url).catch(() => null)) !== null,
              30_000,
            ),
          );
          const p = await quiet("before any message");
          assert.equal(p.consumed, 0);
        },
      );

      await t.step(`phase 1: ${first.length} messages, one of them a poison row`, async () => {
        await produceRaw(world.topic, first, { partitions: 3, seed: 5_003, keyPrefix: "p1-" });
        const done = await waitUntil(
          async () =>
            await storedCount(world.database) === storedOf(first) &&
            await topicMessageCount(world.dlqTopic) === first.length - storedOf(first),
          120_000,
        );
        assert.ok(done, "phase 1 handled within 120 s");
        const p = await quiet("after phase 1");
        assert.equal(p.consumed, first.length);
        assert.equal(p.series.get(`${DEAD}{reason="clickhouse_rejected"}`), 1);
      });

      await t.step(`phase 2: ${second.length} more messages while running`, async () => {
        await produceRaw(world.topic, second, { partitions: 3, seed: 6_003, keyPrefix: "p2-" });
        const done = await waitUntil(
          async () =>
            await storedCount(world.database) === expectStored &&
            await topicMessageCount(world.dlqTopic) === expectDead,
          120_000,
        );
        assert.ok(done, "phase 2 handled within 120 s");
      });

      await t.step("at the end the equation holds exactly and matches the stores", async () => {
        const p = await quiet("at the end");
        assert.equal(p.consumed, first.length + second.length);
        assert.equal(p.queue, 0);
        assert.equal(p.flushed, await storedCount(world.database));
        assert.equal(p.flushed, expectStored);
        assert.equal(p.dead, expectDead);
        assert.equal(p.dead, await topicMessageCount(world.dlqTopic));
        const letters = await readTopic(world.dlqTopic);
        const byCode = new Map<string, number>();
        for (const d of letters) {
          const c = d.headers["anonymizer.error.code"]!;
          byCode.set(c, (byCode.get(c) ?? 0) + 1);
        }
        const byReason = new Map<string, number>();
        for (const [key, v] of p.series) {
          const m = /^anonymizer_records_dead_lettered_total\{reason="([^"]+)"\}$/.exec(key);
          if (m) byReason.set(m[1]!, v);
        }
        assert.deepEqual(
          Object.fromEntries([...byReason].sort()),
          Object.fromEntries([...byCode].sort()),
          "dead letters by reason = DLQ messages by error code",
        );
        assert.equal(p.series.get("anonymizer_records_queued_total"), expectStored + 1);
      });

      await t.step(
        "requests by outcome match the proxy's access log, with 2xx INSERTs",
        async () => {
          const p = point((await scrapeMetrics(url)).series);
          const log = await world.proxy.readAccessLog();
          const inserts = log.filter((e) =>
            decodeURIComponent(e.uri.replaceAll("+", " ")).includes("INSERT INTO")
          );
          const ok = p.series.get(`${REQUESTS}{kind="insert",outcome="2xx"}`) ?? 0;
          const rejected = p.series.get(`${REQUESTS}{kind="insert",outcome="5xx"}`) ?? 0;
          report(
            `  requests: ${
              JSON.stringify([...p.series].filter(([k]) => k.startsWith(REQUESTS)))
            }; ` +
              `access log: ${log.length} requests, ${inserts.length} INSERTs`,
          );
          assert.ok(ok > 0, "some INSERTs succeeded");
          assert.equal(ok, inserts.filter((e) => e.status === 200).length);
          assert.equal(rejected, inserts.filter((e) => e.status >= 500).length);
          assert.ok(rejected >= 1, "the poison row's batch was rejected at least once");
          assert.equal(
            metricSum(p.series, REQUESTS),
            log.length,
            "every proxied request is counted once",
          );
        },
      );
    } finally {
      scraping = false;
      await scraper;
      await service.kill("SIGTERM");
    }

    await t.step(
      "every scrape: counters never go back, and nothing is flushed before it is consumed",
      () => {
        assert.ok(
          points.length > 20,
          `${points.length} scrapes (${scrapeErrors} failed while starting)`,
        );
        const back: string[] = [];
        const ahead: string[] = [];
        for (let i = 1; i < points.length; i++) {
          for (const name of COUNTERS) {
            const before = metricSum(points[i - 1]!.series, name);
            const after = metricSum(points[i]!.series, name);
            if (after < before) back.push(`${name}: ${before} → ${after}`);
          }
        }
        for (const p of points) {
          if (p.flushed + p.dead > p.consumed) ahead.push(show(p));
          if (p.queue < 0) ahead.push(show(p));
        }
        const off = points.filter((p) => gap(p) !== 0);
        report(
          `  ${points.length} scrapes, ${off.length} taken mid-update: ` +
            JSON.stringify(off.slice(0, 8).map((p) => gap(p))),
        );
        assert.deepEqual(back, []);
        assert.deepEqual(ahead, []);
      },
    );
  },
});

Deno.test({
  name:
    "anonymizer dead-letters with anonymizer_queue_rows current at the first scrape after a change",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const port = freePort();
    // A long spacing leaves a quiet window: every message consumed, no INSERT sent yet.
    await using world = await createWorld({
      spacingMs: 15_000,
      env: { METRICS_LISTEN: `127.0.0.1:${port}` },
    });
    const url = `http://127.0.0.1:${port}/metrics`;
    const messages = phase(7_000, Date.now(), 1_000, null);
    const expectStored = messages.filter((m) => m.expected.outcome === "stored").length;
    const service = await spawnService(world);
    try {
      await t.step("scrape once before any message", async () => {
        assert.ok(
          await waitUntil(
            async () => (await scrapeMetrics(url).catch(() => null)) !== null,
            30_000,
          ),
        );
        const p = point((await scrapeMetrics(url)).series);
        assert.deepEqual([p.consumed, p.queue, p.flushed, p.dead], [0, 0, 0, 0]);
      });

      await t.step(
        `produce ${messages.length} messages; wait until all are consumed (group offsets)`,
        async () => {
          await produceRaw(world.topic, messages, { partitions: 3, seed: 7_003 });
          assert.ok(await waitUntil(() => groupCaughtUp(world.group, world.topic), 30_000, 200));
          // The batch's counters are updated right after its offset commit.
          await new Promise((r) => setTimeout(r, 500));
        },
      );

      await t.step("the first scrape after the change already balances", async () => {
        const p = point((await scrapeMetrics(url)).series);
        const again = point((await scrapeMetrics(url)).series);
        report(`first scrape:  ${show(p)}\n    second scrape: ${show(again)}`);
        assert.equal(p.consumed, messages.length);
        assert.equal(p.flushed, 0, "quiet: nothing flushed yet");
        assert.equal(again.queue, expectStored, "the queue holds every stored row");
        assert.equal(p.queue, again.queue, "anonymizer_queue_rows is current, not one scrape late");
        assert.equal(gap(p), 0, show(p));
      });
    } finally {
      await service.kill("SIGTERM");
    }
  },
});
