/**
 * The flusher: moves sealed batches from the KV queue into ClickHouse through
 * ch-proxy, one request per proxy slot, exactly once.
 *
 * A slot timer fires at each slot computed by {@linkcode nextSlotAt}; the
 * service's `Deno.cron` job calls {@linkcode Flusher.wake} every minute as a
 * watchdog, and the Kafka source calls it when new rows become owned. Cron
 * alone cannot drive the sends: its one-minute grain cannot hit 62.5 s slots
 * without wasting every other one.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { ClickHouseClient } from "./sink/clickhouse/clickhouse_client.ts";
import { ClickHouseError, type ErrorCode } from "./errors.ts";
import type { BatchMeta, KvQueue, PackResult } from "./queue/kv_queue.ts";
import { nextSlotAt } from "./pacer.ts";
import { SlotSchedule, type SlotYield } from "./slot_schedule.ts";
import {
  type ServerProfile,
  serverProfile,
  UnsupportedServerError,
} from "./sink/clickhouse/server_version.ts";
import { type DedupStrategy, insertSettings } from "./sink/clickhouse/_insert_settings.ts";
import { pacedRequest } from "./_paced_request.ts";
import type { HttpLogRow } from "./record/types.ts";

const log = getLogger(["anonymizer", "flusher"]);

/**
 * Refusals in a row after which one error diagnoses them: one can be a
 * neighbour's request landing just before ours; three in a row are a pattern.
 */
const REFUSALS_BEFORE_DIAGNOSIS = 3;

/**
 * How long before a shared slot its holder seals, ms: a hand-over read from
 * Kafka takes well under a second, and the receiver seals when it arrives.
 */
const SHARED_SEAL_LEAD_MS = 5_000;

/** What a request to ClickHouse was for. */
export type RequestKind = "insert" | "check" | "version" | "repair";

/** One request's result, for logs and metrics. */
export interface FlushEvent {
  /** What the request was for. */
  kind: RequestKind;
  /** `"ok"`, or the failure's outcome: `"refused"`, `"too_large"`, `"rejected"`, `"unknown"`. */
  outcome: "ok" | ClickHouseError["outcome"];
  /** HTTP status, if a response came. */
  status?: number | undefined;
  /** Batch id, for insert/check/repair. */
  batchId?: bigint | undefined;
  /** Rows in the batch. */
  rows?: number | undefined;
  /** Body bytes. */
  bytes?: number | undefined;
  /** Request duration, ms. */
  durationMs: number;
  /** Earliest time (ms) of the next request. */
  nextSlotAt: number;
  /** Error message without payload, when not ok. */
  error?: string | undefined;
  /** The failure's {@linkcode ErrorCode}, e.g. `"timeout"`, when not ok. */
  code?: ErrorCode | undefined;
}

/** A batch confirmed stored. */
export interface Landing {
  /** Batch id. */
  batchId: bigint;
  /** Rows stored. */
  rows: number;
  /** Body bytes. */
  bytes: number;
  /** Age of the batch's oldest row when confirmed, ms. */
  latencyMs: number;
  /** How it was confirmed. */
  via: "insert" | "check";
}

/** Where a poison row came from in Kafka. */
export interface PoisonSource {
  /** Topic. */
  topic: string;
  /** Partition. */
  partition: number;
  /** Offset. */
  offset: bigint;
}

/** Live state for progress displays and metrics. */
export interface FlusherStatus {
  /** Earliest time (ms) of the next request. */
  nextSlotAt: number;
  /** Whether a request is on the wire. */
  inflight: boolean;
  /** ClickHouse server version, once known. */
  serverVersion: string | null;
  /** Result of the last request. */
  last: FlushEvent | null;
  /** Requests ch-proxy refused (503) in a row, 0 after any other answer. */
  refusalsInARow: number;
}

/** Options the flusher passes to a {@linkcode Packer}. */
export interface PackHints {
  /**
   * Encoding whose last body ClickHouse could not read; a packer that has
   * another encoding the server reads uses that one. Default: none.
   */
  avoidEncoding?: string | undefined;
}

/** Builds a batch body from a prefix of `rows`, with `batchId` in every row. */
export type Packer = (
  rows: HttpLogRow[],
  batchId: bigint,
  serverVersion: string,
  hints?: PackHints,
) => PackResult | Promise<PackResult>;

/**
 * A failure of the whole stream rather than of one row: the flusher keeps the
 * batch and retries it each slot instead of dead-lettering rows.
 */
export interface SystemicFailure {
  /**
   * `"body_rejected"`: ClickHouse could not read the body (corrupted,
   * truncated, failed checksum or decompression, or a setting it rejects).
   * `"breaker"`: bisecting a rejected batch found rejected rows in more
   * separate groups than {@linkcode BISECTION_BREAKER_SHARE} of its rows.
   */
  cause: "body_rejected" | "breaker";
  /** The batch kept. */
  batchId: bigint;
  /** ClickHouse exception code, when the server sent one. */
  serverCode?: number | undefined;
}

/**
 * Largest share of a rejected batch's rows that bisection may dead-letter:
 * 0.1%, and at least one row. One bad row costs one dead letter; rejected
 * rows in more separate groups than that point to a systemic cause (a schema
 * change, a server bug or setting) that an operator should fix rather than
 * lose the stream to the dead-letter topic. Halves are sent breadth first, so
 * the count of groups known to hold a rejected row grows before any single row
 * is reached: the breaker usually trips with nothing dead-lettered, after
 * 2 to 4 × the limit requests (37 when every row of a full 18,750-row batch
 * is rejected: its limit is 18 rows).
 *
 * @example
 * ```ts
 * import { BISECTION_BREAKER_SHARE } from "./flusher.ts";
 * import assert from "node:assert/strict";
 *
 * // A full 18,750-row batch may lose at most 18 rows to bisection.
 * assert.equal(Math.floor(18_750 * BISECTION_BREAKER_SHARE), 18);
 * ```
 */
export const BISECTION_BREAKER_SHARE = 0.001;

/** The bisection of one rejected batch, across the groups it was split into. */
interface Bisection {
  /** Rows of the batch first rejected. */
  rows: number;
  /** Ids of disjoint groups known to hold at least one rejected row. */
  suspects: Set<string>;
}

/** Options of {@linkcode Flusher}. */
export interface FlusherOptions {
  /** Builds request bodies. Required in practice; default: none (throws on first seal). */
  pack?: Packer;
  /** ClickHouse database holding `http_log`. Default: `"default"`. */
  database?: string;
  /** Minimum spacing between accepted requests, ms. Default: `62_500` (stock ch-proxy). */
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
   * How an unknown outcome is resolved: `"check"` spends a slot on one
   * SELECT by batch id; `"token"` resends with `insert_deduplication_token`
   * (needs the deduplication windows migrate creates on 23.3+); `"auto"`
   * picks `"token"` on 23.3 and later.
   * Default: `"auto"`.
   */
  dedup?: "auto" | "check" | "token";
  /** Rows offered to the packer for the first seal; later seals size this from the last batch. Default: `40_000`. */
  candidateRows?: number;
  /** Largest request body, bytes, to size later seals. Default: `1_048_576`. */
  bodyLimit?: number;
  /** Called after every request. Default: none. */
  onEvent?: (event: FlushEvent) => void;
  /** Called when a batch is confirmed stored, by its INSERT or by a check. Default: none. */
  onLanded?: (landing: Landing) => void;
  /** Called when a single row is rejected as poison and must be dead-lettered. Default: none (kept and retried). */
  onPoisonRow?: (row: HttpLogRow, error: ClickHouseError, source: PoisonSource) => Promise<void>;
  /** Called when a batch is kept as a systemic failure instead of being bisected or dead-lettered. Default: none. */
  onSystemicFailure?: (failure: SystemicFailure) => void;
  /**
   * Which slots this instance may use when it shares ch-proxy's address with
   * the rest of its consumer group. Default: a schedule with sharing `off`.
   */
  slotSchedule?: SlotSchedule;
  /** Publishes a slot this instance handed to the next member of its group. Default: none (the slot goes unused). */
  onSlotYield?: (y: SlotYield) => void;
  /** Clock. Default: `Date.now`. */
  now?: () => number;
}

/**
 * Sends sealed batches, paced for ch-proxy.
 *
 * @example Start, then stop with a grace period
 * ```ts
 * import { Flusher } from "./flusher.ts";
 * import { openQueue } from "./queue/kv_queue.ts";
 * import { ClickHouseClient } from "./sink/clickhouse/clickhouse_client.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await using queue = await openQueue(`${dir}/q.sqlite3`);
 * // Nothing is queued, so nothing is sent; the version check waits for its slot.
 * await queue.setServer({ version: "18.16.1", checkedAt: Date.now() });
 * const flusher = new Flusher(queue, new ClickHouseClient("http://127.0.0.1:8124"));
 * flusher.start();
 * await flusher.stop({ graceMs: 1_000 });
 * assert.equal(flusher.status().inflight, false);
 * ```
 */
export class Flusher {
  readonly #queue: KvQueue;
  readonly #client: ClickHouseClient;
  readonly #opts: Required<
    Omit<
      FlusherOptions,
      | "pack"
      | "onEvent"
      | "onLanded"
      | "onPoisonRow"
      | "onSystemicFailure"
      | "slotSchedule"
      | "onSlotYield"
    >
  >;
  readonly #onLanded: FlusherOptions["onLanded"];
  readonly #pack: Packer | undefined;
  readonly #onEvent: ((event: FlushEvent) => void) | undefined;
  readonly #onPoisonRow: FlusherOptions["onPoisonRow"];
  readonly #onSystemicFailure: FlusherOptions["onSystemicFailure"];
  readonly #schedule: SlotSchedule;
  readonly #onSlotYield: FlusherOptions["onSlotYield"];
  /** Encoding of the last body ClickHouse could not read; the packer tries another. */
  #avoidEncoding: string | undefined;
  /**
   * Bisections under way, by the id of every group rejected so far. Kept in
   * memory only: after a restart the group being bisected counts as a new batch.
   */
  #bisections = new Map<string, Bisection>();
  #stopping = false;
  #loop: Promise<void> | null = null;
  #wakers = new Set<() => void>();
  /** A wake that came while the loop was not sleeping (e.g. sealing): the next sleep ends at once. */
  #woken = false;
  #inflight: AbortController | null = null;
  #lastRefusedAt: number | null = null;
  #status: FlusherStatus = {
    nextSlotAt: 0,
    inflight: false,
    serverVersion: null,
    last: null,
    refusalsInARow: 0,
  };
  /** The batch whose unknown outcome is being resolved, and the slots spent on it so far. */
  #resolving: { id: bigint; slots: number } | null = null;
  #bytesPerRow = 0;
  #profile: ServerProfile | null = null;

  /** A flusher for `queue`, sending through `client` (pointed at ch-proxy). */
  constructor(queue: KvQueue, client: ClickHouseClient, options: FlusherOptions = {}) {
    this.#queue = queue;
    this.#client = client;
    this.#pack = options.pack;
    this.#onEvent = options.onEvent;
    this.#onPoisonRow = options.onPoisonRow;
    this.#onSystemicFailure = options.onSystemicFailure;
    this.#onLanded = options.onLanded;
    this.#schedule = options.slotSchedule ?? new SlotSchedule({ sharing: "off" });
    this.#onSlotYield = options.onSlotYield;
    this.#opts = {
      database: options.database ?? "default",
      spacingMs: options.spacingMs ?? 62_500,
      marginMs: options.marginMs ?? 750,
      refusalRetryMs: options.refusalRetryMs ?? 5_000,
      sealLeadMs: options.sealLeadMs ?? 1_500,
      dedup: options.dedup ?? "auto",
      candidateRows: options.candidateRows ?? 40_000,
      bodyLimit: options.bodyLimit ?? 1_048_576,
      now: options.now ?? Date.now,
    };
  }

  /** Live state. */
  status(): FlusherStatus {
    return { ...this.#status };
  }

  /** Starts the send loop. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** Ends any wait early: new owned rows, or the cron watchdog. */
  wake(): void {
    if (this.#wakers.size === 0) this.#woken = true;
    for (const w of this.#wakers) w();
    this.#wakers.clear();
  }

  /**
   * Stops the loop. A request on the wire may finish within `graceMs`;
   * after that it is aborted, and its batch is resolved after the next start
   * as an unknown outcome.
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
        await this.#sleep(Math.min(30_000, 500 * 2 ** failures));
      }
    }
  }

  async #recoverInflight(): Promise<void> {
    const pacer = await this.#queue.pacer();
    if (pacer.inflightSince !== null) {
      log.info(
        "A request was on the wire since {since} when the process stopped; counting its proxy slot as used",
        { since: new Date(pacer.inflightSince).toISOString() },
      );
      // The process died with a request on the wire: it may have used the slot.
      await this.#queue.setPacer({
        lastConsumedAt: Math.max(pacer.lastConsumedAt ?? 0, pacer.inflightSince),
        inflightSince: null,
      });
    }
    const cached = (await this.#queue.server())?.version;
    if (cached !== undefined) this.#learnVersion(cached);
  }

  /**
   * Takes the server's version, or refuses it: a release anonymizer does not
   * know gets no request but the next version check, so no batch can take a
   * wrong path. Returns whether the version is usable.
   */
  #learnVersion(version: string): boolean {
    try {
      this.#profile = serverProfile(version);
    } catch (err) {
      if (!(err instanceof UnsupportedServerError)) throw err;
      this.#profile = null;
      this.#status.serverVersion = null;
      log.error("{error}; rows stay queued, and the version is checked again in 10 minutes", {
        error: err.message,
        url: this.#client.url,
      });
      return false;
    }
    this.#status.serverVersion = this.#profile.version;
    if (this.#opts.dedup === "token" && !this.#profile.modern) {
      log.error(
        "CLICKHOUSE_DEDUP=token needs ClickHouse 23.3 or later, but the server is {version}; " +
          "unknown outcomes are resolved with a check instead",
        { version: this.#profile.version },
      );
    }
    return true;
  }

  /** The next slot this instance may use, or `null` while the group's slots are unknown. */
  async #slot(): Promise<number | null> {
    const pacer = await this.#queue.pacer();
    const own = nextSlotAt({ ...pacer, lastRefusedAt: this.#lastRefusedAt }, this.#opts);
    const at = this.#schedule.slotAt(own);
    this.#status.nextSlotAt = at ?? own;
    return at;
  }

  /**
   * Waits until `leadMs` before the next usable slot and returns its start,
   * or `null` if stopping. A slot counts only if it is still this instance's
   * when the wait ends: the group may have changed meanwhile.
   */
  async #untilSlot(leadMs = 0): Promise<number | null> {
    for (;;) {
      const at = await this.#slot();
      if (at === null) {
        if (this.#stopping) return null;
        await this.#sleep(1_000);
        continue;
      }
      if (!await this.#sleepUntil(at - leadMs)) return null;
      if (this.#schedule.mayUse(at)) return at;
    }
  }

  async #step(): Promise<void> {
    if (this.#status.serverVersion === null) {
      if (await this.#untilSlot() === null) return;
      // The format is named: a server's default output format is its own setting.
      const text = await this.#paced(
        "version",
        {},
        (signal) =>
          this.#client.query("SELECT version() FORMAT TabSeparated", {
            signal,
            what: "version check",
          }),
      );
      if (text === null) return;
      if (!this.#learnVersion(text)) {
        await this.#sleep(600_000);
        return;
      }
      await this.#queue.setServer({ version: this.#profile!.version, checkedAt: this.#opts.now() });
      return;
    }
    let batch = await this.#queue.batch();
    if (batch === null) {
      // Seal as late as possible so the batch carries everything queued by its slot.
      // Shared slots are sealed earlier: an empty one is handed on, and the
      // next member needs time to seal its own batch for it.
      const shared = this.#schedule.members.length > 1;
      const at = await this.#untilSlot(shared ? SHARED_SEAL_LEAD_MS : this.#opts.sealLeadMs);
      if (at === null) return;
      batch = await this.#seal();
      if (batch === null) {
        const y = this.#schedule.giveAway(at);
        if (y !== null) this.#onSlotYield?.(y);
        // Alone, a new row wakes the loop; shared, the next held slot is looked at again.
        if (!shared) await this.#sleep(60_000);
        return;
      }
    }
    if (await this.#untilSlot() === null) return;
    // A 413 after an unknown outcome is resolved by a check even with tokens:
    // splitting gives the rows new batch ids, so a landed attempt would land twice.
    const check = this.#strategy() === "check" || batch.tooLarge === true;
    if (batch.state !== "sealed" && this.#resolving?.id !== batch.id) {
      this.#resolving = { id: batch.id, slots: 0 };
      log.info(
        "Batch {batchId} ({rows} rows, {attempts} sends) has an unknown outcome (state {state}: " +
          "{lastError}); resolving it by {how}",
        {
          batchId: String(batch.id),
          rows: batch.rows,
          attempts: batch.attempts,
          state: batch.state,
          lastError: batch.lastError ?? "the process stopped during the send",
          how: check
            ? "a check SELECT of its rows (one slot)"
            : "resending it with its insert_deduplication_token",
        },
      );
    }
    if (batch.state !== "sealed" && check) {
      await this.#check(batch);
    } else {
      await this.#insert(batch);
    }
  }

  #strategy(): DedupStrategy {
    // Tokens need the tables' deduplication windows, which migrate sets on modern servers only.
    if (this.#profile?.modern !== true) return "check";
    return this.#opts.dedup === "auto" ? "token" : this.#opts.dedup;
  }

  async #seal(): Promise<BatchMeta | null> {
    const pack = this.#pack;
    if (pack === undefined) throw new Error("Cannot seal a batch as no packer is configured");
    const version = this.#status.serverVersion!;
    const started = performance.now();
    const hints = { avoidEncoding: this.#avoidEncoding };
    const batch = await this.#queue.seal((rows, id) => pack(rows, id, version, hints), {
      // Decoding far more rows than fit costs memory and CPU on every seal; a quarter more
      // than the last batch's density suggests leaves room for variation.
      candidateRows: this.#bytesPerRow > 0
        ? Math.ceil((this.#opts.bodyLimit / this.#bytesPerRow) * 1.25)
        : this.#opts.candidateRows,
    });
    if (batch !== null) {
      // Isolated groups are sealed before any other rows, so a batch that is
      // not one ends every bisection.
      if (batch.isolated === false) this.#bisections.clear();
      this.#bytesPerRow = batch.bytes / batch.rows;
      log.debug("Sealed batch {batchId}: {rows} rows, {bytes} bytes in {ms} ms", {
        batchId: String(batch.id),
        rows: batch.rows,
        bytes: batch.bytes,
        ms: Math.round(performance.now() - started),
      });
    }
    return batch;
  }

  async #insert(batch: BatchMeta): Promise<void> {
    const prior = batch.state;
    const body = await this.#queue.body(batch);
    const { query: sql, ...params } = batch.query;
    // Lets a later check see whether ClickHouse is still running this INSERT.
    params.query_id = `anonymizer-batch-${batch.id}-${batch.attempts + 1}`;
    Object.assign(
      params,
      insertSettings(this.#profile!, { dedup: this.#strategy(), batchId: batch.id }),
    );
    await this.#queue.markSending(batch.id);
    log.debug("Sending INSERT of batch {batchId}: {rows} rows, {bytes} bytes, attempt {attempt}", {
      batchId: String(batch.id),
      rows: batch.rows,
      bytes: batch.bytes,
      attempt: batch.attempts + 1,
    });
    const started = this.#opts.now();
    try {
      await this.#paced("insert", batch, (signal) =>
        this.#client.query(sql!, {
          body,
          params,
          headers: batch.headers,
          signal,
          what: `INSERT of batch ${batch.id}`,
        }), true);
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
    } catch (err) {
      if (!(err instanceof ClickHouseError)) throw err;
      await this.#afterFailure(batch, prior, err);
    }
  }

  async #afterFailure(
    batch: BatchMeta,
    prior: BatchMeta["state"],
    err: ClickHouseError,
  ): Promise<void> {
    switch (err.outcome) {
      case "refused":
        await this.#queue.markState(batch.id, prior, err.message);
        return;
      case "unknown":
        await this.#queue.markState(batch.id, "unknown", err.message);
        return;
      case "too_large":
        if (prior !== "sealed") {
          log.warn(
            "ch-proxy refused batch {batchId} as too large after an attempt with an unknown " +
              "outcome; checking whether that attempt landed before splitting it",
            { batchId: String(batch.id), bytes: batch.bytes },
          );
          await this.#queue.markTooLarge(batch.id, err.message);
          return;
        }
        log.error(
          "ch-proxy refused batch {batchId} of {bytes} bytes as too large; re-splitting it. " +
            "Lower CLICKHOUSE_BODY_LIMIT to the proxy's client_max_body_size.",
          { batchId: String(batch.id), bytes: batch.bytes },
        );
        await this.#queue.unseal(batch.id, { groups: 2 });
        return;
      case "rejected":
        if (err.code === "body_rejected") {
          await this.#keepUnreadBody(batch, prior, err);
          return;
        }
        if (err.retriable || prior !== "sealed") {
          // Schema, auth or load trouble an operator can fix; the batch waits.
          await this.#queue.markState(batch.id, prior, err.message);
          return;
        }
        await this.#isolatePoison(batch, err);
        return;
    }
  }

  /**
   * Keeps a batch whose body ClickHouse could not read: no row is to blame,
   * so nothing is bisected. On a server that reads both encodings, the rows
   * are sealed again in the other one for the next slot; that is safe only
   * while no earlier attempt has an unknown outcome, as resealing changes the
   * batch id.
   */
  async #keepUnreadBody(
    batch: BatchMeta,
    prior: BatchMeta["state"],
    err: ClickHouseError,
  ): Promise<void> {
    const reencode = prior === "sealed" && this.#profile?.modern === true;
    log.error(
      "ClickHouse could not read the body of batch {batchId} ({encoding}, code {serverCode}): " +
        "the body or its transport is at fault, not a row, so nothing is dead-lettered; " +
        "{retry} at the next slot. Check the proxy and the server for corruption: {error}",
      {
        batchId: String(batch.id),
        encoding: batch.encoding,
        serverCode: err.serverCode ?? "-",
        retry: reencode ? "resealing its rows in another encoding" : "resending it",
        error: err.message,
      },
    );
    this.#onSystemicFailure?.({
      cause: "body_rejected",
      batchId: batch.id,
      serverCode: err.serverCode,
    });
    if (!reencode) {
      await this.#queue.markState(batch.id, prior, err.message);
      return;
    }
    this.#avoidEncoding = batch.encoding;
    const bisection = this.#bisectionOf(batch);
    if (bisection !== undefined) this.#bisections.set(String(batch.id), bisection);
    await this.#queue.unseal(batch.id, { groups: 1, isolate: batch.isolated !== false });
  }

  /** The bisection an isolated group belongs to, found by the id of the group it came from. */
  #bisectionOf(batch: BatchMeta): Bisection | undefined {
    if (batch.isolated === false) return undefined;
    return this.#bisections.get(batch.isolated.split(":")[0]!);
  }

  /**
   * Bisects a batch ClickHouse rejected as bad data: halves are sealed alone
   * until a single row is left, which is dead-lettered. Each step costs a slot,
   * so up front validation keeps this rare. The breaker holds the batch
   * instead once rejected rows sit in more separate groups than
   * {@linkcode BISECTION_BREAKER_SHARE} of the first batch's rows.
   */
  async #isolatePoison(batch: BatchMeta, err: ClickHouseError): Promise<void> {
    const parent = batch.isolated === false ? undefined : batch.isolated.split(":")[0]!;
    const bisection = this.#bisectionOf(batch) ?? { rows: batch.rows, suspects: new Set() };
    // The group replaces the one it came from: both hold the same rejected row.
    if (parent !== undefined) bisection.suspects.delete(parent);
    bisection.suspects.add(String(batch.id));
    this.#bisections.set(String(batch.id), bisection);
    const limit = Math.max(1, Math.floor(bisection.rows * BISECTION_BREAKER_SHARE));
    if (bisection.suspects.size > limit) {
      log.error(
        "Holding batch {batchId} ({rows} rows) as a systemic failure: ClickHouse rejected rows in " +
          "{groups} separate groups of a {batchRows}-row batch, more than the {limit} rows " +
          "bisection may dead-letter. Fix the cause (schema, server settings or version); " +
          "the batch is retried each slot: {error}",
        {
          batchId: String(batch.id),
          rows: batch.rows,
          groups: bisection.suspects.size,
          batchRows: bisection.rows,
          limit,
          error: err.message,
        },
      );
      this.#onSystemicFailure?.({
        cause: "breaker",
        batchId: batch.id,
        serverCode: err.serverCode,
      });
      await this.#queue.markState(batch.id, "sealed", err.message);
      return;
    }
    if (batch.rows > 1) {
      log.warn("ClickHouse rejected batch {batchId} ({rows} rows); bisecting: {error}", {
        batchId: String(batch.id),
        rows: batch.rows,
        error: err.message,
      });
      await this.#queue.unseal(batch.id, { groups: 2, isolate: true });
      return;
    }
    if (this.#onPoisonRow === undefined) {
      await this.#queue.markState(batch.id, "sealed", err.message);
      return;
    }
    const { rows, offsets, partitions } = await this.#queue.batchEntries(batch);
    await this.#onPoisonRow(rows[0]!, err, {
      topic: batch.topic,
      partition: partitions[0]!,
      offset: offsets[0]!,
    });
    await this.#queue.discard(batch.id);
    log.error("Dead-lettered one row ClickHouse rejected from batch {batchId}: {error}", {
      batchId: String(batch.id),
      error: err.message,
    });
  }

  async #check(batch: BatchMeta): Promise<void> {
    const db = this.#opts.database;
    // One request answers both: rows stored, and INSERTs of this batch still running
    // (a check that raced a slow INSERT would otherwise see 0 and resend).
    const sql =
      `SELECT (SELECT count() FROM ${db}.http_log WHERE timestamp >= toDateTime(${batch.minTimestamp}) ` +
      `AND timestamp <= toDateTime(${batch.maxTimestamp}) AND batch_id = ${batch.id}), ` +
      `(SELECT count() FROM system.processes WHERE startsWith(query_id, 'anonymizer-batch-${batch.id}-')) ` +
      `FORMAT TabSeparated`;
    const text = await this.#paced(
      "check",
      batch,
      (signal) => this.#client.query(sql, { signal, what: `check of batch ${batch.id}` }),
    );
    if (text === null) return;
    const [stored, running] = text.trim().split("\t").map(Number) as [number, number];
    if (running > 0) {
      log.warn(
        "Batch {batchId}: its INSERT is still running in ClickHouse; checking again next slot",
        {
          batchId: String(batch.id),
        },
      );
      return;
    }
    const slots = this.#resolving?.id === batch.id ? this.#resolving.slots : 1;
    if (stored === batch.rows) {
      log.info(
        "Batch {batchId} was stored before its outcome was lost; not resending: unknown " +
          "outcome resolved by check, all {rows} rows stored; it cost {slots} slots",
        { batchId: String(batch.id), rows: batch.rows, slots },
      );
      this.#resolving = null;
      await this.#queue.markLanded(batch.id);
      this.#emitLanded(batch, this.#opts.now(), "check");
    } else if (stored === 0) {
      log.info(
        "Batch {batchId}: unknown outcome resolved by check: none of its {rows} rows were " +
          "stored; sending it again next slot (split in two if it was too large); the check " +
          "cost {slots} slots",
        { batchId: String(batch.id), rows: batch.rows, slots },
      );
      this.#resolving = null;
      await this.#resendOrSplit(batch);
    } else {
      log.error(
        "Batch {batchId} is partly stored ({stored} of {rows} rows); deleting it to resend",
        {
          batchId: String(batch.id),
          stored,
          rows: batch.rows,
        },
      );
      const done = await this.#paced(
        "repair",
        batch,
        (signal) =>
          this.#client.query(`ALTER TABLE ${db}.http_log DELETE WHERE batch_id = ${batch.id}`, {
            signal,
            what: `repair of batch ${batch.id}`,
          }),
      );
      if (done !== null) {
        log.info(
          "Batch {batchId}: unknown outcome resolved by repair: deleted {stored} partly stored " +
            "rows; sending it again next slot (split in two if it was too large); check and " +
            "repair cost {slots} slots",
          { batchId: String(batch.id), stored, slots: slots + 1 },
        );
        this.#resolving = null;
        await this.#resendOrSplit(batch);
      }
    }
  }

  /** After a check found none of its rows stored, a batch is resent, or split if it was too large. */
  async #resendOrSplit(batch: BatchMeta): Promise<void> {
    if (batch.tooLarge !== true) {
      await this.#queue.markState(batch.id, "sealed");
      return;
    }
    log.error(
      "ch-proxy refused batch {batchId} of {bytes} bytes as too large, and none of its rows are " +
        "stored now; re-splitting it. Lower CLICKHOUSE_BODY_LIMIT to the proxy's " +
        "client_max_body_size.",
      { batchId: String(batch.id), bytes: batch.bytes },
    );
    await this.#queue.unseal(batch.id, { groups: 2 });
  }

  #emitLanded(batch: BatchMeta, started: number, via: Landing["via"]): void {
    const latencyMs = this.#opts.now() - batch.oldestEnqueuedAt;
    this.#onLanded?.({ batchId: batch.id, rows: batch.rows, bytes: batch.bytes, latencyMs, via });
    log.info(
      "Flushed batch {batchId}: {rows} rows, {bytes} bytes, outcome ok, next slot in {nextSlotS} s",
      {
        batchId: String(batch.id),
        rows: batch.rows,
        bytes: batch.bytes,
        outcome: "ok",
        durationMs: this.#opts.now() - started,
        nextSlotS: Math.max(0, Math.round((this.#status.nextSlotAt - this.#opts.now()) / 1000)),
        latencyMs,
      },
    );
  }

  /**
   * Sends one request in a proxy slot. The send time is recorded in KV
   * before the request leaves, so a crash cannot make the next start reuse
   * the slot. Returns `null` on failure (already reported).
   */
  async #paced<T>(
    kind: RequestKind,
    batch: Partial<BatchMeta>,
    send: (signal: AbortSignal) => Promise<T>,
    rethrow = false,
  ): Promise<T | null> {
    this.#inflight = new AbortController();
    this.#status.inflight = true;
    const started = performance.now();
    const signal = this.#inflight.signal;
    try {
      const r = await pacedRequest(this.#queue, () => send(signal), { now: this.#opts.now });
      if ((r.ok || r.slotUsed) && this.#resolving !== null && this.#resolving.id === batch.id) {
        this.#resolving.slots++;
      }
      this.#countRefusal(r.ok ? null : r.error);
      const pacer = await this.#queue.pacer();
      if (r.ok) {
        this.#lastRefusedAt = null;
        this.#report(kind, batch, started, null, pacer);
        return r.value;
      }
      if (!r.slotUsed) this.#lastRefusedAt = this.#opts.now();
      this.#report(kind, batch, started, r.error, pacer);
      if (rethrow) throw r.error;
      return null;
    } finally {
      this.#inflight = null;
      this.#status.inflight = false;
    }
  }

  /**
   * Keeps the count of refusals in a row; at the third, logs the one error
   * that says what an operator can do about them.
   */
  #countRefusal(err: ClickHouseError | null): void {
    // A refused connection is an outage, not a neighbour on the proxy's limit.
    if (err?.outcome !== "refused" || err.status !== 503) {
      this.#status.refusalsInARow = 0;
      return;
    }
    this.#status.refusalsInARow++;
    if (this.#status.refusalsInARow !== REFUSALS_BEFORE_DIAGNOSIS) return;
    log.error(
      "ch-proxy refused {refusals} requests in a row: another client probably shares the " +
        "proxy's per-IP limit, or CLICKHOUSE_SPACING_MS={spacingMs} is shorter than the proxy's " +
        "spacing (stock ch-proxy: 62500). Give other clients another source IP, or raise " +
        "CLICKHOUSE_SPACING_MS to the proxy's rate",
      { refusals: this.#status.refusalsInARow, spacingMs: this.#opts.spacingMs },
    );
  }

  #report(
    kind: RequestKind,
    batch: Partial<BatchMeta>,
    started: number,
    err: ClickHouseError | null,
    pacer: { lastConsumedAt: number | null },
  ): void {
    const at = nextSlotAt(
      {
        lastConsumedAt: pacer.lastConsumedAt,
        inflightSince: null,
        lastRefusedAt: this.#lastRefusedAt,
      },
      this.#opts,
    );
    this.#status.nextSlotAt = at;
    const event: FlushEvent = {
      kind,
      outcome: err === null ? "ok" : err.outcome,
      status: err === null ? 200 : err.status,
      batchId: batch.id,
      rows: batch.rows,
      bytes: batch.bytes,
      durationMs: Math.round(performance.now() - started),
      nextSlotAt: at,
      error: err?.message,
      code: err?.code,
    };
    this.#status.last = event;
    if (err !== null) {
      log.warn(
        "Request {kind} for batch {batchId} failed ({outcome}); next slot in {nextSlotS} s: {error}",
        {
          kind,
          batchId: String(batch.id ?? "-"),
          outcome: err.outcome,
          status: err.status,
          nextSlotS: Math.max(0, Math.round((at - this.#opts.now()) / 1000)),
          error: err.message,
        },
      );
    }
    this.#onEvent?.(event);
  }

  /** Sleeps until `at` (ms). Returns `false` if stopping. */
  async #sleepUntil(at: number): Promise<boolean> {
    for (;;) {
      if (this.#stopping) return false;
      const wait = at - this.#opts.now();
      if (wait <= 0) return true;
      // A wake ends the sleep early; the loop keeps waiting for the slot.
      await this.#sleep(wait);
    }
  }

  #sleep(ms: number): Promise<void> {
    if (this.#woken) {
      this.#woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wakers.add(done);
    });
  }

  /** Average body bytes per row of the last sealed batch, 0 before the first. */
  get bytesPerRow(): number {
    return this.#bytesPerRow;
  }
}
