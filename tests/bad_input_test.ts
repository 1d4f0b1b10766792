/**
 * End to end on the real stack with garbage in the input: every malformed
 * message of docs/validation.md, mixed into good traffic, must end either
 * stored in its documented form or in the dead-letter topic with its
 * documented code, and never both, never neither.
 */
import assert from "node:assert/strict";
import { messageToRow } from "../lib/record/message_to_row.ts";
import { startService } from "../lib/service.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";
import { createWorld, storedCount, worldConfig } from "../testing/pipeline.ts";
import { topicMessageCount } from "../testing/stack.ts";
import {
  BUILDERS,
  goodMessages,
  interleave,
  malformedMessages,
  type StoredForm,
  type TestMessage,
} from "../testing/malformed.ts";
import {
  assertStoredExactly,
  type Produced,
  produceRaw,
  type ReadMessage,
  readTopic,
  report,
  storedRows,
  waitUntil,
} from "../testing/bad_input.ts";

const GOOD = 10_000;
const KINDS = Object.keys(BUILDERS);
/** Ten of every kind. */
const MALFORMED = KINDS.length * 10;

Deno.test({
  name:
    "anonymizer dead-letters or normalizes every kind of malformed message among 10,000 good ones",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld();
    const now = Date.now();
    const good = goodMessages(
      syntheticRecords({ seed: 4242, now, distinctResourceIds: true }).take(GOOD).toArray(),
    );
    const bad = malformedMessages({ count: MALFORMED, seed: 4243, now });
    const all: TestMessage[] = interleave(good, bad, 4244);
    const expectStored = all.filter((m) => m.expected.outcome === "stored");
    const expectDead = all.filter((m) => m.expected.outcome === "dead_lettered");

    await t.step("every builder's documented outcome is what messageToRow() decides", () => {
      const wrong = bad.flatMap((m) => {
        const r = messageToRow(m.value, { now });
        const e = m.expected;
        if (e.outcome === "dead_lettered") {
          return !r.ok && r.code === e.code ? [] : [`${m.kind}: ${r.ok ? "stored" : r.code}`];
        }
        if (!r.ok) return [`${m.kind}: dead-lettered ${r.code}`];
        const row = { ...r.row } as unknown as Record<string, unknown>;
        const want = e.row as unknown as Record<string, unknown>;
        return Object.keys(want).filter((k) => row[k] !== want[k]).map((k) => `${m.kind}.${k}`);
      });
      assert.deepEqual(wrong, []);
      assert.equal(new Set(bad.map((m) => m.kind)).size, KINDS.length);
    });

    let produced: Produced[] = [];
    await t.step(
      `produce ${GOOD} good and ${MALFORMED} malformed messages, interleaved`,
      async () => {
        produced = await produceRaw(world.topic, all, { partitions: 3, seed: 4245 });
        report(
          `  ${all.length} messages: ${expectStored.length} to store ` +
            `(${expectStored.length - GOOD} normalized), ${expectDead.length} to dead-letter`,
        );
      },
    );

    const started = performance.now();
    const service = await startService(worldConfig(world));
    let stopped = false;
    try {
      await t.step("the service neither crashes nor blocks: everything is handled", async () => {
        const done = await waitUntil(
          async () =>
            await storedCount(world.database) >= expectStored.length &&
            await topicMessageCount(world.dlqTopic) >= expectDead.length,
          240_000,
        );
        report(
          `  handled in ${Math.round(performance.now() - started)} ms: ` +
            `${await storedCount(world.database)} stored, ${await topicMessageCount(
              world.dlqTopic,
            )} dead letters`,
        );
        assert.ok(done, "all messages stored or dead-lettered within 240 s");
        assert.equal(service.status().source.joined, true, "the consumer is still in its group");
      });
      await service.stop();
      stopped = true;
    } finally {
      if (!stopped) await service.stop();
    }

    await t.step("exact counts: ClickHouse and the dead-letter topic", async () => {
      assert.equal(await storedCount(world.database), expectStored.length);
      assert.equal(await topicMessageCount(world.dlqTopic), expectDead.length);
    });

    let letters: ReadMessage[] = [];
    await t.step("each dead letter names its source and the documented code", async () => {
      letters = await readTopic(world.dlqTopic);
      assert.equal(letters.length, expectDead.length);
      const byKey = new Map(produced.map((p) => [p.key, p]));
      const positions = new Set<string>();
      const wrong: string[] = [];
      for (const d of letters) {
        const p = d.key === null ? undefined : byKey.get(d.key);
        if (p === undefined) {
          wrong.push(`dead letter with unknown key ${d.key}`);
          continue;
        }
        const h = d.headers;
        const pos = `${h["anonymizer.source.partition"]}/${h["anonymizer.source.offset"]}`;
        if (positions.has(pos)) wrong.push(`${d.key}: source position ${pos} twice`);
        positions.add(pos);
        if (pos !== `${p.partition}/${p.offset}`) {
          wrong.push(`${d.key}: header position ${pos}, produced at ${p.partition}/${p.offset}`);
        }
        if (h["anonymizer.source.topic"] !== world.topic) wrong.push(`${d.key}: source topic`);
        const e = p.message.expected;
        const want = e.outcome === "dead_lettered" ? e.code : "(stored)";
        if (h["anonymizer.error.code"] !== want) {
          wrong.push(
            `${d.key} (${p.message.kind}): code ${h["anonymizer.error.code"]}, expected ${want}`,
          );
        }
        const msg = h["anonymizer.error.message"] ?? "";
        if (msg === "" || msg.includes("\n")) wrong.push(`${d.key}: message is not one line`);
        for (const text of [p.message.remoteAddr, p.message.url]) {
          if (text && text.length >= 4 && msg.includes(text)) {
            wrong.push(`${d.key}: message leaks payload`);
          }
        }
        const original = p.message.value;
        const same = original === null
          ? d.value === null
          : d.value !== null && d.value.length === original.length &&
            d.value.every((b, i) => b === original[i]);
        if (!same) wrong.push(`${d.key}: value differs from the source message`);
      }
      assert.deepEqual(wrong.slice(0, 10), [], `${wrong.length} dead letters are wrong`);
      const perCode = new Map<string, number>();
      for (const d of letters) {
        const c = d.headers["anonymizer.error.code"]!;
        perCode.set(c, (perCode.get(c) ?? 0) + 1);
      }
      report(`dead letters by code: ${JSON.stringify(Object.fromEntries(perCode))}`);
    });

    await t.step(
      "good and normalized records are stored once each, in the documented form",
      async () => {
        const expected: StoredForm[] = expectStored.map((m) => {
          assert.ok(m.expected.outcome === "stored");
          return m.expected.row;
        });
        await assertStoredExactly(world.database, expected);
      },
    );

    await t.step("no message is both stored and dead-lettered, none is neither", async () => {
      const rows = await storedRows(world.database);
      const dlqKeys = new Set(letters.map((d) => d.key));
      assert.equal(dlqKeys.size, letters.length, "one dead letter per message");
      const both: string[] = [];
      const neither: string[] = [];
      for (const p of produced) {
        const isStored = p.message.resourceId !== null && rows.has(p.message.resourceId);
        const isDead = dlqKeys.has(p.key);
        if (isStored && isDead) both.push(`${p.key} (${p.message.kind})`);
        if (!isStored && !isDead) neither.push(`${p.key} (${p.message.kind})`);
      }
      assert.deepEqual({ both: both.slice(0, 10), neither: neither.slice(0, 10) }, {
        both: [],
        neither: [],
      });
      assert.equal(rows.size + letters.length, produced.length);
    });
  },
});

Deno.test({
  name: "anonymizer dead-letters a burst of 20,000 consecutive invalid messages without blocking",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using world = await createWorld();
    const now = Date.now();
    // An edge whose clock is unset sends timestamp 0 for a while. Each dead letter is its
    // message plus ~250 bytes of headers, so one fetch (1 MB of source) makes far more than
    // the broker's 1 MB limit of dead letters if they are sent as one request.
    const burst = malformedMessages({ count: 20_000, seed: 31, now, kinds: ["timestamp_zero"] });
    const good = goodMessages(
      syntheticRecords({ seed: 32, now, distinctResourceIds: true }).take(1_000).toArray(),
    );

    await t.step(
      "produce 20,000 invalid messages, then 1,000 good ones, to one partition",
      async () => {
        await produceRaw(world.topic, [...burst, ...good], { partitions: 1, seed: 33 });
      },
    );

    const started = performance.now();
    const service = await startService(worldConfig(world));
    try {
      await t.step(
        "the burst is dead-lettered and the good messages behind it are stored",
        async () => {
          const done = await waitUntil(
            async () =>
              await storedCount(world.database) >= good.length &&
              await topicMessageCount(world.dlqTopic) >= burst.length,
            60_000,
          );
          report(
            `after ${Math.round(performance.now() - started)} ms: ${await storedCount(
              world.database,
            )} ` +
              `stored, ${await topicMessageCount(world.dlqTopic)} dead letters, consumer joined: ` +
              `${service.status().source.joined}`,
          );
          assert.ok(done, "within 60 s");
          assert.equal(await storedCount(world.database), good.length);
          assert.equal(await topicMessageCount(world.dlqTopic), burst.length);
        },
      );
    } finally {
      await service.stop();
    }
  },
});
