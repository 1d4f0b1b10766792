/**
 * Seeded, reproducible {@linkcode HttpLogRecord}s drawn from the distributions
 * of the stock edge producer, for load generation and end-to-end tests.
 *
 * @module
 */

import { AnonymizerError } from "../lib/errors.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { CACHE_STATUSES } from "../lib/record/vocabulary.ts";
import {
  EXTENSIONS,
  METHODS,
  PATH_WORDS,
  RESOURCE_ID_MIN,
  RESOURCE_ID_SPAN,
  SEGMENT_ALPHABET,
  SEGMENT_MIN,
  SEGMENT_SKEW,
  SEGMENT_SPAN,
  STATUSES,
} from "./stock_distribution.ts";

/** Options of {@linkcode syntheticRecords}. */
export interface SyntheticRecordsOptions {
  /** Seed of the generator: an integer in [0, 2^32). Default: `0`. */
  seed?: number;
  /**
   * The clock, in milliseconds since the Unix epoch: timestamps fall in the
   * hour before it, i.e. in (now − 3,600,000, now]. Pass it to reproduce
   * records exactly. Default: `Date.now()` at the call.
   */
  now?: number;
  /**
   * Make every `resourceId` of the sequence distinct (still in [1e8, 1e9)), so
   * a test can find each record again by id. Distinct ids are a pseudo-random
   * permutation of the range, so the sequence ends with an error after 9e8
   * records. Default: `false` (ids are independent uniform draws).
   */
  distinctResourceIds?: boolean;
}

const HOUR_MS = 3_600_000;

/**
 * Returns an endless iterator of pseudo-random records: the same options give
 * the same sequence.
 *
 * | field | distribution |
 * |---|---|
 * | timestampEpochMilli | uniform over the hour before `now` |
 * | resourceId | uniform over [1e8, 1e9), or distinct (see `distinctResourceIds`) |
 * | bytesSent | uniform over [0, 2^21) |
 * | requestTimeMilli | uniform over [0, 30000] |
 * | responseStatus | uniform over 200, 301, 400, 403, 404, 500, 502, 504 |
 * | cacheStatus | uniform over HIT, MISS, BYPASS, STALE, EXPIRED, REVALIDATED, UPDATING, SCARCE |
 * | method | GET or HEAD |
 * | remoteAddr | uniform IPv4 address |
 * | url | `/` and 1–6 path words, `/` and 4–150 of [a-z0-9], optional extension; ≈ 70 chars |
 *
 * Throws {@linkcode AnonymizerError} with code `"invalid_option"` when `seed`
 * or `now` is not an integer in range.
 *
 * @example Same seed and clock, same records
 * ```ts
 * import { syntheticRecords } from "./synthetic_records.ts";
 * import assert from "node:assert/strict";
 *
 * const options = { seed: 42, now: 1_700_000_000_000, distinctResourceIds: true };
 * const first = syntheticRecords(options).take(3).toArray();
 * assert.deepEqual(syntheticRecords(options).take(3).toArray(), first);
 * assert.equal(new Set(first.map((r) => r.resourceId)).size, 3);
 * assert.ok(first.every((r) => r.url.startsWith("/")));
 * ```
 */
export function syntheticRecords(
  options: SyntheticRecordsOptions = {},
): Generator<HttpLogRecord, never, undefined> {
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffff_ffff) {
    throw invalidOption("seed", seed, "must be an integer in [0, 2^32)");
  }
  const now = options.now ?? Date.now();
  if (!Number.isSafeInteger(now) || now < HOUR_MS) {
    throw invalidOption(
      "now",
      now,
      "must be an integer count of milliseconds after 1970-01-01T01:00Z",
    );
  }
  const random = new Sfc32(seed);
  const nextResourceId = options.distinctResourceIds
    ? distinctResourceIds(random)
    : () => RESOURCE_ID_MIN + random.below(RESOURCE_ID_SPAN);
  return generate(random, now, nextResourceId);
}

function* generate(
  random: Sfc32,
  now: number,
  nextResourceId: () => number,
): Generator<HttpLogRecord, never, undefined> {
  while (true) {
    yield {
      timestampEpochMilli: BigInt(now - random.below(HOUR_MS)),
      resourceId: BigInt(nextResourceId()),
      bytesSent: BigInt(random.uint32() >>> 11),
      requestTimeMilli: BigInt(random.below(30_001)),
      responseStatus: random.pick(STATUSES),
      cacheStatus: random.pick(CACHE_STATUSES),
      method: random.pick(METHODS),
      remoteAddr: ipv4(random.uint32()),
      url: url(random),
    };
  }
}

function url(random: Sfc32): string {
  let path = "";
  const words = 1 + random.below(6);
  for (let i = 0; i < words; i++) path += "/" + random.pick(PATH_WORDS);
  const length = SEGMENT_MIN + Math.floor(SEGMENT_SPAN * random.float() ** SEGMENT_SKEW);
  let segment = "/";
  for (let i = 0; i < length; i++) segment += SEGMENT_ALPHABET[random.uint32() % 36];
  const extension = random.below(2 * EXTENSIONS.length);
  return path + segment + (EXTENSIONS[extension] ?? "");
}

function ipv4(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/**
 * Distinct ids in O(1) memory: a keyed 4-round Feistel permutation of 30-bit
 * numbers, cycle-walked into [0, 9e8), applied to a counter.
 */
function distinctResourceIds(random: Sfc32): () => number {
  const keys = [random.uint32(), random.uint32(), random.uint32(), random.uint32()];
  let counter = 0;
  return () => {
    if (counter >= RESOURCE_ID_SPAN) {
      throw new AnonymizerError(
        `Cannot draw a distinct resourceId as all of [1e8, 1e9) are used: count is ${counter}`,
        { code: "ids_exhausted" },
      );
    }
    let x = counter++;
    do {
      let left = x >>> 15;
      let right = x & 0x7fff;
      for (const key of keys) {
        const mixed = left ^ roundFunction(right, key);
        left = right;
        right = mixed;
      }
      x = left * 0x8000 + right;
    } while (x >= RESOURCE_ID_SPAN);
    return RESOURCE_ID_MIN + x;
  };
}

/** murmur3's finalizer: any key-dependent 15-bit mix keeps the Feistel network a bijection. */
function roundFunction(half: number, key: number): number {
  let h = Math.imul(half ^ key, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h & 0x7fff;
}

/** Chris Doty-Humphrey's sfc32: small, fast and passes PractRand; Math.random cannot be seeded. */
class Sfc32 {
  #a = 0;
  #b: number;
  #c: number;
  #d = 1;

  constructor(seed: number) {
    this.#b = seed | 0;
    this.#c = (seed ^ 0x9e3779b9) | 0;
    // The first outputs of a fresh state correlate with the seed.
    for (let i = 0; i < 15; i++) this.uint32();
  }

  uint32(): number {
    const t = (((this.#a + this.#b) | 0) + this.#d) | 0;
    this.#d = (this.#d + 1) | 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) | 0;
    this.#c = (this.#c << 21) | (this.#c >>> 11);
    this.#c = (this.#c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  float(): number {
    return ((this.uint32() >>> 5) * 67_108_864 + (this.uint32() >>> 6)) / 9_007_199_254_740_992;
  }

  /** Uniform integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.float() * n);
  }

  pick<T>(values: readonly T[]): T {
    return values[this.below(values.length)]!;
  }
}

function invalidOption(name: string, value: unknown, rule: string): AnonymizerError {
  return new AnonymizerError(
    `Cannot generate records as option ${name} ${rule}: value is ${String(value)}`,
    { code: "invalid_option" },
  );
}
