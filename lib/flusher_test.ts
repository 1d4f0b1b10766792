/**
 * The flusher through the README's outcome table, with a fake Sink standing
 * in for ClickHouse and a fake clock standing in for the 62.5 s slots.
 */
import assert from "node:assert/strict";
import { AnonymizerError, type RequestOutcome } from "./errors.ts";
import {
  type Clock,
  Flusher,
  type FlushEvent,
  type Landing,
  type SystemicFailure,
} from "./flusher.ts";
import type { BatchMeta, KvQueue, PackResult } from "./queue/kv_queue.ts";
import type { HttpLogRow } from "./record/types.ts";
import { openTempQueue } from "../testing/temp_queue.ts";
import { testRow } from "../testing/test_row.ts";
import type { CheckResult, PackHints, Sink, SinkFailure, SinkProfile } from "./sink/sink.ts";

const SPACING_MS = 62_500;
const MARGIN_MS = 750;
const SLOT_MS = SPACING_MS + MARGIN_MS;
const TOPIC = "http_log";

/** Virtual time: a sleep moves it forward at once, unless a wake ends it first. */
class FakeClock implements Clock {
  t = 1_700_000_000_000;
  /** While set, every sleep waits for it: the test changes the queue with the flusher parked. */
  hold: Promise<void> | null = null;
  readonly now = (): number => this.t;
  readonly sleep = async (ms: number, signal: AbortSignal): Promise<void> => {
    // A macrotask lets the test and other callbacks run between the flusher's steps.
    await new Promise((r) => setTimeout(r, 0));
    await this.hold;
    if (!signal.aborted) this.t += ms;
  };
}

class FakeFailure extends Error {
  constructor(readonly failure: SinkFailure) {
    super(failure.error.message);
  }
}

/** A failure of `outcome`, as a sink would classify it. */
function failure(
  outcome: RequestOutcome,
  extra: Partial<Omit<SinkFailure, "error">> = {},
): FakeFailure {
  const error = new AnonymizerError(`Cannot insert as the fake sink said ${outcome}`, {
    code: "test_failed",
    retriable: extra.retriable ?? false,
  });
  return new FakeFailure({
    outcome,
    rateLimited: false,
    bodyUnread: false,
    retriable: false,
    error,
    ...extra,
  });
}

/** What the fake server does with one INSERT: store it (or not), then answer. */
type Answer = "ok" | FakeFailure | { store: "all" | "half"; then: FakeFailure };

interface Sent {
  kind: "send" | "check" | "repair" | "version";
  at: number;
  batchId?: bigint;
  rows?: number;
  encoding?: string;
  body?: string;
}

/**
 * A server that stores rows by batch id. `answer` scripts each INSERT; with
 * `dedup: "token"` it drops a resend of a batch id it stored, as ClickHouse's
 * deduplication windows do.
 */
class FakeSink implements Sink {
  readonly target = "fake://sink";
  readonly requests: Sent[] = [];
  /** Stored row ids by batch id. */
  readonly stored = new Map<bigint, bigint[]>();
  answer: (batch: BatchMeta, ids: bigint[]) => Answer = () => "ok";
  checks: Array<(found: CheckResult) => CheckResult> = [];
  version = "1.0";
  constructor(
    readonly clock: FakeClock,
    readonly profile: { dedup: "check" | "token"; reencodes?: boolean; maxRows?: number } = {
      dedup: "check",
    },
  ) {}

  probeVersion(): Promise<string> {
    this.requests.push({ kind: "version", at: this.clock.now() });
    return Promise.resolve(this.version);
  }

  useVersion(version: string): SinkProfile {
    if (version !== "1.0") throw new Error(`Cannot write to the fake sink: version ${version}`);
    return { version, dedup: this.profile.dedup, reencodes: this.profile.reencodes ?? false };
  }

  pack(rows: HttpLogRow[], _batchId: bigint, hints: PackHints = {}): PackResult {
    const rowCount = Math.min(rows.length, this.profile.maxRows ?? Infinity);
    const ids = rows.slice(0, rowCount).map((r) => String(r.resourceId));
    return {
      body: new TextEncoder().encode(JSON.stringify(ids)),
      rowCount,
      encoding: hints.avoidEncoding === "a" ? "b" : "a",
      query: { query: "INSERT" },
      headers: {},
    };
  }

  send(batch: BatchMeta, body: Uint8Array, _signal: AbortSignal): Promise<void> {
    const text = new TextDecoder().decode(body);
    const ids = (JSON.parse(text) as string[]).map(BigInt);
    this.requests.push({
      kind: "send",
      at: this.clock.now(),
      batchId: batch.id,
      rows: ids.length,
      encoding: batch.encoding,
      body: text,
    });
    const answer = this.answer(batch, ids);
    const store = (rows: bigint[]) => {
      if (this.profile.dedup === "token" && this.stored.has(batch.id)) return;
      this.stored.set(batch.id, [...(this.stored.get(batch.id) ?? []), ...rows]);
    };
    if (answer === "ok") {
      store(ids);
      return Promise.resolve();
    }
    if (answer instanceof FakeFailure) return Promise.reject(answer);
    store(answer.store === "all" ? ids : ids.slice(0, Math.ceil(ids.length / 2)));
    return Promise.reject(answer.then);
  }

  check(batch: BatchMeta): Promise<CheckResult> {
    this.requests.push({ kind: "check", at: this.clock.now(), batchId: batch.id });
    const found = { stored: this.stored.get(batch.id)?.length ?? 0, running: false };
    return Promise.resolve(this.checks.shift()?.(found) ?? found);
  }

  repair(batch: BatchMeta): Promise<void> {
    this.requests.push({ kind: "repair", at: this.clock.now(), batchId: batch.id });
    this.stored.delete(batch.id);
    return Promise.resolve();
  }

  classify(error: unknown): SinkFailure | null {
    return error instanceof FakeFailure ? error.failure : null;
  }

  /** Every stored row id, sorted, with its count. */
  storedIds(): bigint[] {
    return [...this.stored.values()].flat().sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  sends(): Sent[] {
    return this.requests.filter((r) => r.kind === "send");
  }
}

function row(i: number): HttpLogRow {
  return testRow(i, { timestamp: 1_700_000_000 + i, url: `/r/${i}` });
}

/** A row with a 2,000-character pseudo-random URL: a KV chunk holds a few dozen of them. */
function incompressibleRow(i: number): HttpLogRow {
  let x = i * 2_654_435_761 + 1;
  let url = `/r/${i}/`;
  for (let k = 0; k < 2_000; k++) {
    x = (x * 1_103_515_245 + 12_345) % 2_147_483_648;
    url += "abcdefghijklmnopqrstuvwxyz0123456789"[x % 36];
  }
  return testRow(i, { timestamp: 1_700_000_000 + i, url });
}

const ids = (n: number): bigint[] => Array.from({ length: n }, (_, i) => BigInt(i));

interface Rig extends AsyncDisposable {
  queue: KvQueue;
  clock: FakeClock;
  sink: FakeSink;
  flusher: Flusher;
  events: FlushEvent[];
  landings: Landing[];
  poison: Array<{ row: HttpLogRow; offset: bigint }>;
  systemic: SystemicFailure[];
  /** Runs the flusher until `done` holds. */
  runUntil(done: () => boolean | Promise<boolean>): Promise<void>;
}

/** A queue of `rows` owned rows in its own temp dir, a known server, and a flusher on a fake clock. */
async function rig(
  rows: number,
  profile: ConstructorParameters<typeof FakeSink>[1] = { dedup: "check" },
  options: { bodyLimit?: number } = {},
): Promise<Rig> {
  const clock = new FakeClock();
  const tmp = await openTempQueue({ prefix: "anonymizer-flusher-", now: clock.now });
  const { queue } = tmp;
  await queue.setServer({ version: "1.0", checkedAt: clock.now() });
  const entries = Array.from({ length: rows }, (_, i) => ({ offset: BigInt(i), row: row(i) }));
  await queue.append(TOPIC, 0, entries, { next: BigInt(rows) });
  await queue.promote(TOPIC, 0, BigInt(rows));
  const sink = new FakeSink(clock, profile);
  const events: FlushEvent[] = [];
  const landings: Landing[] = [];
  const poison: Rig["poison"] = [];
  const systemic: SystemicFailure[] = [];
  const flusher = new Flusher(queue, sink, {
    ...options,
    spacingMs: SPACING_MS,
    marginMs: MARGIN_MS,
    clock,
    onEvent: (e) => events.push(e),
    onLanded: (l) => landings.push(l),
    onPoisonRow: (r, _error, source) => {
      poison.push({ row: r, offset: source.offset });
      return Promise.resolve();
    },
    onSystemicFailure: (f) => systemic.push(f),
  });
  return {
    queue,
    clock,
    sink,
    flusher,
    events,
    landings,
    poison,
    systemic,
    async runUntil(done) {
      flusher.start();
      for (let i = 0; i < 5_000 && !await done(); i++) {
        await new Promise((r) => setTimeout(r, 1));
      }
      assert.ok(
        await done(),
        `the flusher reached the expected state; requests: ${
          JSON.stringify(sink.requests.map((q) => [q.kind, q.rows, q.at - clock.t]))
        }`,
      );
    },
    async [Symbol.asyncDispose]() {
      await flusher.stop({ graceMs: 1_000 });
      await tmp[Symbol.asyncDispose]();
    },
  };
}

/**
 * Whether `rows` rows have landed and been reported; then asserts the queue
 * is empty. The flusher reports a landing after its KV commit, so waiting for
 * the report too keeps a test from reading `landings` in between. Both counts
 * only grow, so reading them cannot race a seal.
 */
async function drained(r: Rig, rows = 100): Promise<boolean> {
  if (r.landings.reduce((n, l) => n + l.rows, 0) < rows) return false;
  if ((await r.queue.stats()).landedRows < rows) return false;
  assert.equal(await r.queue.batch(), null);
  assert.equal((await r.queue.stats()).queuedRows, 0);
  return true;
}

Deno.test("Flusher lands a batch with one INSERT in the first slot (2xx)", async () => {
  await using r = await rig(100);
  await r.runUntil(() => drained(r));
  assert.equal(r.sink.sends().length, 1);
  assert.deepEqual(r.sink.storedIds(), ids(100));
  assert.deepEqual(r.landings.map((l) => [l.rows, l.via]), [[100, "insert"]]);
  assert.deepEqual(r.events.map((e) => [e.kind, e.outcome]), [["insert", "ok"]]);
  assert.equal((await r.queue.stats()).landedRows, 100);
});

Deno.test("Flusher resends an unchanged batch 5 s after a 503, without waiting a slot", async (t) => {
  await using r = await rig(100);
  let n = 0;
  r.sink.answer = () => ++n <= 3 ? failure("refused", { rateLimited: true, status: 503 }) : "ok";
  await r.runUntil(() => drained(r));
  const sends = r.sink.sends();
  await t.step("the same batch id and body are sent each time", () => {
    assert.equal(sends.length, 4);
    assert.equal(new Set(sends.map((s) => s.batchId)).size, 1);
    assert.equal(new Set(sends.map((s) => s.body)).size, 1);
  });
  await t.step("a refusal does not use a slot: retries come 5 s apart", () => {
    for (let i = 1; i < sends.length; i++) assert.equal(sends[i]!.at - sends[i - 1]!.at, 5_000);
  });
  await t.step("refusals in a row are counted, and reset by a success", () => {
    assert.deepEqual(r.events.map((e) => e.outcome), ["refused", "refused", "refused", "ok"]);
    assert.equal(r.flusher.status().refusalsInARow, 0);
  });
  assert.deepEqual(r.sink.storedIds(), ids(100));
});

Deno.test("Flusher counts refusals in a row while the proxy keeps refusing", async () => {
  await using r = await rig(10);
  r.sink.answer = () => failure("refused", { rateLimited: true, status: 503 });
  await r.runUntil(() => r.sink.sends().length >= 4);
  assert.ok(r.flusher.status().refusalsInARow >= 3);
  assert.deepEqual(r.sink.storedIds(), []);
});

Deno.test("Flusher hands a batch the proxy refused as too large (413) back to be sealed again", async () => {
  await using r = await rig(100);
  let n = 0;
  r.sink.answer = () => ++n === 1 ? failure("too_large", { status: 413 }) : "ok";
  await r.runUntil(() => drained(r));
  const sends = r.sink.sends();
  assert.equal(sends.length, 2);
  assert.notEqual(sends[0]!.batchId, sends[1]!.batchId, "the rows are sealed in a new batch");
  assert.ok(sends[1]!.at - sends[0]!.at < SLOT_MS, "a 413 used no slot");
  assert.deepEqual(r.sink.storedIds(), ids(100));
});

Deno.test("Flusher resolves an unknown outcome with a check (dedup check)", async (t) => {
  await t.step("the INSERT had landed: the check confirms it, nothing is resent", async () => {
    await using r = await rig(100);
    r.sink.answer = () => ({ store: "all", then: failure("unknown") });
    await r.runUntil(() => drained(r));
    assert.deepEqual(r.sink.requests.map((q) => q.kind), ["send", "check"]);
    assert.ok(r.sink.requests[1]!.at - r.sink.requests[0]!.at >= SLOT_MS, "the check takes a slot");
    assert.deepEqual(r.landings.map((l) => l.via), ["check"]);
    assert.deepEqual(r.sink.storedIds(), ids(100));
  });
  await t.step(
    "the INSERT had not landed: the check finds nothing, the batch is resent",
    async () => {
      await using r = await rig(100);
      let n = 0;
      r.sink.answer = () => ++n === 1 ? failure("unknown") : "ok";
      await r.runUntil(() => drained(r));
      const kinds = r.sink.requests.map((q) => q.kind);
      assert.deepEqual(kinds, ["send", "check", "send"]);
      assert.equal(r.sink.requests[0]!.batchId, r.sink.requests[2]!.batchId);
      assert.deepEqual(r.sink.storedIds(), ids(100));
    },
  );
  await t.step("the batch is partly stored: repair deletes it, then it is resent", async () => {
    await using r = await rig(100);
    let n = 0;
    r.sink.answer = () => ++n === 1 ? { store: "half", then: failure("unknown") } : "ok";
    await r.runUntil(() => drained(r));
    assert.deepEqual(r.sink.requests.map((q) => q.kind), ["send", "check", "repair", "send"]);
    assert.deepEqual(r.sink.storedIds(), ids(100));
  });
  await t.step("the INSERT is still running: checked again at the next slot", async () => {
    await using r = await rig(100);
    r.sink.answer = () => ({ store: "all", then: failure("unknown") });
    r.sink.checks = [(found) => ({ ...found, running: true })];
    await r.runUntil(() => drained(r));
    assert.deepEqual(r.sink.requests.map((q) => q.kind), ["send", "check", "check"]);
    assert.deepEqual(r.sink.storedIds(), ids(100));
  });
});

Deno.test("Flusher resolves an unknown outcome by a resend with the same batch id (dedup token)", async () => {
  await using r = await rig(100, { dedup: "token" });
  let n = 0;
  r.sink.answer = () => ++n === 1 ? { store: "all", then: failure("unknown") } : "ok";
  await r.runUntil(() => drained(r));
  const sends = r.sink.sends();
  assert.deepEqual(r.sink.requests.map((q) => q.kind), ["send", "send"]);
  assert.equal(sends[0]!.batchId, sends[1]!.batchId);
  assert.equal(sends[0]!.body, sends[1]!.body, "a resend is byte-identical");
  assert.deepEqual(r.sink.storedIds(), ids(100), "the server dropped the resend");
});

Deno.test("Flusher checks before splitting on a 413 after an unknown outcome, even with tokens", async (t) => {
  await t.step("the unknown attempt had landed: done, no split", async () => {
    await using r = await rig(100, { dedup: "token" });
    let n = 0;
    r.sink.answer = () =>
      ++n === 1
        ? { store: "all", then: failure("unknown") }
        : failure("too_large", { status: 413 });
    await r.runUntil(() => drained(r));
    assert.deepEqual(r.sink.requests.map((q) => q.kind), ["send", "send", "check"]);
    assert.deepEqual(r.sink.storedIds(), ids(100));
  });
  await t.step("the unknown attempt had not landed: its rows are sealed again", async () => {
    await using r = await rig(100, { dedup: "token" });
    let n = 0;
    r.sink.answer = () => {
      n++;
      if (n === 1) return failure("unknown");
      return n === 2 ? failure("too_large", { status: 413 }) : "ok";
    };
    await r.runUntil(() => drained(r));
    assert.deepEqual(r.sink.requests.map((q) => q.kind), ["send", "send", "check", "send"]);
    const sends = r.sink.sends();
    assert.notEqual(sends[2]!.batchId, sends[0]!.batchId, "the rows are sealed in a new batch");
    assert.deepEqual(r.sink.storedIds(), ids(100));
  });
});

Deno.test("Flusher bisects a rejected batch down to the poison row and dead-letters only it", async () => {
  await using r = await rig(2_000);
  r.sink.answer = (_batch, rows) =>
    rows.includes(1_234n) ? failure("rejected", { status: 400, serverCode: 27 }) : "ok";
  await r.runUntil(async () => r.poison.length === 1 && await drained(r, 1_999));
  assert.deepEqual(r.poison.map((p) => [p.row.resourceId, p.offset]), [[1_234n, 1_234n]]);
  assert.deepEqual(r.sink.storedIds(), ids(2_000).filter((i) => i !== 1_234n));
  assert.deepEqual(r.systemic, []);
});

Deno.test("Flusher's breaker holds a batch whose rows are rejected in many groups, dead-lettering none", async () => {
  await using r = await rig(100);
  r.sink.answer = () => failure("rejected", { status: 400, serverCode: 27 });
  await r.runUntil(() => r.systemic.length > 0);
  assert.equal(r.systemic[0]!.cause, "breaker");
  assert.deepEqual(r.poison, []);
  assert.deepEqual(r.sink.storedIds(), []);
  assert.equal(
    (await r.queue.stats()).queuedRows + ((await r.queue.batch())?.rows ?? 0),
    100,
    "every row is kept",
  );
});

Deno.test("Flusher keeps a batch whose body the server could not read, dead-lettering nothing", async (t) => {
  await t.step("a sink with a second encoding reseals the rows in it", async () => {
    await using r = await rig(100, { dedup: "check", reencodes: true });
    let n = 0;
    r.sink.answer = () =>
      ++n === 1 ? failure("rejected", { bodyUnread: true, retriable: true }) : "ok";
    await r.runUntil(() => drained(r));
    assert.deepEqual(r.sink.sends().map((s) => s.encoding), ["a", "b"]);
    assert.deepEqual(r.systemic.map((f) => f.cause), ["body_rejected"]);
    assert.deepEqual(r.poison, []);
    assert.deepEqual(r.sink.storedIds(), ids(100));
  });
  await t.step("a sink with one encoding resends the batch unchanged", async () => {
    await using r = await rig(100);
    let n = 0;
    r.sink.answer = () =>
      ++n === 1 ? failure("rejected", { bodyUnread: true, retriable: true }) : "ok";
    await r.runUntil(() => drained(r));
    const sends = r.sink.sends();
    assert.equal(sends[0]!.batchId, sends[1]!.batchId);
    assert.deepEqual(r.poison, []);
    assert.deepEqual(r.sink.storedIds(), ids(100));
  });
});

Deno.test("Flusher keeps and retries a batch refused for a reason an operator can fix", async () => {
  await using r = await rig(100);
  let n = 0;
  r.sink.answer = () => ++n <= 2 ? failure("rejected", { status: 401, retriable: true }) : "ok";
  await r.runUntil(() => drained(r));
  const sends = r.sink.sends();
  assert.equal(sends.length, 3);
  assert.equal(new Set(sends.map((s) => s.batchId)).size, 1);
  assert.ok(sends[1]!.at - sends[0]!.at >= SLOT_MS, "a rejected request used its slot");
  assert.deepEqual(r.poison, []);
  assert.deepEqual(r.sink.storedIds(), ids(100));
});

Deno.test("Flusher sends at most one request per slot", async () => {
  await using r = await rig(1_000, { dedup: "check", maxRows: 100 });
  await r.runUntil(() => drained(r, 1_000));
  const sends = r.sink.sends();
  assert.equal(sends.length, 10);
  for (let i = 1; i < sends.length; i++) assert.ok(sends[i]!.at - sends[i - 1]!.at >= SLOT_MS);
  assert.deepEqual(r.sink.storedIds(), ids(1_000));
});

Deno.test("Flusher sizes a seal's offer from the last body only when that body was full", async (t) => {
  // The fake sink's body is the JSON of the row ids, about 6 bytes a row.
  await using r = await rig(1, { dedup: "check" }, { bodyLimit: 1_000 });
  let next = 1n;
  const queueChunks = async (chunks: number) => {
    let release = () => {};
    r.clock.hold = new Promise((resolve) => release = resolve);
    // Long enough for the flusher to finish its step and park in a sleep.
    await new Promise((resolve) => setTimeout(resolve, 50));
    for (let k = 0; k < chunks; k++) {
      const entries = Array.from({ length: 100 }, (_, i) => {
        const offset = next + BigInt(i);
        return { offset, row: incompressibleRow(Number(offset)) };
      });
      next += 100n;
      await r.queue.append(TOPIC, 0, entries, { next });
      await r.queue.promote(TOPIC, 0, next);
    }
    r.clock.hold = null;
    release();
  };
  await t.step("a 1-row body, far from full, lands", async () => {
    await r.runUntil(() => drained(r, 1));
  });
  await t.step("the next seal offers every queued row, not a guess from that body", async () => {
    await queueChunks(10);
    r.flusher.wake();
    await r.runUntil(() => drained(r, 1_001));
    // Sized from the 1-row body (5 bytes) the offer would be 250 rows.
    assert.deepEqual(r.sink.sends().map((s) => s.rows), [1, 1_000]);
  });
  await t.step("after a full body the offer is sized from its bytes per row", async () => {
    await queueChunks(10);
    r.flusher.wake();
    await r.runUntil(() => drained(r, 2_001));
    const rows = r.sink.sends().map((s) => s.rows!);
    // The 1,000-row body took about 6.9 bytes a row: 1,000 / 6.9 × 1.25 ≈ 182 rows, in whole chunks.
    assert.ok(rows[2]! >= 182 && rows[2]! < 400, `${rows[2]} rows`);
    assert.equal(rows.slice(2).reduce((a, b) => a + b, 0), 1_000);
  });
  assert.deepEqual(r.sink.storedIds(), ids(2_001));
});

Deno.test("Flusher asks the version first, and sends nothing to a server it cannot write to", async (t) => {
  await t.step("a cached version the sink refuses is asked again, then cached", async () => {
    await using r = await rig(10);
    await r.queue.setServer({ version: "", checkedAt: 0 });
    await r.runUntil(() => drained(r, 10));
    assert.deepEqual(r.sink.requests.map((q) => q.kind), ["version", "send"]);
    assert.equal((await r.queue.server())?.version, "1.0");
  });
  await t.step("an unknown version: no INSERT, checked again later", async () => {
    const clock = new FakeClock();
    await using tmp = await openTempQueue({ prefix: "anonymizer-flusher-", now: clock.now });
    const { queue } = tmp;
    await queue.append(TOPIC, 0, [{ offset: 0n, row: row(0) }], { next: 1n });
    await queue.promote(TOPIC, 0, 1n);
    const sink = new FakeSink(clock);
    sink.version = "9.9";
    const flusher = new Flusher(queue, sink, { clock });
    flusher.start();
    for (let i = 0; i < 5_000 && sink.requests.length < 3; i++) {
      await new Promise((r) => setTimeout(r, 1));
    }
    await flusher.stop({ graceMs: 1_000 });
    assert.ok(sink.requests.length >= 3);
    assert.ok(sink.requests.every((q) => q.kind === "version"));
    assert.ok(
      sink.requests[1]!.at - sink.requests[0]!.at >= 600_000,
      "checked again in 10 minutes",
    );
    assert.equal(flusher.status().serverVersion, null);
  });
});

Deno.test("Flusher counts the slot of a request that was on the wire at a crash as used", async () => {
  await using r = await rig(10);
  const crashedAt = r.clock.now() - 1_000;
  await r.queue.setPacer({ lastConsumedAt: null, inflightSince: crashedAt });
  await r.runUntil(() => drained(r, 10));
  assert.ok(r.sink.sends()[0]!.at >= crashedAt + SLOT_MS);
  assert.deepEqual(await r.queue.pacer(), {
    lastConsumedAt: r.sink.sends()[0]!.at,
    inflightSince: null,
  });
});
