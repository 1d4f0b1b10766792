import assert from "node:assert/strict";
import { AnonymizerError } from "../lib/errors.ts";
import { syntheticRecords } from "./synthetic_records.ts";
import { CACHE_STATUSES } from "../lib/record/vocabulary.ts";

const NOW = 1_700_000_000_000;
const STATUSES = [200, 301, 400, 403, 404, 500, 502, 504];
const URL_SHAPE = /^(\/[a-z0-9]+){1,6}\/[a-z0-9]{4,150}(\.[a-z0-9]+)?$/;

Deno.test("syntheticRecords() reproduces the same records for the same seed", async (t) => {
  await t.step("same seed and clock", () => {
    const a = syntheticRecords({ seed: 99, now: NOW }).take(500).toArray();
    const b = syntheticRecords({ seed: 99, now: NOW }).take(500).toArray();
    assert.deepEqual(a, b);
  });
  await t.step("another seed differs", () => {
    const a = syntheticRecords({ seed: 1, now: NOW }).take(20).toArray();
    const b = syntheticRecords({ seed: 2, now: NOW }).take(20).toArray();
    assert.notDeepEqual(a, b);
  });
  await t.step("a fixed seed gives a fixed first record", () => {
    // Pins the draw order: changing it changes what `produce --seed 0` sends.
    assert.deepEqual(syntheticRecords({ seed: 0, now: NOW }).next().value, {
      timestampEpochMilli: 1_699_997_233_795n,
      resourceId: 143_485_158n,
      bytesSent: 94_372n,
      requestTimeMilli: 2_101n,
      responseStatus: 400,
      cacheStatus: "EXPIRED",
      method: "GET",
      remoteAddr: "53.89.168.182",
      url: "/hls/api/gallery/mfu823j5u5x717sz6i292qeswyx7wdi886eza6s23sny4gkh1dbfwewfiw2yoyj077" +
        "vvl3lq1o45ox3pg9guy9muv1ft8fcebz081199kb3l8ekf1in51s29ryzi4d2p32z5igceuq.m3u8",
    });
    const distinct = syntheticRecords({ seed: 0, now: NOW, distinctResourceIds: true });
    assert.equal(distinct.next().value.resourceId, 373_896_782n);
  });
});

Deno.test("syntheticRecords() draws every field from its stated distribution", async (t) => {
  const records = syntheticRecords({ seed: 5, now: NOW }).take(10_000).toArray();
  await t.step("numbers stay in range", () => {
    for (const r of records) {
      assert.ok(r.timestampEpochMilli > BigInt(NOW - 3_600_000), String(r.timestampEpochMilli));
      assert.ok(r.timestampEpochMilli <= BigInt(NOW), String(r.timestampEpochMilli));
      assert.ok(r.resourceId >= 100_000_000n && r.resourceId < 1_000_000_000n);
      assert.ok(r.bytesSent >= 0n && r.bytesSent < 2n ** 21n);
      assert.ok(r.requestTimeMilli >= 0n && r.requestTimeMilli <= 30_000n);
    }
  });
  await t.step("numbers cover their range", () => {
    const spread = (values: bigint[]) => [
      values.reduce((a, b) => (a < b ? a : b)),
      values.reduce((a, b) => (a > b ? a : b)),
    ];
    const [tMin, tMax] = spread(records.map((r) => r.timestampEpochMilli));
    assert.ok(tMax! - tMin! > 3_500_000n, `timestamps span ${tMax! - tMin!} ms`);
    const [bMin, bMax] = spread(records.map((r) => r.bytesSent));
    assert.ok(bMin! < 2n ** 12n && bMax! > 2n ** 21n - 2n ** 12n);
    const meanTime = records.reduce((s, r) => s + Number(r.requestTimeMilli), 0) / records.length;
    assert.ok(Math.abs(meanTime - 15_000) < 500, `requestTimeMilli mean ${meanTime}`);
  });
  await t.step("enumerations are uniform over their values", () => {
    const counts = (values: (string | number)[]) => {
      const map = new Map<string | number, number>();
      for (const v of values) map.set(v, (map.get(v) ?? 0) + 1);
      return map;
    };
    const status = counts(records.map((r) => r.responseStatus));
    assert.deepEqual([...status.keys()].sort(), [...STATUSES].sort());
    const cache = counts(records.map((r) => r.cacheStatus));
    assert.deepEqual([...cache.keys()].sort(), [...CACHE_STATUSES].sort());
    const method = counts(records.map((r) => r.method));
    assert.deepEqual([...method.keys()].sort(), ["GET", "HEAD"]);
    for (const [map, n] of [[status, 8], [cache, 8], [method, 2]] as const) {
      for (const [value, count] of map) {
        const expected = records.length / n;
        assert.ok(Math.abs(count - expected) < expected * 0.15, `${value}: ${count}`);
      }
    }
  });
  await t.step("remoteAddr is a dotted IPv4 address", () => {
    for (const r of records) {
      const octets = r.remoteAddr.split(".").map(Number);
      assert.equal(octets.length, 4, r.remoteAddr);
      assert.ok(octets.every((o) => Number.isInteger(o) && o >= 0 && o <= 255), r.remoteAddr);
    }
    assert.ok(new Set(records.map((r) => r.remoteAddr)).size > 9_990);
  });
  await t.step("url has path words, a random segment and an optional extension", () => {
    for (const r of records) assert.match(r.url, URL_SHAPE);
    const withExtension = records.filter((r) => /\.[a-z0-9]+$/.test(r.url)).length;
    assert.ok(withExtension > 4_000 && withExtension < 6_000, `${withExtension} with extension`);
  });
  await t.step("url length averages about 70 characters", () => {
    const mean = records.reduce((s, r) => s + r.url.length, 0) / records.length;
    assert.ok(mean > 66 && mean < 74, `mean url length ${mean}`);
  });
});

Deno.test("syntheticRecords() makes resource ids distinct on request", async (t) => {
  await t.step("100,000 distinct ids in [1e8, 1e9)", () => {
    const ids = new Set<bigint>();
    for (
      const r of syntheticRecords({ seed: 8, now: NOW, distinctResourceIds: true }).take(100_000)
    ) {
      assert.ok(r.resourceId >= 100_000_000n && r.resourceId < 1_000_000_000n);
      ids.add(r.resourceId);
    }
    assert.equal(ids.size, 100_000);
  });
  await t.step("ids do not follow the counter", () => {
    const ids = syntheticRecords({ seed: 8, now: NOW, distinctResourceIds: true }).take(1_000).map(
      (r) => r.resourceId,
    ).toArray();
    const ascending = ids.filter((id, i) => i > 0 && id > ids[i - 1]!).length;
    assert.ok(ascending > 400 && ascending < 600, `${ascending} ascending steps`);
  });
  await t.step("the seed changes the permutation", () => {
    const first = (seed: number) =>
      syntheticRecords({ seed, now: NOW, distinctResourceIds: true }).next().value.resourceId;
    assert.notEqual(first(1), first(2));
  });
});

Deno.test("syntheticRecords() validates its options", async (t) => {
  await t.step("seed must be a uint32", () => {
    for (const seed of [-1, 1.5, 2 ** 32, Number.NaN]) {
      assert.throws(() => syntheticRecords({ seed }), (err: unknown) => {
        assert.ok(err instanceof AnonymizerError);
        assert.equal(err.code, "invalid_option");
        assert.match(err.message, new RegExp(`option seed .*: value is ${seed}`));
        return true;
      });
    }
  });
  await t.step("now must be a safe integer after the epoch's first hour", () => {
    assert.throws(() => syntheticRecords({ now: 1.5 }), { code: "invalid_option" });
    assert.throws(() => syntheticRecords({ now: 0 }), { code: "invalid_option" });
  });
  await t.step("now defaults to the clock at the call", () => {
    const before = Date.now();
    const record = syntheticRecords({ seed: 1 }).next().value;
    assert.ok(record.timestampEpochMilli <= BigInt(Date.now()));
    assert.ok(record.timestampEpochMilli > BigInt(before - 3_600_000));
  });
});
