import assert from "node:assert/strict";
import { SlotSchedule } from "./slot_schedule.ts";

const SLOT = 63_250;

/** Sends of each member over `slots` slots, each member asking from its own clock. */
function sends(
  members: string[],
  skews: number[],
  slots: number,
): Array<{ member: string; at: number }> {
  const out: Array<{ member: string; at: number }> = [];
  members.forEach((member, i) => {
    let local = 10 * SLOT;
    const schedule = new SlotSchedule({ now: () => local });
    schedule.setView({ members, self: member });
    for (let n = 0; n < slots; n++) {
      schedule.heartbeat();
      const at = schedule.slotAt(local)!;
      // The real time of a send is the local slot start minus this member's clock skew.
      out.push({ member, at: at - skews[i]! });
      local = at + 1;
    }
  });
  return out.sort((a, b) => a.at - b.at);
}

Deno.test("SlotSchedule.slotAt() gives members turns at least one spacing apart", async (t) => {
  for (const n of [2, 3, 5]) {
    await t.step(`${n} members, clocks skewed by up to the margin`, () => {
      const members = Array.from({ length: n }, (_, i) => `member-${(i * 7) % n}`);
      const skews = members.map((_, i) => (i % 2 === 0 ? 375 : -375));
      const all = sends(members, skews, 40);
      for (let i = 1; i < all.length; i++) {
        const gap = all[i]!.at - all[i - 1]!.at;
        assert.ok(gap >= 62_500, `sends ${i - 1} and ${i} are ${gap} ms apart`);
      }
      const perMember = new Map<string, number>();
      for (const s of all) perMember.set(s.member, (perMember.get(s.member) ?? 0) + 1);
      assert.deepEqual([...perMember.values()], members.map(() => 40));
    });
  }
  await t.step("every slot of the grid has exactly one owner", () => {
    const members = ["c", "a", "b"];
    const starts = sends(members, [0, 0, 0], 10).map((s) => s.at);
    const first = starts[0]!;
    assert.deepEqual(starts, starts.map((_, i) => first + i * SLOT));
  });
});

Deno.test("SlotSchedule.slotAt() waits one slot after the group changes", async (t) => {
  let now = 1_000_000;
  const schedule = new SlotSchedule({ now: () => now });
  await t.step("a lone first member sends at once", () => {
    schedule.setView({ members: ["a"], self: "a" });
    assert.equal(schedule.slotAt(now), now);
  });
  await t.step("nothing is sent while a rebalance runs", () => {
    schedule.setView(null);
    assert.equal(schedule.slotAt(now), null);
    assert.deepEqual(schedule.members, []);
  });
  await t.step("a later view, even alone, waits a whole slot", () => {
    now += 5_000;
    schedule.setView({ members: ["a"], self: "a" });
    assert.equal(schedule.slotAt(now), now + SLOT);
    assert.equal(schedule.slotAt(now + 2 * SLOT), now + 2 * SLOT);
  });
  await t.step("a first view shared with others waits a whole slot", () => {
    const fresh = new SlotSchedule({ now: () => now });
    fresh.setView({ members: ["a", "b"], self: "a" });
    const at = fresh.slotAt(now)!;
    assert.ok(at >= now + SLOT, `${at} is within a slot of ${now}`);
    assert.equal(at % (2 * SLOT), 0, "member a owns the even slots");
  });
});

Deno.test("SlotSchedule.slotAt() stops sending when heartbeats stop", () => {
  let now = 0;
  const schedule = new SlotSchedule({ now: () => now, leaseMs: 15_000 });
  schedule.setView({ members: ["a"], self: "a" });
  now = 14_000;
  assert.equal(schedule.slotAt(now), now);
  now = 16_000;
  assert.equal(schedule.slotAt(now), null);
  schedule.heartbeat();
  assert.equal(schedule.slotAt(now), now);
});

Deno.test("SlotSchedule.slotAt() paces alone when sharing is off", () => {
  const schedule = new SlotSchedule({ sharing: "off" });
  assert.equal(schedule.sharing, "off");
  assert.equal(schedule.slotAt(1234), 1234);
});

Deno.test("SlotSchedule.setView() refuses a view without this member", () => {
  const schedule = new SlotSchedule();
  assert.throws(
    () => schedule.setView({ members: ["a", "b"], self: "c" }),
    (err: Error) =>
      err instanceof RangeError && err.message.includes('current value is "c"') &&
      err.message.includes('["a","b"]'),
  );
});
