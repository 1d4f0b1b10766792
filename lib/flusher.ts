/**
 * The flusher: moves sealed batches from the KV queue into a {@linkcode Sink}
 * through a rate-limited proxy, one request per proxy slot, exactly once.
 *
 * A slot timer fires at each slot the {@linkcode Pacer} computes; the
 * service's `Deno.cron` job calls {@linkcode Flusher.wake} every minute as a
 * watchdog, and the Kafka source calls it when new rows become owned. Cron
 * alone cannot drive the sends: its one-minute grain cannot hit 62.5 s slots
 * without wasting every other one.
 *
 * @module
 */
import { collectGarbage } from "./_collect_garbage.ts";
import { getLogger } from "@logtape/logtape";
import type { AnonymizerError } from "./errors.ts";
import {
  type FlushEvent,
  type Landing,
  type RequestKind,
  RequestReports,
} from "./_request_reports.ts";
import type { BatchMeta, KvQueue } from "./queue/kv_queue.ts";
import { Pacer, slotUsedBy } from "./pacer.ts";
import { SlotSchedule, type SlotYield } from "./slot_schedule.ts";
import { SlotWait } from "./_slot_wait.ts";
import type { HttpLogRow } from "./record/types.ts";
import type { Sink, SinkFailure, SinkProfile } from "./sink/sink.ts";
import {
  type PoisonSource,
  Rejections,
  resendOrSplit,
  type SystemicFailure,
} from "./_rejections.ts";
import { checkUnknown, logResolving } from "./_unknown_outcome.ts";
import { Alarm, type Clock, systemClock } from "./_clock.ts";

export { BISECTION_BREAKER_SHARE, type PoisonSource, type SystemicFailure } from "./_rejections.ts";
export type { Clock } from "./_clock.ts";
export type { FlushEvent, Landing, RequestKind } from "./_request_reports.ts";

const log = getLogger(["anonymizer", "flusher"]);

/** Live state for progress displays and metrics. */
export interface FlusherStatus {
  /** Earliest time (ms) of the next request. */
  nextSlotAt: number;
  /** Whether a request is on the wire. */
  inflight: boolean;
  /** Server version, once known. */
  serverVersion: string | null;
  /** Result of the last request. */
  last: FlushEvent | null;
  /** Requests the proxy refused (503) in a row, 0 after any other answer. */
  refusalsInARow: number;
}

/** Options of {@linkcode Flusher}. */
export interface FlusherOptions {
  /** Minimum spacing between accepted requests, ms. Default: the pacer's `DEFAULT_SPACING_MS`. */
  spacingMs?: number;
  /** Margin added to the spacing, ms. Default: `750`. */
  marginMs?: number;
  /**
   * Wait after a 503 before trying again, ms. Default: `5_000`. Not a
   * setting: a refusal does not move nginx's timer, so this only bounds how
   * late after the real slot a retry lands; repeated refusals are diagnosed
   * by an error naming `CLICKHOUSE_SPACING_MS` instead.
   */
  refusalRetryMs?: number;
  /**
   * How long before a slot to seal the next batch, ms. Default: `1_500`. Not
   * a setting: a seal takes well under a second (about 85 ms of packing for
   * a full 1 MiB body), and the margin only trades at most 1.5 s of rows
   * between two batches.
   */
  sealLeadMs?: number;
  /**
   * Rows offered to the sink for a seal after a body with room left, the first
   * included; after a full body (90% of `bodyLimit` or more) the offer is sized
   * from its bytes per row. Default: `40_000`.
   */
  candidateRows?: number;
  /** Largest request body, bytes, to size later seals. Default: `1_048_576`. */
  bodyLimit?: number;
  /** Called after every request. Default: none. */
  onEvent?: (event: FlushEvent) => void;
  /** Called when a batch is confirmed stored, by its INSERT or by a check. Default: none. */
  onLanded?: (landing: Landing) => void;
  /** Called when a single row is rejected as poison and must be dead-lettered. Default: none (kept and retried). */
  onPoisonRow?: (row: HttpLogRow, error: AnonymizerError, source: PoisonSource) => Promise<void>;
  /** Called when a batch is kept as a systemic failure instead of being bisected or dead-lettered. Default: none. */
  onSystemicFailure?: (failure: SystemicFailure) => void;
  /**
   * Which slots this instance may use when it shares ch-proxy's address with
   * the rest of its consumer group. Default: a schedule with sharing `off`.
   */
  slotSchedule?: SlotSchedule;
  /** Publishes a slot this instance handed to the next member of its group. Default: none (the slot goes unused). */
  onSlotYield?: (y: SlotYield) => void;
  /** Time and waiting; a test passes a fake one. Default: the system clock and timers. */
  clock?: Clock;
}

/**
 * How long before a shared slot its holder seals, ms: a hand-over read from
 * Kafka takes well under a second, and the receiver seals when it arrives.
 */
const SHARED_SEAL_LEAD_MS = 5_000;

/** Fill from which a body counts as full: packBatch fills one that leaves rows over to 97%. */
const FULL_BODY = 0.9;

/**
 * Sends sealed batches, paced for the proxy.
 *
 * @example Start, then stop with a grace period
 * ```ts
 * import { Flusher } from "./flusher.ts";
 * import { openQueue } from "./queue/kv_queue.ts";
 * import { ClickHouseClient } from "./sink/clickhouse/clickhouse_client.ts";
 * import { ClickHouseSink } from "./sink/clickhouse/clickhouse_sink.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await using queue = await openQueue(`${dir}/q.sqlite3`);
 * // Nothing is queued, so nothing is sent; the version check waits for its slot.
 * await queue.setServer({ version: "18.16.1", checkedAt: Date.now() });
 * const sink = new ClickHouseSink(new ClickHouseClient("http://127.0.0.1:8124"));
 * const flusher = new Flusher(queue, sink);
 * flusher.start();
 * await flusher.stop({ graceMs: 1_000 });
 * assert.equal(flusher.status().inflight, false);
 * ```
 */
export class Flusher {
  readonly #queue: KvQueue;
  readonly #sink: Sink;
  readonly #pacer: Pacer;
  readonly #schedule: SlotSchedule;
  readonly #clock: Clock;
  readonly #rejections: Rejections;
  readonly #opts: FlusherOptions & { sealLeadMs: number; candidateRows: number; bodyLimit: number };
  #stopping = false;
  #loop: Promise<void> | null = null;
  readonly #alarm: Alarm;
  #inflight: AbortController | null = null;
  readonly #reports: RequestReports;
  readonly #slots: SlotWait;
  /** The batch whose unknown outcome is being resolved, and the slots spent on it so far. */
  #resolving: { id: bigint; slots: number } | null = null;
  #bytesPerRow = 0;
  #candidateRows: number;
  #profile: SinkProfile | null = null;

  /** A flusher for `queue`, delivering to `sink`. */
  constructor(queue: KvQueue, sink: Sink, options: FlusherOptions = {}) {
    this.#queue = queue;
    this.#sink = sink;
    this.#clock = options.clock ?? systemClock;
    this.#alarm = new Alarm(this.#clock);
    this.#pacer = new Pacer(queue, {
      spacingMs: options.spacingMs,
      marginMs: options.marginMs,
      refusalRetryMs: options.refusalRetryMs,
      now: this.#clock.now,
    });
    this.#schedule = options.slotSchedule ?? new SlotSchedule({ sharing: "off" });
    this.#slots = new SlotWait(
      { pacer: this.#pacer, schedule: this.#schedule, alarm: this.#alarm, clock: this.#clock },
      () => this.#stopping,
    );
    this.#rejections = new Rejections(queue, options);
    this.#reports = new RequestReports(this.#pacer.spacingMs, this.#clock.now, options);
    this.#opts = {
      ...options,
      sealLeadMs: options.sealLeadMs ?? 1_500,
      candidateRows: options.candidateRows ?? 40_000,
      bodyLimit: options.bodyLimit ?? 1_048_576,
    };
    this.#candidateRows = this.#opts.candidateRows;
  }

  /** Live state. */
  status(): FlusherStatus {
    return {
      nextSlotAt: this.#slots.nextSlotAt,
      inflight: this.#inflight !== null,
      serverVersion: this.#profile?.version ?? null,
      last: this.#reports.last,
      refusalsInARow: this.#reports.refusalsInARow,
    };
  }

  /** Starts the send loop. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** Ends any wait early: new owned rows, or the cron watchdog. */
  wake(): void {
    this.#alarm.wake();
  }

  /**
   * Stops the loop. A request on the wire may finish within `graceMs`
   * (default `10_000`); after that it is aborted, and its batch is resolved
   * after the next start as an unknown outcome.
   */
  async stop(options: { graceMs?: number } = {}): Promise<void> {
    this.#stopping = true;
    this.wake();
    if (this.#loop === null) return;
    const grace = options.graceMs ?? 10_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.#inflight?.abort(new DOMException("shutdown grace period ended", "AbortError"));
        resolve();
      }, grace);
    });
    await Promise.race([this.#loop, expired]);
    await this.#loop;
    clearTimeout(timer);
  }

  /** Average body bytes per row of the last sealed batch, 0 before the first. */
  get bytesPerRow(): number {
    return this.#bytesPerRow;
  }

  async #run(): Promise<void> {
    await this.#recoverInflight();
    let failures = 0;
    while (!this.#stopping) {
      try {
        await this.#step();
        failures = 0;
      } catch (err) {
        failures++;
        log.error("Flusher step failed, retrying: {error}", { error: String(err), failures });
        await this.#alarm.sleep(Math.min(30_000, 500 * 2 ** failures));
      }
    }
  }

  async #recoverInflight(): Promise<void> {
    const since = await this.#pacer.recover();
    if (since !== null) {
      log.info(
        "A request was on the wire since {since} when the process stopped; counting its proxy slot as used",
        { since: new Date(since).toISOString() },
      );
    }
    const cached = (await this.#queue.server())?.version;
    if (cached !== undefined) this.#learnVersion(cached);
  }

  /**
   * Takes the server's version, or refuses it: a release the sink cannot
   * write to gets no request but the next version check, so no batch can take
   * a wrong path. Returns whether the version is usable.
   */
  #learnVersion(version: string): boolean {
    try {
      this.#profile = this.#sink.useVersion(version);
    } catch (err) {
      this.#profile = null;
      log.error("{error}; rows stay queued, and the version is checked again in 10 minutes", {
        error: err instanceof Error ? err.message : String(err),
        url: this.#sink.target,
      });
      return false;
    }
    return true;
  }

  async #step(): Promise<void> {
    const profile = this.#profile;
    if (profile === null) {
      if (await this.#slots.until() === null) return;
      const r = await this.#paced("version", {}, (signal) => this.#sink.probeVersion(signal));
      if (!("value" in r)) return;
      if (!this.#learnVersion(r.value)) {
        await this.#alarm.sleep(600_000);
        return;
      }
      await this.#queue.setServer({ version: this.#profile!.version, checkedAt: this.#now() });
      return;
    }
    let batch = await this.#queue.batch();
    if (batch === null) {
      // Seal as late as possible so the batch carries everything queued by its slot.
      // Shared slots are sealed earlier: an empty one is handed on, and the
      // next member needs time to seal its own batch for it.
      const shared = this.#schedule.members.length > 1;
      const at = await this.#slots.until(shared ? SHARED_SEAL_LEAD_MS : this.#opts.sealLeadMs);
      if (at === null) return;
      batch = await this.#seal();
      if (batch === null) {
        const y = this.#schedule.giveAway(at);
        if (y !== null) this.#opts.onSlotYield?.(y);
        // Alone, a new row wakes the loop; shared, the next held slot is looked at again.
        if (!shared) await this.#alarm.sleep(60_000);
        return;
      }
    }
    if (await this.#slots.until() === null) return;
    // A 413 after an unknown outcome is resolved by a check even with tokens:
    // splitting gives the rows new batch ids, so a landed attempt would land twice.
    const check = profile.dedup === "check" || batch.tooLarge === true;
    if (batch.state !== "sealed" && this.#resolving?.id !== batch.id) {
      this.#resolving = { id: batch.id, slots: 0 };
      logResolving(batch, check);
    }
    if (batch.state !== "sealed" && check) {
      await this.#check(batch);
    } else {
      await this.#insert(batch);
    }
  }

  async #seal(): Promise<BatchMeta | null> {
    const started = performance.now();
    const hints = { avoidEncoding: this.#rejections.avoidEncoding };
    const batch = await this.#queue.seal((rows, id) => this.#sink.pack(rows, id, hints), {
      candidateRows: this.#candidateRows,
    });
    // What the seal decoded is dead now; between slots the RSS should not carry it.
    collectGarbage();
    if (batch === null) return null;
    // Isolated groups are sealed before any other rows, so a batch that is
    // not one ends every bisection.
    if (batch.isolated === false) this.#rejections.sealedOrdinary();
    this.#bytesPerRow = batch.bytes / batch.rows;
    // Decoding far more rows than fit costs memory and CPU on every seal, so a
    // full body's density sizes the next offer, with a quarter more for
    // variation. A body with room left says nothing of how many rows fit:
    // a small batch compresses worse per row, and sized from it the next seal
    // would leave owned rows behind for a slot.
    this.#candidateRows = batch.bytes >= FULL_BODY * this.#opts.bodyLimit
      ? Math.ceil((this.#opts.bodyLimit / this.#bytesPerRow) * 1.25)
      : this.#opts.candidateRows;
    log.debug("Sealed batch {batchId}: {rows} rows, {bytes} bytes in {ms} ms", {
      batchId: String(batch.id),
      rows: batch.rows,
      bytes: batch.bytes,
      ms: Math.round(performance.now() - started),
    });
    return batch;
  }

  async #insert(batch: BatchMeta): Promise<void> {
    const prior = batch.state;
    const body = await this.#queue.body(batch);
    const sending = await this.#queue.markSending(batch.id);
    log.debug("Sending INSERT of batch {batchId}: {rows} rows, {bytes} bytes, attempt {attempt}", {
      batchId: String(batch.id),
      rows: batch.rows,
      bytes: batch.bytes,
      attempt: sending.attempts,
    });
    const started = this.#now();
    const r = await this.#paced(
      "insert",
      batch,
      (signal) => this.#sink.send(sending, body, signal),
    );
    if ("failure" in r) {
      await this.#rejections.afterFailure(batch, prior, r.failure, this.#profile!.reencodes);
      return;
    }
    await this.#queue.markLanded(batch.id);
    if (this.#resolving?.id === batch.id) {
      log.info(
        "Batch {batchId}: unknown outcome resolved by a token resend ({rows} rows stored once); " +
          "it cost {slots} slots",
        { batchId: String(batch.id), rows: batch.rows, slots: this.#resolving.slots },
      );
      this.#resolving = null;
    }
    this.#emitLanded(batch, started, "insert");
  }

  async #check(batch: BatchMeta): Promise<void> {
    const slots = () => this.#resolving?.id === batch.id ? this.#resolving.slots : 1;
    const result = await checkUnknown(batch, {
      check: async () => {
        const r = await this.#paced("check", batch, (signal) => this.#sink.check(batch, signal));
        return "value" in r ? r.value : null;
      },
      repair: async () =>
        "value" in await this.#paced("repair", batch, (signal) => this.#sink.repair(batch, signal)),
      slots,
    });
    if (result === "pending") return;
    this.#resolving = null;
    if (result === "landed") {
      await this.#queue.markLanded(batch.id);
      this.#emitLanded(batch, this.#now(), "check");
    } else {
      await resendOrSplit(this.#queue, batch);
    }
  }

  #emitLanded(batch: BatchMeta, started: number, via: Landing["via"]): void {
    this.#reports.landed(batch, { started, via, nextSlotAt: this.#slots.nextSlotAt });
  }

  /**
   * Sends one request in a proxy slot through the pacer, and reports it.
   * Resolves to the request's value or the sink's failure; an error the sink
   * does not know (a bug) is thrown.
   */
  async #paced<T>(
    kind: RequestKind,
    batch: Partial<BatchMeta>,
    send: (signal: AbortSignal) => Promise<T>,
  ): Promise<{ value: T } | { failure: SinkFailure }> {
    this.#inflight = new AbortController();
    const started = performance.now();
    const signal = this.#inflight.signal;
    try {
      const r = await this.#pacer.request(
        () => send(signal),
        (err) => slotUsedBy(this.#sink.classify(err)?.outcome ?? null),
      );
      const failure = r.ok ? null : this.#sink.classify(r.error);
      if ((r.ok || r.slotUsed) && this.#resolving !== null && this.#resolving.id === batch.id) {
        this.#resolving.slots++;
      }
      this.#reports.record(
        kind,
        batch,
        started,
        failure,
        (await this.#slots.next()) ?? this.#slots.nextSlotAt,
      );
      if (r.ok) return { value: r.value };
      if (failure === null) throw r.error;
      return { failure };
    } finally {
      this.#inflight = null;
    }
  }

  #now(): number {
    return this.#clock.now();
  }
}
