import assert from "node:assert/strict";
import { SlotSchedule } from "./slot_schedule.ts";

const SLOT = 63_250;
const LATE = 250;

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
    let last = -Infinity;
    for (let n = 0; n < slots; n++) {
      schedule.heartbeat();
      // As the flusher asks: its own pacing is a whole slot after its last send.
      const at = schedule.slotAt(Math.max(local, last + SLOT))!;
      local = at + LATE;
      last = local;
      schedule.heartbeat();
      assert.ok(schedule.mayUse(at), `member ${member} may not use its slot ${at}`);
      // The real time of a send is the local time minus this member's clock skew.
      out.push({ member, at: local - skews[i]! });
    }
  });
  return out.sort((a, b) => a.at - b.at);
}

Deno.test("SlotSchedule.slotAt() gives members turns at least one spacing apart", async (t) => {
  for (const n of [2, 3, 5]) {
    await t.step(`${n} members, clocks skewed by up to the margin`, () => {
      const members = Array.from({ length: n }, (_, i) => `member-${(i * 7) % n}`);
      // Lateness and skew share the 750 ms margin.
      const skews = members.map((_, i) => (i % 2 === 0 ? 250 : -250));
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
  await t.step("a slot is not used late, nor after the view changed", () => {
    let now = 100 * SLOT;
    const schedule = new SlotSchedule({ now: () => now });
    schedule.setView({ members: ["a", "b"], self: "a" });
    const at = schedule.slotAt(now)!;
    now = at + LATE + 1;
    schedule.heartbeat();
    assert.equal(schedule.mayUse(at), false);
    assert.equal(schedule.slotAt(now), at + 2 * SLOT);
    now = at + 2 * SLOT;
    schedule.heartbeat();
    assert.equal(schedule.mayUse(now), true);
    schedule.setView({ members: ["a", "b", "c"], self: "a" });
    assert.equal(schedule.mayUse(now), false, "a new view starts with its guard");
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

Deno.test("SlotSchedule.giveAway() hands an unused slot to the next member only", async (t) => {
  let now = 1_000 * SLOT;
  const make = (self: string, members: string[]) => {
    const s = new SlotSchedule({ now: () => now });
    s.setView({ members, self });
    return s;
  };
  const members = ["a", "b", "c"];
  const [a, b, c] = members.map((m) => make(m, members)) as [
    SlotSchedule,
    SlotSchedule,
    SlotSchedule,
  ];
  now += 2 * SLOT; // past the guard
  for (const s of [a, b, c]) s.heartbeat();
  const slotA = a.slotAt(now)!;

  await t.step("the owner gives its slot to the next member in id order", () => {
    assert.equal(b.slotAt(now)! > slotA, true);
    const y = a.giveAway(slotA);
    assert.deepEqual(y, { view: "a b c", at: slotA, from: "a" });
    assert.equal(a.mayUse(slotA), false);
    assert.notEqual(a.slotAt(now), slotA);
    assert.equal(c.receive(y!), false, "c is not next after a");
    assert.equal(b.receive(y!), true);
    assert.equal(b.slotAt(now), slotA);
    // b's own pacing, from a request it sent just after the slot before, does not hide it.
    assert.equal(b.slotAt(slotA - SLOT + 40 + SLOT), slotA);
  });
  await t.step("it may be passed on, but never back to its owner", () => {
    const y = b.giveAway(slotA)!;
    assert.equal(b.mayUse(slotA), false);
    assert.equal(c.receive(y), true);
    assert.equal(c.slotAt(now), slotA);
    assert.equal(c.giveAway(slotA), null, "a owns it; the hand-over ends here");
    assert.equal(c.mayUse(slotA), false);
  });
  await t.step("a hand-over from another view is ignored", () => {
    const next = slotA + 3 * SLOT;
    assert.equal(b.receive({ view: "a b", at: next, from: "a" }), false);
    assert.equal(b.receive({ view: "a b c", at: next + SLOT, from: "a" }), false, "b owns it");
  });
  await t.step("at most one member holds any slot, whatever is handed over", () => {
    const all = [a, b, c];
    for (let i = 0; i < 60; i++) {
      const at = slotA + (i % 12) * SLOT;
      const giver = all[(i * 7) % 3]!;
      const y = giver.giveAway(at);
      if (y !== null) { for (const s of all) s.receive(y); }
      for (let k = 0; k < 12; k++) {
        const slot = slotA + k * SLOT;
        now = slot;
        for (const s of all) s.heartbeat();
        const holders = all.filter((s) => s.mayUse(slot)).length;
        assert.ok(holders <= 1, `slot ${k} has ${holders} holders after hand-over ${i}`);
      }
      now = slotA;
    }
  });
});
