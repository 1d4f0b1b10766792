/**
 * The one seeded PRNG of the tests: fault tests print their seed so a run can
 * be replayed, and generated inputs (malformed messages, fuzz cases) come out
 * the same for the same seed.
 *
 * @module
 */

/** A seed from `FAULT_SEED` if set, else a random uint32. */
export function faultSeed(): number {
  const fromEnv = Deno.env.get("FAULT_SEED");
  if (fromEnv !== undefined && fromEnv !== "") return Number(fromEnv) >>> 0;
  return crypto.getRandomValues(new Uint32Array(1))[0]!;
}

/**
 * mulberry32: returns a function yielding floats in [0, 1), the same
 * sequence for the same seed. Small, and good enough to spread test inputs.
 *
 * @example
 * ```ts
 * import { seededRandom } from "./seeded_random.ts";
 * import assert from "node:assert/strict";
 *
 * const a = seededRandom(7);
 * const b = seededRandom(7);
 * assert.equal(a(), b());
 * ```
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}
