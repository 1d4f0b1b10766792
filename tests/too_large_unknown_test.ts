/**
 * A 413 on a resend whose earlier attempt has an unknown outcome, on a server
 * in token mode: splitting at once would give the rows new batch ids, hence
 * new deduplication tokens, so an attempt that did land would land twice. The
 * flusher resolves the outcome with a check first, and splits only if none of
 * the batch is stored.
 *
 * Staged on the real stack in two runs over one KV file: the first run sends
 * through a fault proxy that loses the INSERT's answer (it landed) or the
 * INSERT itself (it did not), and stops with the batch unknown; the second run
 * resends through a private ch-proxy whose client_max_body_size is smaller
 * than the batch.
 */
import assert from "node:assert/strict";
import type { FlushEvent } from "../lib/flusher.ts";
import { openQueue } from "../lib/queue/kv_queue.ts";
import { startService } from "../lib/service.ts";
import { type FaultMode, startFaultProxy } from "../testing/fault_proxy.ts";
import {
  assertExactlyOnce,
  createWorld,
  produceRecords,
  storedCount,
  until,
  worldConfig,
} from "../testing/pipeline.ts";
import { CLICKHOUSE_TARGETS, clickhouseQuery, startProxy } from "../testing/stack.ts";
import { report } from "../testing/bad_input.ts";

const RECORDS = 2_000;
/** Far below the batch of 2,000 rows (about 110 KB). */
const SMALL_BODY = 16 * 1024;

interface Variant {
  /** What the first attempt's fate is called in the test name. */
  name: string;
  /** What the fault proxy does to the first INSERT. */
  mode: FaultMode;
  /** Whether that INSERT reached ClickHouse. */
  landed: boolean;
}

const VARIANTS: Variant[] = [
  { name: "had landed", mode: "drop", landed: true },
  { name: "had not landed", mode: "down", landed: false },
];

// Token mode needs the deduplication windows migrate creates on 23.3 and later only.
for (const target of CLICKHOUSE_TARGETS.filter((t) => t.name === "modern")) {
  for (const v of VARIANTS) {
    Deno.test({
      name:
        `Flusher checks a batch whose unknown attempt ${v.name} before splitting it on a 413, on ClickHouse ${target.name}`,
      sanitizeOps: false,
      sanitizeResources: false,
      async fn(t) {
        const clickhouse = { url: target.url };
        await using fault = await startFaultProxy(new URL(target.url).host);
        await using world = await createWorld({
          prefix: "toolarge",
          clickhouse,
          proxy: { upstream: fault.hostPort },
        });
        await using small = await startProxy({
          upstream: new URL(target.url).host,
          rate: "120r/m",
          clientMaxBodySize: `${SMALL_BODY / 1024}k`,
        });
        const { records } = await produceRecords(world, { count: RECORDS, seed: 413 });
        const version = (await clickhouseQuery("SELECT version()", clickhouse)).trim();
        {
          // A known version makes the first slot carry the INSERT rather than the version query.
          await Deno.mkdir(`${world.dir}/a`, { recursive: true });
          await using queue = await openQueue(world.env.KV_PATH!);
          await queue.setServer({ version, checkedAt: Date.now() });
          // The first slot seals what is owned at that moment; a fetch still under way would
          // leave the batch smaller than the private proxy's body limit. A slot just used
          // holds the flusher back while the records are queued (step "queueing").
          await queue.setPacer({ lastConsumedAt: Date.now(), inflightSince: null });
        }
        const token = { CLICKHOUSE_DEDUP: "token" };
        // A long spacing keeps every slot but the first out of the first run.
        const firstRun = worldConfig(world, { ...token, CLICKHOUSE_SPACING_MS: "600000" });

        await t.step("queueing: every record owned before any slot", async () => {
          const service = await startService(firstRun);
          try {
            await until(`${RECORDS} rows owned by the queue`, async () => {
              const stats = await service.queue.stats();
              const parts = await service.queue.partitions();
              const owned = parts.every((p) => p.committed === p.next);
              return stats.queuedRows === RECORDS && owned ? true : undefined;
            });
          } finally {
            await service.stop();
          }
          // A slot free at once, so the first run's first slot seals all of them.
          await using queue = await openQueue(world.env.KV_PATH!);
          await queue.setPacer({ lastConsumedAt: null, inflightSince: null });
        });

        let batchRows = 0;
        await t.step(`first run: the INSERT's outcome is unknown (${v.mode})`, async () => {
          fault.rule = (line) => line.includes("INSERT") ? v.mode : undefined;
          const events: FlushEvent[] = [];
          const service = await startService(firstRun, { onFlush: (e) => events.push(e) });
          try {
            const first = await until(
              "the first INSERT's result",
              () => events.find((e) => e.kind === "insert"),
            );
            assert.equal(first.outcome, "unknown", first.error);
            const batch = await service.queue.batch();
            assert.equal(batch?.state, "unknown");
            batchRows = batch!.rows;
            assert.equal(batchRows, RECORDS, "the first slot seals every queued row");
            assert.ok(batch!.bytes > SMALL_BODY, `${batch!.bytes} bytes`);
          } finally {
            await service.stop();
          }
          const stored = await storedCount(world.database, clickhouse);
          report(`  batch of ${batchRows} rows; ${stored} rows stored after the first run`);
          assert.equal(stored, v.landed ? batchRows : 0);
        });

        const events: FlushEvent[] = [];
        await t.step(
          "second run: 413, then a check, then a split only if nothing landed",
          async () => {
            const service = await startService(
              worldConfig(world, {
                ...token,
                CLICKHOUSE_URL: small.url,
                CLICKHOUSE_BODY_LIMIT: String(SMALL_BODY),
              }),
              { onFlush: (e) => events.push(e) },
            );
            try {
              // Where the first attempt landed, the rows are stored before this run sends
              // anything: it is done when its queue is empty.
              await until(`${RECORDS} rows stored and the queue empty`, async () => {
                const stats = await service.queue.stats();
                const empty = stats.queuedRows === 0 && stats.sealedRows === 0;
                if (!empty) return undefined;
                return await storedCount(world.database, clickhouse) >= RECORDS ? true : undefined;
              });
              // A few more slots: a stray resend would show as a duplicate.
              await new Promise((r) => setTimeout(r, 5 * world.spacingMs));
            } finally {
              await service.stop();
            }
            const shown = events.map((e) => `${e.kind}:${e.outcome}:${e.rows}`);
            report(`  requests: ${shown.slice(0, 8).join(", ")}${shown.length > 8 ? ", ..." : ""}`);
            assert.deepEqual(
              events.slice(0, 2).map((e) => [e.kind, e.outcome, e.rows]),
              [["insert", "too_large", batchRows], ["check", "ok", batchRows]],
            );
            const id = events[0]!.batchId;
            const later = events.slice(2);
            // The batch is never sent again under its id: confirmed stored, or split into new ones.
            assert.deepEqual(later.filter((e) => e.batchId === id), []);
            if (!v.landed) assert.equal(later[0]?.kind, "insert", "the split halves are sent");
          },
        );

        await t.step("every record is stored exactly once", async () => {
          await assertExactlyOnce(world.database, records, clickhouse);
        });
      },
    });
  }
}
