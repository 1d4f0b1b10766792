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
 *   whole slot (spacing + margin) apart, so any clock skew below the margin
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
 *
 * @module
 */
import { sharedSlotAt } from "./_shared_slot.ts";

/** The consumer group as one member last saw it. */
export interface GroupView {
  /** Member ids of the group, in any order. */
  members: readonly string[];
  /** This instance's member id; one of `members`. */
  self: string;
}

/** How instances share the proxy address: `off` (each alone) or `group`. */
export type SlotSharing = "off" | "group";

/** Options of {@linkcode SlotSchedule}. */
export interface SlotScheduleOptions {
  /** `group` shares slots with the consumer group; `off` paces as if alone. Default: `"group"`. */
  sharing?: SlotSharing;
  /** Minimum spacing between accepted requests, ms. Default: `62_500` (stock ch-proxy). */
  spacingMs?: number;
  /** Safety margin added to the spacing, ms; the clock skew tolerated between members. Default: `750`. */
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
  guardUntil: number;
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
  #lastHeartbeat = -Infinity;
  #current: Current | null = null;
  #hadView = false;

  /** A schedule with no group view yet. */
  constructor(options: SlotScheduleOptions = {}) {
    this.#sharing = options.sharing ?? "group";
    this.#slotMs = (options.spacingMs ?? 62_500) + (options.marginMs ?? 750);
    this.#now = options.now ?? Date.now;
    this.#leaseMs = options.leaseMs ?? 15_000;
  }

  /** `group` or `off`. */
  get sharing(): SlotSharing {
    return this.#sharing;
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
      guardUntil: guarded ? this.#now() + this.#slotMs : 0,
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
    const current = this.#current;
    if (current === null) return null;
    // A member the coordinator may have dropped must not use slots the others now share.
    if (this.#now() - this.#lastHeartbeat > this.#leaseMs) return null;
    // A slot already past is gone: sending now would land between two grid points.
    const from = Math.max(earliest, current.guardUntil, this.#now());
    // Alone in the group: the grid would only add waiting.
    if (current.count === 1) return from;
    return sharedSlotAt(from, current.index, current.count, this.#slotMs);
  }
}
