import assert from "node:assert/strict";
import { sameDayNow } from "../testing/pipeline.ts";

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const MIDNIGHT = Date.UTC(2026, 11, 7);

/** The UTC days of the first and last millisecond a synthetic hour before `now` can hold. */
function days(now: number): [number, number] {
  return [Math.floor((now - HOUR_MS + 1) / DAY_MS), Math.floor(now / DAY_MS)];
}

Deno.test("sameDayNow() keeps the hour before it in one UTC day and never in the future", async (t) => {
  await t.step("an hour or more after midnight: the time itself", () => {
    for (const at of [MIDNIGHT + HOUR_MS, MIDNIGHT + 12 * HOUR_MS, MIDNIGHT + DAY_MS - 1]) {
      assert.equal(sameDayNow(at), at);
      const [first, last] = days(at);
      assert.equal(first, last);
    }
  });
  await t.step("within the first hour: the last millisecond of the day before", () => {
    for (const at of [MIDNIGHT, MIDNIGHT + 1, MIDNIGHT + HOUR_MS - 1]) {
      const now = sameDayNow(at);
      assert.equal(now, MIDNIGHT - 1);
      assert.ok(now <= at);
      const [first, last] = days(now);
      assert.equal(first, last);
      assert.equal(last, MIDNIGHT / DAY_MS - 1);
    }
  });
});
