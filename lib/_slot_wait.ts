/**
 * How the flusher waits for a slot: its own pacing, then the slots it may use
 * when it shares the proxy's address with its consumer group.
 *
 * @module
 */
import type { Alarm, Clock } from "./_clock.ts";
import type { Pacer } from "./pacer.ts";
import type { SlotSchedule } from "./slot_schedule.ts";

/** Waits for slots; stops waiting once `stopping()` holds. */
export class SlotWait {
  readonly #pacer: Pacer;
  readonly #schedule: SlotSchedule;
  readonly #alarm: Alarm;
  readonly #clock: Clock;
  readonly #stopping: () => boolean;
  /** The earliest time (ms) of the next request, as last computed. */
  nextSlotAt = 0;

  constructor(
    parts: { pacer: Pacer; schedule: SlotSchedule; alarm: Alarm; clock: Clock },
    stopping: () => boolean,
  ) {
    this.#pacer = parts.pacer;
    this.#schedule = parts.schedule;
    this.#alarm = parts.alarm;
    this.#clock = parts.clock;
    this.#stopping = stopping;
  }

  /** The next slot this instance may use, or `null` while the group's slots are unknown. */
  async next(): Promise<number | null> {
    const own = await this.#pacer.nextSlot();
    const at = this.#schedule.slotAt(own);
    this.nextSlotAt = at ?? own;
    return at;
  }

  /**
   * Waits until `leadMs` before the next usable slot and returns its start,
   * or `null` if stopping. A slot counts only if it is still this instance's
   * when the wait ends: the group may have changed meanwhile.
   */
  async until(leadMs = 0): Promise<number | null> {
    for (;;) {
      const at = await this.next();
      if (at === null) {
        if (this.#stopping()) return null;
        await this.#alarm.sleep(1_000);
        continue;
      }
      if (!await this.#sleepUntil(at - leadMs)) return null;
      if (this.#schedule.mayUse(at)) return at;
    }
  }

  /** Sleeps until `at` (ms). Returns `false` if stopping. */
  async #sleepUntil(at: number): Promise<boolean> {
    for (;;) {
      if (this.#stopping()) return false;
      const wait = at - this.#clock.now();
      if (wait <= 0) return true;
      // A wake ends the sleep early; the loop keeps waiting for the slot.
      await this.#alarm.sleep(wait);
    }
  }
}
