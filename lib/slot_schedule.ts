/**
 * Which ch-proxy slots this instance may use when several instances of one
 * consumer group reach ClickHouse from one source address.
 *
 * ch-proxy limits requests per client address, so instances behind one NAT
 * share one accepted request per 62.5 s. Each instance keeps its own pacing
 * state (lib/pacer.ts) for its own requests; the schedule adds the shared
 * part: the members, sorted by Kafka member id, take turns on a slot grid
 * anchored at the Unix epoch, slot `k` going to member `k mod N`.
 *
 * Why no two members send within one spacing:
 * - Within one view, members send only at their own grid points, which are a
 *   whole slot (spacing + margin) apart, and at most 250 ms late, so a clock
 *   skew between members up to the margin minus 250 ms (500 ms by default)
 *   keeps accepted requests ≥ 62.5 s apart.
 * - When the group changes, a member stops sending when it learns that a
 *   rebalance started, and the rebalance completes only after every member
 *   that stays has rejoined. So every send under the old view happened before
 *   completion. A member learns the new view after completion and waits one
 *   whole slot before its first send under it (the guard). Only the first
 *   view of an instance alone in its group skips the guard: it has no earlier
 *   view, and a fresh start of a single instance should not wait a minute.
 * - A killed member sends nothing; the group removes it after the Kafka session
 *   timeout, and the others take its slots after the guard. A live member
 *   whose heartbeats stop (a stalled process, a link to Kafka cut) stops
 *   sending half a session timeout after its last answered heartbeat, before
 *   the coordinator can drop it.
 * - A member that is not in the group (starting, rebalancing, cut off from
 *   Kafka) sends nothing: it cannot know which slots are free.
 * - A member with nothing to send in a slot it holds gives it to the next
 *   member in id order ({@linkcode SlotSchedule.giveAway}), which uses it or
 *   passes it on in turn. The slot is a token: the giver never sends in a slot
 *   it gave, the receiver sends only in a slot handed to it under the same
 *   view, and it never returns to its owner, so at most one member sends in
 *   any slot. A hand-over that arrives late or is lost only leaves the slot
 *   unused.
 *
 * @module
 */
import { slotOwner } from "./_shared_slot.ts";

/**
 * How late after its start a shared slot may still be used, ms: a third of
 * the margin, at least 100 and at most 250. Lateness and clock skew between
 * members share the margin.
 */
function lateMs(marginMs: number): number {
  return Math.min(250, Math.max(100, marginMs / 3));
}

/** The consumer group as one member last saw it. */
export interface GroupView {
  /** Member ids of the group, in any order. */
  members: readonly string[];
  /** This instance's member id; one of `members`. */
  self: string;
}

/**
 * A slot handed to the next member of the group by one that has nothing to
 * send in it.
 */
export interface SlotYield {
  /** The view it was given under: {@linkcode SlotSchedule.viewKey}. */
  view: string;
  /** Start of the slot, ms since the epoch. */
  at: number;
  /** Member id of the giver. */
  from: string;
}

/** How instances share the proxy address: `off` (each alone) or `group`. */
export type SlotSharing = "off" | "group";

/** Options of {@linkcode SlotSchedule}. */
export interface SlotScheduleOptions {
  /** `group` shares slots with the consumer group; `off` paces as if alone. Default: `"group"`. */
  sharing?: SlotSharing;
  /** Minimum spacing between accepted requests, ms. Default: `62_500` (stock ch-proxy). */
  spacingMs?: number;
  /** Safety margin added to the spacing, ms; covers clock skew between members and a late send. Default: `750`. */
  marginMs?: number;
  /**
   * How long after its last heartbeat a member may still send, ms. The
   * coordinator drops a member that has not heartbeated for the session
   * timeout, and the others then take its slots; half of it leaves room for
   * the time a heartbeat takes to be answered. Default: `15_000` (half the
   * default session timeout of 30 s).
   */
  leaseMs?: number;
  /** Clock, ms since the epoch. Default: `Date.now`. */
  now?: () => number;
}

/** The view in force and when this member learned it. */
interface Current {
  index: number;
  count: number;
  members: readonly string[];
  key: string;
  guardUntil: number;
  /** Slots handed to this member, not yet used or passed on. */
  received: Set<number>;
  /** Slots this member gave up; it never sends in them. */
  given: Set<number>;
}

/**
 * The slots this instance may use. The Kafka source feeds it the group view;
 * the flusher asks it for the start of the next usable slot.
 *
 * @example Two members take turns
 * ```ts
 * import { SlotSchedule } from "./slot_schedule.ts";
 * import assert from "node:assert/strict";
 *
 * let now = 0;
 * const schedule = new SlotSchedule({ now: () => now });
 * assert.equal(schedule.slotAt(0), null); // not in the group yet
 * schedule.setView({ members: ["b", "a"], self: "b" });
 * // Member "b" is second in id order: it owns odd slots, after a one-slot guard.
 * assert.equal(schedule.slotAt(0), 63_250);
 * now = 200_000;
 * schedule.heartbeat(); // the Kafka source reports each answered heartbeat
 * assert.equal(schedule.slotAt(now), 316_250);
 * ```
 */
export class SlotSchedule {
  readonly #sharing: SlotSharing;
  readonly #slotMs: number;
  readonly #now: () => number;
  readonly #leaseMs: number;
  readonly #lateMs: number;
  readonly #marginMs: number;
  #lastHeartbeat = -Infinity;
  #current: Current | null = null;
  #hadView = false;

  /** A schedule with no group view yet. */
  constructor(options: SlotScheduleOptions = {}) {
    this.#sharing = options.sharing ?? "group";
    this.#slotMs = (options.spacingMs ?? 62_500) + (options.marginMs ?? 750);
    this.#now = options.now ?? Date.now;
    this.#leaseMs = options.leaseMs ?? 15_000;
    this.#marginMs = options.marginMs ?? 750;
    this.#lateMs = lateMs(this.#marginMs);
  }

  /** `group` or `off`. */
  get sharing(): SlotSharing {
    return this.#sharing;
  }

  /** Identifies the view in force in hand-overs; `""` while not in the group. */
  get viewKey(): string {
    return this.#current?.key ?? "";
  }

  /** Member ids of the view in force, sorted; empty while not in the group. */
  get members(): readonly string[] {
    return this.#current?.members ?? [];
  }

  /**
   * Records the group as it is after a rebalance, or `null` when a rebalance
   * started or the membership was lost.
   */
  setView(view: GroupView | null): void {
    if (view === null) {
      this.#current = null;
      return;
    }
    const members = [...new Set(view.members)].sort();
    const index = members.indexOf(view.self);
    if (index < 0) {
      throw new RangeError(
        `Cannot share ch-proxy slots as this member is not in the group: current value is ${
          JSON.stringify(view.self)
        }, members are ${JSON.stringify(members)}`,
      );
    }
    // The first view of a lone member needs no guard: no earlier view of this process sent.
    const guarded = this.#hadView || members.length > 1;
    this.#hadView = true;
    this.#current = {
      index,
      count: members.length,
      members,
      key: members.join(" "),
      guardUntil: guarded ? this.#now() + this.#slotMs : 0,
      received: new Set(),
      given: new Set(),
    };
    this.heartbeat();
  }

  /** Records that the group coordinator still counts this member in. */
  heartbeat(): void {
    this.#lastHeartbeat = this.#now();
  }

  /**
   * The start (ms since the epoch) of the first slot at or after `earliest`
   * that this instance may use, or `null` while it may use none (sharing is
   * on and it is not in the group, or its membership may have lapsed).
   */
  slotAt(earliest: number): number | null {
    if (this.#sharing === "off") return earliest;
    const current = this.#usable();
    if (current === null) return null;
    // Alone in the group: the grid would only add waiting.
    if (current.count === 1) return Math.max(earliest, current.guardUntil);
    // `earliest` adds the margin to this member's own last request, but grid
    // points are a whole slot apart already: the margin there is for the
    // other members' clocks, and keeping it here would skip a slot handed
    // over right after an own one.
    const from = Math.max(earliest - this.#marginMs, current.guardUntil);
    // A slot already under way is gone: a late send would eat into the next member's margin.
    let at = Math.ceil(Math.max(from, this.#now() - this.#lateMs) / this.#slotMs) * this.#slotMs;
    // Ends: slots given up are finitely many, and every count-th slot is this member's.
    while (!this.#holds(current, at)) at += this.#slotMs;
    return at;
  }

  /**
   * Whether the slot starting at `at` (from {@linkcode SlotSchedule.slotAt})
   * may be used now: the view that gave it still holds, this instance holds
   * the slot, and the send is not so late that it would crowd the next member.
   */
  mayUse(at: number): boolean {
    if (this.#sharing === "off") return true;
    const current = this.#usable();
    if (current === null || at < current.guardUntil) return false;
    if (current.count === 1) return true;
    return this.#holds(current, at) && this.#now() - at <= this.#lateMs;
  }

  /**
   * Gives up the slot at `at`, which this instance holds but has nothing to
   * send in, to the next member. Returns the hand-over to publish, or `null`
   * when there is nobody to give it to (alone, or every other member passed
   * it on already). Either way this instance will not send in it.
   */
  giveAway(at: number): SlotYield | null {
    const current = this.#current;
    if (this.#sharing === "off" || current === null || current.count === 1) return null;
    if (!this.#holds(current, at)) return null;
    current.given.add(at);
    current.received.delete(at);
    const next = (current.index + 1) % current.count;
    if (next === slotOwner(at, current.count, this.#slotMs)) return null;
    return { view: current.key, at, from: current.members[current.index]! };
  }

  /**
   * Takes note of a hand-over read from the group's channel. Returns `true`
   * when it gave this instance a slot, so the flusher should look again.
   */
  receive(y: SlotYield): boolean {
    const current = this.#current;
    if (current === null || y.view !== current.key || current.given.has(y.at)) return false;
    const giver = current.members.indexOf(y.from);
    if (giver < 0 || (giver + 1) % current.count !== current.index) return false;
    if (slotOwner(y.at, current.count, this.#slotMs) === current.index) return false;
    // Hand-overs for slots long past are of no use; keeping them would only grow the set.
    for (const old of current.received) {
      if (old < this.#now() - this.#slotMs) current.received.delete(old);
    }
    for (const old of current.given) {
      if (old < this.#now() - this.#slotMs) current.given.delete(old);
    }
    current.received.add(y.at);
    return true;
  }

  #holds(current: Current, at: number): boolean {
    if (current.given.has(at)) return false;
    return slotOwner(at, current.count, this.#slotMs) === current.index || current.received.has(at);
  }

  #usable(): Current | null {
    // A member the coordinator may have dropped must not use slots the others now share.
    if (this.#now() - this.#lastHeartbeat > this.#leaseMs) return null;
    return this.#current;
  }
}
