/**
 * A small seeded PRNG so fault tests can print their seed and be replayed.
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
 * sequence for the same seed.
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
