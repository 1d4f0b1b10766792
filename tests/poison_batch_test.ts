/**
 * A row ClickHouse itself rejects (a poison row) must not block the pipeline:
 * the flusher bisects its batch until the row is alone, dead-letters it, and
 * stores every other row exactly once. ClickHouse is made to reject one row
 * through schema alone, no product hook: a MATERIALIZED column whose type the
 * poison row's method cannot fit. When every row is rejected, the cause is
 * systemic: the breaker holds the batch after dead-lettering at most
 * BISECTION_BREAKER_SHARE of it, and the rest lands once the schema is fixed.
 */
import assert from "node:assert/strict";
import { encodeRecord } from "../tools/encode_record.ts";
import { BISECTION_BREAKER_SHARE } from "../lib/flusher.ts";
import { packBatch } from "../lib/sink/clickhouse/pack_batch.ts";
import { ClickHouseClient } from "../lib/sink/clickhouse/clickhouse_client.ts";
import { ClickHouseError } from "../lib/errors.ts";
import { startService } from "../lib/service.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import {
  assertExactlyOnce,
  createWorld,
  produceRecords,
  scrapeMetrics,
  storedCount,
  until,
  type World,
  worldConfig,
} from "../testing/pipeline.ts";
import {
  CLICKHOUSE_TARGETS,
  clickhouseQuery,
  type ClickHouseTarget,
  freePort,
  topicMessageCount,
} from "../testing/stack.ts";
import { goodMessages, type TestMessage } from "../testing/malformed.ts";
import { produceRaw, readTopic, report, waitUntil } from "../testing/bad_input.ts";

const GOOD = 2_000;
const POISON_ID = 10_000_000_777n;

interface Variant {
  /** What the test is called. */
  name: string;
  /** The column added to http_log. */
  column: string;
  /** The poison record's method: known, so it passes validation unchanged. */
  method: string;
  /** ClickHouse's exception code for the poison row, per server. */
  serverCode: Record<ClickHouseTarget["name"], number>;
}

const FIXED_STRING: Variant = {
  name:
    "anonymizer dead-letters a poison row ClickHouse rejects (FixedString overflow) after bisecting",
  column: "method4 FixedString(4) MATERIALIZED toString(method)",
  method: "OPTIONS",
  serverCode: { "18.16": 131, modern: 131 },
};

const ENUM8: Variant = {
  name:
    "anonymizer dead-letters a poison row ClickHouse rejects (unknown Enum8 element) after bisecting",
  column: "method_enum Enum8('GET' = 1, 'HEAD' = 2) MATERIALIZED toString(method)",
  method: "POST",
  serverCode: { "18.16": 49, modern: 691 },
};

function poisonRecord(now: number, method: string): HttpLogRecord {
  return {
    timestampEpochMilli: BigInt(now - 120_000),
    resourceId: POISON_ID,
    bytesSent: 4096n,
    requestTimeMilli: 12n,
    responseStatus: 200,
    cacheStatus: "MISS",
    method,
    remoteAddr: "198.51.100.77",
    url: "/poison/row.bin",
  };
}

/** Inserts one packed row straight into ClickHouse and classifies the answer as the flusher would. */
async function probeInsert(target: ClickHouseTarget, database: string, record: HttpLogRecord) {
  const row = {
    timestamp: Number(record.timestampEpochMilli / 1000n),
    resourceId: record.resourceId,
    bytesSent: record.bytesSent,
    requestTimeMilli: record.requestTimeMilli,
    responseStatus: record.responseStatus,
    cacheStatus: record.cacheStatus,
    method: record.method,
    remoteAddr: "198.51.100.X",
    url: record.url,
  };
  const packed = packBatch([row], { batchId: 1n, serverVersion: "18.16.1", database });
  const { query, ...params } = packed.query;
  // The flusher's own client classifies the answer, as it would in production.
  const error = await new ClickHouseClient(target.url).query(query, {
    body: packed.body,
    headers: packed.headers,
    params,
    what: "probe",
  }).then(() => null, (err) => err);
  assert.ok(error instanceof ClickHouseError, `the poison row was stored: ${error}`);
  return { status: error.status, body: error.message, error };
}

async function insertRequests(world: World) {
  const log = await world.proxy.readAccessLog();
  return log.filter((e) => decodeURIComponent(e.uri.replaceAll("+", " ")).includes("INSERT INTO"));
}

function poisonTest(v: Variant, target: ClickHouseTarget): Deno.TestDefinition {
  const clickhouse = { url: target.url };
  const serverCode = v.serverCode[target.name];
  return {
    name: `${v.name} on ClickHouse ${target.name}`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      await using world = await createWorld({ clickhouse });
      const now = Date.now();
      const poison = poisonRecord(now, v.method);

      await t.step(`make http_log refuse method ${v.method}: ADD COLUMN ${v.column}`, async () => {
        await clickhouseQuery(
          `ALTER TABLE ${world.database}.http_log ADD COLUMN ${v.column}`,
          clickhouse,
        );
      });

      await t.step(
        `ClickHouse answers code ${serverCode}, classified rejected and not retriable`,
        async () => {
          const probe = await probeInsert(target, world.database, poison);
          report(`ClickHouse: ${probe.status} ${probe.body.trim().slice(0, 200)}`);
          assert.equal(probe.status, 500);
          assert.match(probe.body, new RegExp(`Code: ${serverCode}\\b`));
          assert.equal(
            await storedCount(world.database, clickhouse),
            0,
            "the probe stored nothing",
          );
          const e = probe.error;
          assert.deepEqual(
            { outcome: e.outcome, retriable: e.retriable, serverCode: e.serverCode },
            { outcome: "rejected", retriable: false, serverCode },
            `the client says ${e.code}/${e.outcome}/retriable=${e.retriable}`,
          );
        },
      );

      const records = syntheticRecords({ seed: 777, now, distinctResourceIds: true }).take(GOOD)
        .toArray();
      let poisonSource: { partition: number; offset: string } | undefined;
      await t.step(`produce ${GOOD} good records with 1 poison record in the middle`, async () => {
        const good = goodMessages(records);
        const messages: TestMessage[] = [
          ...good.slice(0, GOOD / 2),
          {
            kind: "poison",
            value: encodeRecord(poison),
            resourceId: POISON_ID,
            remoteAddr: poison.remoteAddr,
            url: poison.url,
            expected: { outcome: "dead_lettered", code: "clickhouse_rejected" },
          },
          ...good.slice(GOOD / 2),
        ];
        const produced = await produceRaw(world.topic, messages, { partitions: 1, seed: 778 });
        const p = produced.find((m) => m.message.kind === "poison")!;
        poisonSource = { partition: p.partition, offset: p.offset };
      });

      const started = performance.now();
      const service = await startService(worldConfig(world));
      try {
        await t.step("every good record lands and the poison row reaches the DLQ", async () => {
          const done = await waitUntil(
            async () =>
              await storedCount(world.database, clickhouse) >= GOOD &&
              await topicMessageCount(world.dlqTopic) >= 1,
            90_000,
          );
          const inserts = await insertRequests(world);
          report(
            `  after ${Math.round(performance.now() - started)} ms: ${await storedCount(
              world.database,
              clickhouse,
            )} ` +
              `stored, ${await topicMessageCount(
                world.dlqTopic,
              )} dead letters, ${inserts.length} INSERTs ` +
              `(${inserts.filter((e) => e.status !== 200).length} refused or rejected)`,
          );
          assert.ok(done, "within 90 s");
        });

        await t.step("bisection terminated: INSERTs bounded by 2·log2(n) + 5", async () => {
          // Ten more proxy slots: a looping flusher would keep sending.
          await new Promise((r) => setTimeout(r, 10 * world.spacingMs));
          const inserts = await insertRequests(world);
          const rejected = inserts.filter((e) => e.status !== 200);
          const bound = 2 * Math.ceil(Math.log2(GOOD + 1)) + 5;
          report(
            `  ${inserts.length} INSERTs, ${rejected.length} rejected (statuses ` +
              `${JSON.stringify(inserts.map((e) => e.status))}); bound ${bound}`,
          );
          assert.ok(inserts.length <= bound, `${inserts.length} INSERTs, bound ${bound}`);
          assert.ok(rejected.length <= Math.ceil(Math.log2(GOOD + 1)) + 1);
          assert.equal(service.status().flusher.inflight, false);
        });
      } finally {
        await service.stop();
      }

      await t.step(
        "every good record is stored exactly once, the poison row not at all",
        async () => {
          await assertExactlyOnce(world.database, records, clickhouse);
        },
      );

      await t.step(
        "the dead letter holds the masked row and says clickhouse_rejected",
        async () => {
          const letters = await readTopic(world.dlqTopic);
          assert.equal(letters.length, 1);
          const d = letters[0]!;
          assert.equal(d.headers["anonymizer.error.code"], "clickhouse_rejected");
          assert.equal(d.headers["anonymizer.source.topic"], world.topic);
          // The row went through sealing and bisection; it still names its Kafka message.
          assert.equal(d.headers["anonymizer.source.partition"], String(poisonSource!.partition));
          assert.equal(d.headers["anonymizer.source.offset"], String(poisonSource!.offset));
          assert.match(
            d.headers["anonymizer.error.message"] ?? "",
            new RegExp(`Code: ${serverCode}`),
          );
          const row = JSON.parse(new TextDecoder().decode(d.value!));
          assert.equal(row.resourceId, String(POISON_ID));
          assert.equal(row.method, v.method);
          assert.equal(row.remoteAddr, "198.51.100.X");
          assert.ok(!new TextDecoder().decode(d.value!).includes(poison.remoteAddr));
        },
      );
    },
  };
}

const BREAKER_RECORDS = 2_000;
const BREAKER = `anonymizer_clickhouse_systemic_failures_total{cause="breaker"}`;

function breakerTest(target: ClickHouseTarget): Deno.TestDefinition {
  const clickhouse = { url: target.url };
  const most = Math.floor(BREAKER_RECORDS * BISECTION_BREAKER_SHARE);
  return {
    name:
      `anonymizer holds a batch whose every row ClickHouse rejects, after at most ${most} dead letters, on ClickHouse ${target.name}`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      await using world = await createWorld({ clickhouse, prefix: "breaker" });
      const column = "method1 FixedString(1) MATERIALIZED toString(method)";
      await t.step(`make http_log refuse every row: ADD COLUMN ${column}`, async () => {
        await clickhouseQuery(`ALTER TABLE ${world.database}.http_log ADD COLUMN ${column}`, {
          url: target.url,
        });
      });
      const { records } = await produceRecords(world, { count: BREAKER_RECORDS, seed: 779 });
      const metricsUrl = `http://127.0.0.1:${freePort()}/metrics`;
      const service = await startService(
        worldConfig(world, { METRICS_LISTEN: new URL(metricsUrl).host }),
      );
      try {
        await t.step(`the breaker stops bisection within ${most} dead letters`, async () => {
          await until("the breaker", async () => {
            const { series } = await scrapeMetrics(metricsUrl);
            return (series.get(BREAKER) ?? 0) >= 1 ? true : undefined;
          });
          const held = await topicMessageCount(world.dlqTopic);
          const tripped = (await insertRequests(world)).length;
          // Ten more proxy slots: a held batch is retried, never bisected further.
          await new Promise((r) => setTimeout(r, 10 * world.spacingMs));
          const later = await topicMessageCount(world.dlqTopic);
          const { series } = await scrapeMetrics(metricsUrl);
          report(
            `  ${later} dead letters (${held} when the breaker tripped, after ${tripped} INSERTs); breaker counted ${
              series.get(BREAKER)
            } times`,
          );
          assert.equal(later, held, "no dead letter after the breaker tripped");
          assert.ok(later <= most, `${later} dead letters, at most ${most}`);
          assert.equal(await storedCount(world.database, clickhouse), 0);
          assert.ok((series.get(BREAKER) ?? 0) >= 2, "the held batch is retried each slot");
        });

        await t.step("after the schema is fixed every other row lands exactly once", async () => {
          await clickhouseQuery(`ALTER TABLE ${world.database}.http_log DROP COLUMN method1`, {
            url: target.url,
          });
          const letters = await readTopic(world.dlqTopic);
          const lettered = new Set(
            letters.map((d) => JSON.parse(new TextDecoder().decode(d.value!)).resourceId),
          );
          const rest = records.filter((r) => !lettered.has(String(r.resourceId)));
          assert.equal(rest.length, records.length - letters.length, "dead letters are distinct");
          await until(
            `${rest.length} rows stored`,
            async () =>
              await storedCount(world.database, clickhouse) >= rest.length ? true : undefined,
          );
          await new Promise((r) => setTimeout(r, 5 * world.spacingMs));
          await assertExactlyOnce(world.database, rest, clickhouse);
          assert.equal(await topicMessageCount(world.dlqTopic), letters.length);
        });
      } finally {
        await service.stop();
      }
    },
  };
}

for (const target of CLICKHOUSE_TARGETS) {
  Deno.test(poisonTest(FIXED_STRING, target));
  Deno.test(poisonTest(ENUM8, target));
  Deno.test(breakerTest(target));
}
