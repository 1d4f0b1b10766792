/**
 * Two instances of one consumer group behind one source address share the
 * proxy's slots on the real stack: no request is refused, both store rows,
 * when one is killed with SIGKILL the other takes every slot, and when it
 * comes back on its KV file they take turns again.
 */
import assert from "node:assert/strict";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { keepLog, progress, startFeed } from "../testing/feed.ts";
import {
  assertExactlyOnce,
  assertStopsCleanly,
  createWorld,
  flushedRows,
  type ServiceProcess,
  spawnService,
  until,
  waitForRows,
} from "../testing/pipeline.ts";
import { KAFKA_BROKERS } from "../testing/stack.ts";

/** Slot length the services use: nginx's 2 s at 30r/m plus a 500 ms margin. */
const SLOT_MS = 2_500;

/** Batch ids a service logged as flushed. */
function flushedIds(service: ServiceProcess): Set<string> {
  return new Set([...service.log().matchAll(/Flushed batch "?(\d+)"?:/g)].map((m) => m[1]!));
}

/** 30r/m: nginx accepts one request per 2 s from the one address both instances share. */
const PROXY_RATE = "30r/m";
const SHARING = /Sharing ch-proxy slots with (\d+) members/g;

/** Member counts of every view `service` logged, oldest first. */
function views(service: ServiceProcess): number[] {
  return [...service.log().matchAll(SHARING)].map((m) => Number(m[1]));
}

Deno.test({
  name: "SlotSchedule shares one address's slots between instances, with no refusal, across a kill",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld({
      prefix: "slots",
      proxy: { rate: PROXY_RATE },
      env: { CLICKHOUSE_MARGIN_MS: "500" },
    });
    const feed = await startFeed(KAFKA_BROKERS, world.topic, { rate: 200, seed: 31 });
    const children: ServiceProcess[] = [];
    let records: HttpLogRecord[] = [];
    let feedStopped = false;
    try {
      const a = await spawnService(world, { name: "a" });
      children.push(a);
      await until("a alone storing rows", () => {
        if (a.hasExited) throw new Error(`a exited: ${a.log().slice(-500)}`);
        return flushedRows(a.log()).length > 0 || undefined;
      });
      const b = await spawnService(world, {
        name: "b",
        overrides: { KV_PATH: `${world.dir}/b/queue.kv` },
      });
      children.push(b);

      const shared = await t.step("both instances take turns after b joins", async () => {
        await until(
          "both seeing two members",
          () => views(a).at(-1) === 2 && views(b).at(-1) === 2 || undefined,
          120_000,
        );
        const [fa, fb] = [flushedRows(a.log()).length, flushedRows(b.log()).length];
        await until("a and b both flushing in turn", () => {
          const [na, nb] = [flushedRows(a.log()).length, flushedRows(b.log()).length];
          return na >= fa + 3 && nb >= fb + 3 || undefined;
        }, 120_000);
      });
      if (!shared) return;

      const failover = await t.step("a takes every slot after b is killed", async () => {
        const killedAt = Date.now();
        assert.equal((await b.kill("SIGKILL")).signal, "SIGKILL");
        // The coordinator drops b when its session times out (30 s).
        await until("a alone in the group", () => views(a).at(-1) === 1 || undefined, 120_000);
        const before = flushedRows(a.log()).length;
        await until(
          "a flushing alone",
          () => flushedRows(a.log()).length >= before + 2 || undefined,
          60_000,
        );
        progress(`a took over ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the kill`);
      });
      if (!failover) return;

      // Rows b queued and committed live in b's KV file only: they land when b is back.
      const back = await t.step("b restarts on its KV file and both take turns again", async () => {
        const b2 = await spawnService(world, {
          name: "b-restarted",
          overrides: { KV_PATH: `${world.dir}/b/queue.kv` },
        });
        children.push(b2);
        await until(
          "both seeing two members again",
          () => views(a).at(-1) === 2 && views(b2).at(-1) === 2 || undefined,
          120_000,
        );
        await until(
          "the restarted b flushing",
          () => flushedRows(b2.log()).length >= 2 || undefined,
          120_000,
        );
      });
      if (!back) return;

      await t.step("every record lands exactly once", async () => {
        records = await feed.stop();
        feedStopped = true;
        assert.equal(await waitForRows(world.database, records.length, 300_000), records.length);
        await assertExactlyOnce(world.database, records);
      });

      await t.step("the shared address was never refused", async () => {
        const log = await world.proxy.readAccessLog();
        const statuses = log.map((e) => e.status);
        progress(`proxy: ${log.length} requests, statuses ${[...new Set(statuses)].join(",")}`);
        assert.deepEqual(statuses.filter((s) => s !== 200), []);
        assert.ok(flushedRows(b.log()).length >= 3, "b stored rows before it was killed");
      });

      await t.step("both stop cleanly", async () => {
        await assertStopsCleanly(a);
        await assertStopsCleanly(children.at(-1)!);
      });
    } finally {
      if (!feedStopped) await feed.stop();
      for (const c of children) {
        if (!c.hasExited) await c.kill();
        progress(`${c.name} log kept at ${await keepLog(c.logPath)}`);
      }
    }
  },
});

Deno.test({
  name: "SlotSchedule hands the slots of an instance with nothing to send to the busy one",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld({
      prefix: "yield",
      proxy: { rate: PROXY_RATE },
      env: { CLICKHOUSE_MARGIN_MS: "500" },
    });
    // Every record goes to partition 0: its owner is busy, the other member idle.
    const feed = await startFeed(KAFKA_BROKERS, world.topic, {
      rate: 100,
      seed: 32,
      partitions: 1,
    });
    const children: ServiceProcess[] = [];
    let feedStopped = false;
    try {
      for (const name of ["a", "b"]) {
        children.push(
          await spawnService(world, {
            name,
            overrides: { KV_PATH: `${world.dir}/${name}/queue.kv` },
          }),
        );
      }
      const [a, b] = children as [ServiceProcess, ServiceProcess];
      await until(
        "both seeing two members",
        () => views(a).at(-1) === 2 && views(b).at(-1) === 2 || undefined,
        120_000,
      );
      const from = (await world.proxy.readAccessLog()).length;

      await t.step("the busy member sends in the slots of both owners", async () => {
        const busy = await until("one member flushing", () => {
          const [fa, fb] = [flushedIds(a).size, flushedIds(b).size];
          return fa > fb + 2 ? a : fb > fa + 2 ? b : undefined;
        }, 120_000);
        const slots = await until("ten INSERTs of the busy member", async () => {
          const ids = flushedIds(busy);
          const log = (await world.proxy.readAccessLog()).slice(from);
          const mine = log.filter((e) => {
            const id = /anonymizer-batch-(\d+)-/.exec(e.uri)?.[1];
            return e.status === 200 && id !== undefined && ids.has(id);
          });
          return mine.length >= 10
            ? mine.map((e) => Math.floor((e.msec * 1000) / SLOT_MS))
            : undefined;
        }, 120_000);
        progress(`${busy.name} sent in slots ${slots.join(",")}`);
        const parities = new Set(slots.map((k) => k % 2));
        assert.equal(parities.size, 2, `every slot used is one owner's: ${slots.join(",")}`);
      });

      await t.step("every record lands exactly once, none refused", async () => {
        const records = await feed.stop();
        feedStopped = true;
        assert.equal(await waitForRows(world.database, records.length, 120_000), records.length);
        await assertExactlyOnce(world.database, records);
        const statuses = (await world.proxy.readAccessLog()).map((e) => e.status);
        assert.deepEqual(statuses.filter((s) => s !== 200), []);
      });
    } finally {
      if (!feedStopped) await feed.stop();
      for (const c of children) {
        if (!c.hasExited) await c.kill();
        progress(`${c.name} log kept at ${await keepLog(c.logPath)}`);
      }
    }
  },
});
