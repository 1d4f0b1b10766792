/**
 * CityHash128 as of CityHash v1.0.2, the version ClickHouse froze for the
 * checksum of its native compressed blocks. Later CityHash versions (and the
 * generic npm packages, which implement CityHash64 only) give other values, so
 * the server would reject the block with a checksum mismatch.
 *
 * Written from the published algorithm (Google, MIT licence). Every 64-bit
 * value is held as two unsigned 32-bit halves: BigInt arithmetic allocates on
 * every operation and made hashing a 1 MiB body take tens of milliseconds.
 *
 * @module
 */

// Primes between 2^63 and 2^64, split into high and low 32-bit halves.
const K0_HI = 0xc3a5c85c, K0_LO = 0x97cb3127;
const K1_HI = 0xb492b66f, K1_LO = 0xbe98f273;
const K2_HI = 0x9ae16a3b, K2_LO = 0x2f90404f;
const K3_HI = 0xc949d7c7, K3_LO = 0x509e6557;
const KMUL_HI = 0x9ddfea08, KMUL_LO = 0xeb382d69;

// The 64-bit helpers return their result through these two slots instead of an
// object, so the hot loop allocates nothing.
let rHi = 0;
let rLo = 0;

function add(aHi: number, aLo: number, bHi: number, bLo: number): void {
  const lo = aLo + bLo;
  rLo = lo >>> 0;
  rHi = (aHi + bHi + (lo > 0xffffffff ? 1 : 0)) >>> 0;
}

function sub(aHi: number, aLo: number, bHi: number, bLo: number): void {
  rLo = (aLo - bLo) >>> 0;
  rHi = (aHi - bHi - (aLo < bLo ? 1 : 0)) >>> 0;
}

/** Low 64 bits of the product. */
function mul(aHi: number, aLo: number, bHi: number, bLo: number): void {
  // aLo · bLo from 16-bit limbs: every partial product and sum stays below
  // 2^53, so plain number arithmetic is exact.
  const a0 = aLo & 0xffff, a1 = aLo >>> 16, b0 = bLo & 0xffff, b1 = bLo >>> 16;
  const p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0;
  const mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  rLo = ((mid << 16) | (p00 & 0xffff)) >>> 0;
  rHi = (a1 * b1 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16) + Math.imul(aHi, bLo) +
    Math.imul(aLo, bHi)) >>> 0;
}

/** Right rotation by 1..63 bits. */
function rot(hi: number, lo: number, shift: number): void {
  if (shift === 32) {
    rHi = lo;
    rLo = hi;
    return;
  }
  if (shift > 32) {
    const t = hi;
    hi = lo;
    lo = t;
    shift -= 32;
  }
  rLo = ((lo >>> shift) | (hi << (32 - shift))) >>> 0;
  rHi = ((hi >>> shift) | (lo << (32 - shift))) >>> 0;
}

/** `x ^ (x >> 47)`. */
function shiftMix(hi: number, lo: number): void {
  rLo = (lo ^ (hi >>> 15)) >>> 0;
  rHi = hi;
}

/** CityHash's `Hash128to64`, used as `HashLen16(u, v)`. */
function hashLen16(uHi: number, uLo: number, vHi: number, vLo: number): void {
  mul((uHi ^ vHi) >>> 0, (uLo ^ vLo) >>> 0, KMUL_HI, KMUL_LO);
  shiftMix(rHi, rLo);
  const aHi = rHi, aLo = rLo;
  mul((vHi ^ aHi) >>> 0, (vLo ^ aLo) >>> 0, KMUL_HI, KMUL_LO);
  shiftMix(rHi, rLo);
  mul(rHi, rLo, KMUL_HI, KMUL_LO);
}

function fetch32(s: Uint8Array, p: number): number {
  return (s[p]! | (s[p + 1]! << 8) | (s[p + 2]! << 16) | (s[p + 3]! << 24)) >>> 0;
}

/** `HashLen0to16` of `s[p, p + len)`. */
function hashLen0to16(s: Uint8Array, p: number, len: number): void {
  if (len > 8) {
    const aLo = fetch32(s, p), aHi = fetch32(s, p + 4);
    const bLo = fetch32(s, p + len - 8), bHi = fetch32(s, p + len - 4);
    add(bHi, bLo, 0, len);
    rot(rHi, rLo, len);
    hashLen16(aHi, aLo, rHi, rLo);
    rHi = (rHi ^ bHi) >>> 0;
    rLo = (rLo ^ bLo) >>> 0;
    return;
  }
  if (len >= 4) {
    const a = fetch32(s, p);
    // len + (a << 3), with a < 2^32 so the shifted value spans 35 bits.
    add(a >>> 29, (a << 3) >>> 0, 0, len);
    hashLen16(rHi, rLo, 0, fetch32(s, p + len - 4));
    return;
  }
  if (len > 0) {
    const y = s[p]! + (s[p + (len >>> 1)]! << 8);
    const z = len + (s[p + len - 1]! << 2);
    mul(0, y, K2_HI, K2_LO);
    const yHi = rHi, yLo = rLo;
    mul(0, z, K3_HI, K3_LO);
    shiftMix((yHi ^ rHi) >>> 0, (yLo ^ rLo) >>> 0);
    mul(rHi, rLo, K2_HI, K2_LO);
    return;
  }
  rHi = K2_HI;
  rLo = K2_LO;
}

/** CityHash v1.0.2 `CityMurmur`, for inputs shorter than 128 bytes. */
function cityMurmur(
  s: Uint8Array,
  p: number,
  len: number,
  seedLoHi: number,
  seedLoLo: number,
  seedHiHi: number,
  seedHiLo: number,
): [number, number, number, number] {
  let aHi = seedLoHi, aLo = seedLoLo, bHi = seedHiHi, bLo = seedHiLo;
  let cHi: number, cLo: number, dHi: number, dLo: number;
  let l = len - 16;
  if (l <= 0) {
    mul(aHi, aLo, K1_HI, K1_LO);
    shiftMix(rHi, rLo);
    mul(rHi, rLo, K1_HI, K1_LO);
    aHi = rHi;
    aLo = rLo;
    mul(bHi, bLo, K1_HI, K1_LO);
    const tHi = rHi, tLo = rLo;
    hashLen0to16(s, p, len);
    add(tHi, tLo, rHi, rLo);
    cHi = rHi;
    cLo = rLo;
    if (len >= 8) add(aHi, aLo, fetch32(s, p + 4), fetch32(s, p));
    else add(aHi, aLo, cHi, cLo);
    shiftMix(rHi, rLo);
    dHi = rHi;
    dLo = rLo;
  } else {
    add(fetch32(s, p + len - 4), fetch32(s, p + len - 8), K1_HI, K1_LO);
    hashLen16(rHi, rLo, aHi, aLo);
    cHi = rHi;
    cLo = rLo;
    add(bHi, bLo, 0, len);
    const tHi = rHi, tLo = rLo;
    add(cHi, cLo, fetch32(s, p + len - 12), fetch32(s, p + len - 16));
    hashLen16(tHi, tLo, rHi, rLo);
    dHi = rHi;
    dLo = rLo;
    add(aHi, aLo, dHi, dLo);
    aHi = rHi;
    aLo = rLo;
    do {
      mul(fetch32(s, p + 4), fetch32(s, p), K1_HI, K1_LO);
      shiftMix(rHi, rLo);
      mul(rHi, rLo, K1_HI, K1_LO);
      mul((aHi ^ rHi) >>> 0, (aLo ^ rLo) >>> 0, K1_HI, K1_LO);
      aHi = rHi;
      aLo = rLo;
      bHi = (bHi ^ aHi) >>> 0;
      bLo = (bLo ^ aLo) >>> 0;
      mul(fetch32(s, p + 12), fetch32(s, p + 8), K1_HI, K1_LO);
      shiftMix(rHi, rLo);
      mul(rHi, rLo, K1_HI, K1_LO);
      mul((cHi ^ rHi) >>> 0, (cLo ^ rLo) >>> 0, K1_HI, K1_LO);
      cHi = rHi;
      cLo = rLo;
      dHi = (dHi ^ cHi) >>> 0;
      dLo = (dLo ^ cLo) >>> 0;
      p += 16;
      l -= 16;
    } while (l > 0);
  }
  hashLen16(aHi, aLo, cHi, cLo);
  aHi = rHi;
  aLo = rLo;
  hashLen16(dHi, dLo, bHi, bLo);
  bHi = rHi;
  bLo = rLo;
  hashLen16(bHi, bLo, aHi, aLo);
  return [(aHi ^ bHi) >>> 0, (aLo ^ bLo) >>> 0, rHi, rLo];
}

// State of the long-input loop: the pairs v and w plus x, y, z, as halves.
let vfHi = 0, vfLo = 0, vsHi = 0, vsLo = 0, wfHi = 0, wfLo = 0, wsHi = 0, wsLo = 0;
let xHi = 0, xLo = 0, yHi = 0, yLo = 0, zHi = 0, zLo = 0;

// Second half of the pair `weakHashLen32` computes; the first is left in rHi, rLo.
let weakSecondHi = 0, weakSecondLo = 0;

/** `WeakHashLen32WithSeeds(s + p, a, b)`. */
function weakHashLen32(
  s: Uint8Array,
  p: number,
  aHi: number,
  aLo: number,
  bHi: number,
  bLo: number,
) {
  const wLo = fetch32(s, p), wHi = fetch32(s, p + 4);
  const xLo2 = fetch32(s, p + 8), xHi2 = fetch32(s, p + 12);
  const yLo2 = fetch32(s, p + 16), yHi2 = fetch32(s, p + 20);
  const zLo2 = fetch32(s, p + 24), zHi2 = fetch32(s, p + 28);
  add(aHi, aLo, wHi, wLo);
  aHi = rHi;
  aLo = rLo;
  add(bHi, bLo, aHi, aLo);
  add(rHi, rLo, zHi2, zLo2);
  rot(rHi, rLo, 21);
  bHi = rHi;
  bLo = rLo;
  const cHi = aHi, cLo = aLo;
  add(aHi, aLo, xHi2, xLo2);
  add(rHi, rLo, yHi2, yLo2);
  aHi = rHi;
  aLo = rLo;
  rot(aHi, aLo, 44);
  add(bHi, bLo, rHi, rLo);
  add(rHi, rLo, cHi, cLo);
  weakSecondHi = rHi;
  weakSecondLo = rLo;
  add(aHi, aLo, zHi2, zLo2);
}

/** One 64-byte step of the long-input loop, reading `s[p, p + 64)`. */
function step64(s: Uint8Array, p: number): void {
  add(xHi, xLo, yHi, yLo);
  add(rHi, rLo, vfHi, vfLo);
  add(rHi, rLo, fetch32(s, p + 20), fetch32(s, p + 16));
  rot(rHi, rLo, 37);
  mul(rHi, rLo, K1_HI, K1_LO);
  xHi = (rHi ^ wsHi) >>> 0;
  xLo = (rLo ^ wsLo) >>> 0;
  add(yHi, yLo, vsHi, vsLo);
  add(rHi, rLo, fetch32(s, p + 52), fetch32(s, p + 48));
  rot(rHi, rLo, 42);
  mul(rHi, rLo, K1_HI, K1_LO);
  yHi = (rHi ^ vfHi) >>> 0;
  yLo = (rLo ^ vfLo) >>> 0;
  rot((zHi ^ wfHi) >>> 0, (zLo ^ wfLo) >>> 0, 33);
  zHi = rHi;
  zLo = rLo;
  mul(vsHi, vsLo, K1_HI, K1_LO);
  const aHi = rHi, aLo = rLo;
  add(xHi, xLo, wfHi, wfLo);
  weakHashLen32(s, p, aHi, aLo, rHi, rLo);
  vfHi = rHi;
  vfLo = rLo;
  vsHi = weakSecondHi;
  vsLo = weakSecondLo;
  add(zHi, zLo, wsHi, wsLo);
  weakHashLen32(s, p + 32, rHi, rLo, yHi, yLo);
  wfHi = rHi;
  wfLo = rLo;
  wsHi = weakSecondHi;
  wsLo = weakSecondLo;
  const tHi = zHi, tLo = zLo;
  zHi = xHi;
  zLo = xLo;
  xHi = tHi;
  xLo = tLo;
}

/** CityHash v1.0.2 `CityHash128WithSeed` of `s[p, p + len)`. */
function cityHash128WithSeed(
  s: Uint8Array,
  p: number,
  len: number,
  seedLoHi: number,
  seedLoLo: number,
  seedHiHi: number,
  seedHiLo: number,
): [number, number, number, number] {
  if (len < 128) return cityMurmur(s, p, len, seedLoHi, seedLoLo, seedHiHi, seedHiLo);
  xHi = seedLoHi;
  xLo = seedLoLo;
  yHi = seedHiHi;
  yLo = seedHiLo;
  mul(0, len, K1_HI, K1_LO);
  zHi = rHi;
  zLo = rLo;
  rot((yHi ^ K1_HI) >>> 0, (yLo ^ K1_LO) >>> 0, 49);
  mul(rHi, rLo, K1_HI, K1_LO);
  add(rHi, rLo, fetch32(s, p + 4), fetch32(s, p));
  vfHi = rHi;
  vfLo = rLo;
  rot(vfHi, vfLo, 42);
  mul(rHi, rLo, K1_HI, K1_LO);
  add(rHi, rLo, fetch32(s, p + 12), fetch32(s, p + 8));
  vsHi = rHi;
  vsLo = rLo;
  add(yHi, yLo, zHi, zLo);
  rot(rHi, rLo, 35);
  mul(rHi, rLo, K1_HI, K1_LO);
  add(rHi, rLo, xHi, xLo);
  wfHi = rHi;
  wfLo = rLo;
  add(xHi, xLo, fetch32(s, p + 92), fetch32(s, p + 88));
  rot(rHi, rLo, 53);
  mul(rHi, rLo, K1_HI, K1_LO);
  wsHi = rHi;
  wsLo = rLo;
  do {
    step64(s, p);
    step64(s, p + 64);
    p += 128;
    len -= 128;
  } while (len >= 128);
  rot(wfHi, wfLo, 37);
  mul(rHi, rLo, K0_HI, K0_LO);
  add(rHi, rLo, zHi, zLo);
  add(yHi, yLo, rHi, rLo);
  yHi = rHi;
  yLo = rLo;
  add(vfHi, vfLo, zHi, zLo);
  rot(rHi, rLo, 49);
  mul(rHi, rLo, K0_HI, K0_LO);
  add(xHi, xLo, rHi, rLo);
  xHi = rHi;
  xLo = rLo;
  for (let tailDone = 0; tailDone < len;) {
    tailDone += 32;
    sub(yHi, yLo, xHi, xLo);
    rot(rHi, rLo, 42);
    mul(rHi, rLo, K0_HI, K0_LO);
    add(rHi, rLo, vsHi, vsLo);
    yHi = rHi;
    yLo = rLo;
    const q = p + len - tailDone;
    add(wfHi, wfLo, fetch32(s, q + 20), fetch32(s, q + 16));
    wfHi = rHi;
    wfLo = rLo;
    rot(xHi, xLo, 49);
    mul(rHi, rLo, K0_HI, K0_LO);
    add(rHi, rLo, wfHi, wfLo);
    xHi = rHi;
    xLo = rLo;
    add(wfHi, wfLo, vfHi, vfLo);
    wfHi = rHi;
    wfLo = rLo;
    weakHashLen32(s, q, vfHi, vfLo, vsHi, vsLo);
    vfHi = rHi;
    vfLo = rLo;
    vsHi = weakSecondHi;
    vsLo = weakSecondLo;
  }
  hashLen16(xHi, xLo, vfHi, vfLo);
  xHi = rHi;
  xLo = rLo;
  hashLen16(yHi, yLo, wfHi, wfLo);
  yHi = rHi;
  yLo = rLo;
  add(xHi, xLo, vsHi, vsLo);
  hashLen16(rHi, rLo, wsHi, wsLo);
  add(rHi, rLo, yHi, yLo);
  const loHi = rHi, loLo = rLo;
  add(xHi, xLo, wsHi, wsLo);
  const tHi = rHi, tLo = rLo;
  add(yHi, yLo, vsHi, vsLo);
  hashLen16(tHi, tLo, rHi, rLo);
  return [loHi, loLo, rHi, rLo];
}

/**
 * CityHash128 (v1.0.2) of `data`, as the 16 bytes ClickHouse puts in front of
 * a compressed block: the low 64-bit half then the high one, each
 * little-endian.
 *
 * @example Checksum of a short input
 * ```ts
 * import { cityHash128 } from "./_cityhash128.ts";
 * import assert from "node:assert/strict";
 *
 * const sum = cityHash128(new TextEncoder().encode("ClickHouse"));
 * assert.equal(sum.length, 16);
 * ```
 */
export function cityHash128(data: Uint8Array): Uint8Array {
  const len = data.length;
  let h: [number, number, number, number];
  if (len >= 16) {
    h = cityHash128WithSeed(
      data,
      16,
      len - 16,
      (fetch32(data, 4) ^ K3_HI) >>> 0,
      (fetch32(data, 0) ^ K3_LO) >>> 0,
      fetch32(data, 12),
      fetch32(data, 8),
    );
  } else if (len >= 8) {
    mul(0, len, K0_HI, K0_LO);
    const aHi = (fetch32(data, 4) ^ rHi) >>> 0, aLo = (fetch32(data, 0) ^ rLo) >>> 0;
    h = cityHash128WithSeed(
      data,
      0,
      0,
      aHi,
      aLo,
      (fetch32(data, len - 4) ^ K1_HI) >>> 0,
      (fetch32(data, len - 8) ^ K1_LO) >>> 0,
    );
  } else {
    h = cityHash128WithSeed(data, 0, len, K0_HI, K0_LO, K1_HI, K1_LO);
  }
  const out = new Uint8Array(16);
  const view = new DataView(out.buffer);
  view.setUint32(0, h[1], true);
  view.setUint32(4, h[0], true);
  view.setUint32(8, h[3], true);
  view.setUint32(12, h[2], true);
  return out;
}
