/**
 * Feeds the slot schedule the consumer group's members, so that instances
 * behind one address share the proxy's slots.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { SlotSchedule } from "../slot_schedule.ts";
import type { SourceConsumer } from "./source_consumer.ts";

const log = getLogger(["anonymizer", "kafka"]);

/**
 * Follows joins and losses of the group. Each join bumps a generation, so a
 * member list that comes back after a later rebalance is dropped, not set.
 */
export class GroupView {
  readonly #consumer: SourceConsumer;
  readonly #schedule: SlotSchedule;
  readonly #stopping: () => boolean;
  #generation = 0;

  constructor(consumer: SourceConsumer, schedule: SlotSchedule, stopping: () => boolean) {
    this.#consumer = consumer;
    this.#schedule = schedule;
    this.#stopping = stopping;
  }

  /** The group was joined as `self`: reads the members and shares them. */
  async joined(self: string): Promise<void> {
    const generation = ++this.#generation;
    for (let attempt = 1;; attempt++) {
      try {
        const members = await this.#consumer.members();
        if (generation !== this.#generation) return;
        this.#schedule.setView({ members, self });
        log.info("Sharing ch-proxy slots with {count} members of group {groupId}: {members}", {
          count: members.length,
          groupId: this.#consumer.groupId,
          members: this.#schedule.members.join(","),
        });
        return;
      } catch (err) {
        // Without the member list no slot is known to be free: the flusher waits meanwhile.
        log.warn("Cannot read the members of group {groupId} yet (attempt {attempt}): {error}", {
          groupId: this.#consumer.groupId,
          attempt,
          error: String(err),
        });
        if (generation !== this.#generation || this.#stopping()) return;
        await new Promise((r) => setTimeout(r, Math.min(10_000, 1_000 * attempt)));
      }
    }
  }

  /** A rebalance started, or the consumer crashed or stopped. */
  lost(): void {
    this.#generation++;
    this.#schedule.setView(null);
  }

  /** The coordinator answered a heartbeat. */
  heartbeat(): void {
    this.#schedule.heartbeat();
  }
}
