/**
 * Masks a client address so that what is stored identifies a network, never a
 * host: `1.2.3.4` becomes `1.2.3.X`, an IPv6 address keeps at most its /48.
 *
 * @module
 */

/**
 * What {@linkcode anonymizeAddress} returns for anything it cannot parse
 * strictly. Fixed, so no part of the rejected text ever leaks.
 *
 * @example
 * ```ts
 * import { anonymizeAddress, INVALID_ADDRESS } from "./anonymize.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(anonymizeAddress("fe80::1%eth0"), INVALID_ADDRESS);
 * ```
 */
export const INVALID_ADDRESS = "invalid";

// The longest accepted form, "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535",
// has 53 characters; refusing longer input up front bounds the work per call.
const MAX_INPUT_LENGTH = 53;

const COLON = 0x3a;
const DOT = 0x2e;
const OPEN_BRACKET = 0x5b;
const ZERO = 0x30;

// Reused between calls: the parse is synchronous, and allocating per message
// would be the largest cost of the IPv6 path.
const groups = new Uint16Array(8);

/**
 * Masks a client address for storage.
 *
 * | input | output |
 * | --- | --- |
 * | IPv4 `a.b.c.d`, or `a.b.c.d:port` | `a.b.c.X` |
 * | IPv4-mapped IPv6 `::ffff:a.b.c.d` or `::ffff:hhhh:hhhh`, bare or `[..]:port` | `a.b.c.X` |
 * | 6to4 IPv6 `2002:aabb:ccdd::/16` | `2002:aabb:cc00::X`, as its bits 16–47 are an IPv4 address |
 * | other IPv6, bare or `[..]` with optional `:port` | the /48 prefix in RFC 5952 form, then `X`: `2001:db8:85a3::X` |
 * | anything else | {@linkcode INVALID_ADDRESS} |
 *
 * Parsing is strict: IPv4 octets are decimal 0–255 without leading zeros (as
 * `010` reads as 8 to some parsers), IPv6 follows RFC 4291 text form, ports
 * are 0–65535, and zone ids (`%eth0`), whitespace and other text make the
 * whole input invalid. The IPv6 output is built from the first three 16-bit
 * groups only, so it can never carry more than 48 bits of the address.
 *
 * @param addr The raw client address. Never logged or echoed back.
 * @returns The masked address, or {@linkcode INVALID_ADDRESS}.
 *
 * @example Mask IPv4, IPv6 and mapped forms
 * ```ts
 * import { anonymizeAddress } from "./anonymize.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(anonymizeAddress("1.2.3.4"), "1.2.3.X");
 * assert.equal(anonymizeAddress("1.2.3.4:5678"), "1.2.3.X");
 * assert.equal(anonymizeAddress("2001:DB8:85a3:8d3:1319:8a2e:370:7348"), "2001:db8:85a3::X");
 * assert.equal(anonymizeAddress("[2001:db8::1]:443"), "2001:db8::X");
 * assert.equal(anonymizeAddress("::ffff:102:304"), "1.2.3.X");
 * assert.equal(anonymizeAddress("01.2.3.4"), "invalid");
 * ```
 */
export function anonymizeAddress(addr: string): string {
  const len = addr.length;
  if (len === 0 || len > MAX_INPUT_LENGTH) return INVALID_ADDRESS;
  if (addr.charCodeAt(0) === OPEN_BRACKET) return maskBracketed(addr, len);
  const firstColon = addr.indexOf(":");
  if (firstColon === -1) return maskIpv4Text(addr, len);
  // Every IPv6 text form has at least two colons, so a single colon can only
  // separate an IPv4 address from its port.
  if (addr.indexOf(":", firstColon + 1) === -1) {
    return isPort(addr, firstColon + 1, len) ? maskIpv4Text(addr, firstColon) : INVALID_ADDRESS;
  }
  return parseIpv6(addr, 0, len) ? maskIpv6() : INVALID_ADDRESS;
}

function maskBracketed(addr: string, len: number): string {
  const close = addr.indexOf("]");
  if (close === -1 || !parseIpv6(addr, 1, close)) return INVALID_ADDRESS;
  if (close === len - 1) return maskIpv6();
  if (addr.charCodeAt(close + 1) !== COLON || !isPort(addr, close + 2, len)) {
    return INVALID_ADDRESS;
  }
  return maskIpv6();
}

/**
 * Masks the IPv4 address in `addr[0, end)`. Strict parsing means the text is
 * already canonical, so slicing it is cheaper than printing the octets.
 */
function maskIpv4Text(addr: string, end: number): string {
  if (parseIpv4(addr, 0, end) < 0) return INVALID_ADDRESS;
  return addr.slice(0, addr.lastIndexOf(".", end) + 1) + "X";
}

function maskIpv6(): string {
  const g0 = groups[0]!;
  const g1 = groups[1]!;
  let g2 = groups[2]!;
  if (
    g0 === 0 && g1 === 0 && g2 === 0 && groups[3] === 0 && groups[4] === 0 &&
    groups[5] === 0xffff
  ) {
    const hi = groups[6]!;
    const lo = groups[7]!;
    return `${hi >>> 8}.${hi & 0xff}.${lo >>> 8}.X`;
  }
  if (g0 === 0x2002) g2 &= 0xff00;
  // Groups 3–7 are dropped, so the trailing run of zeros always includes them
  // and RFC 5952 compression reduces to trimming zero groups off the end.
  if (g2 !== 0) return `${g0.toString(16)}:${g1.toString(16)}:${g2.toString(16)}::X`;
  if (g1 !== 0) return `${g0.toString(16)}:${g1.toString(16)}::X`;
  if (g0 !== 0) return `${g0.toString(16)}::X`;
  return "::X";
}

function isDigit(c: number): boolean {
  return c >= ZERO && c <= 0x39;
}

function isPort(s: string, start: number, end: number): boolean {
  const n = end - start;
  if (n < 1 || n > 5) return false;
  let value = 0;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (!isDigit(c)) return false;
    value = value * 10 + c - ZERO;
  }
  return value <= 0xffff;
}

/** The address as an unsigned 32-bit number, or -1 if `s[start, end)` is not strict dotted-decimal IPv4. */
function parseIpv4(s: string, start: number, end: number): number {
  let value = 0;
  let i = start;
  for (let octets = 1;; octets++) {
    if (i >= end) return -1;
    const first = s.charCodeAt(i++);
    if (!isDigit(first)) return -1;
    let octet = first - ZERO;
    while (i < end) {
      const c = s.charCodeAt(i);
      if (!isDigit(c)) break;
      if (octet === 0) return -1;
      octet = octet * 10 + c - ZERO;
      if (octet > 255) return -1;
      i++;
    }
    value = value * 256 + octet;
    if (octets === 4) return i === end ? value : -1;
    if (i >= end || s.charCodeAt(i) !== DOT) return -1;
    i++;
  }
}

function hexValue(c: number): number {
  if (c >= ZERO && c <= 0x39) return c - ZERO;
  const lower = c | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x57;
  return -1;
}

/** Fills `groups` from `s[start, end)`; false unless it is an RFC 4291 IPv6 text form without zone. */
function parseIpv6(s: string, start: number, end: number): boolean {
  let count = 0;
  let gap = -1;
  let i = start;
  if (end - start >= 2 && s.charCodeAt(i) === COLON) {
    if (s.charCodeAt(i + 1) !== COLON) return false;
    gap = 0;
    i += 2;
  }
  while (i < end) {
    if (count === 8) return false;
    let value = 0;
    let j = i;
    for (; j < end && j - i < 5; j++) {
      const h = hexValue(s.charCodeAt(j));
      if (h < 0) break;
      value = value * 16 + h;
    }
    const digits = j - i;
    if (digits === 0 || digits > 4) return false;
    if (j < end && s.charCodeAt(j) === DOT) {
      // An IPv4 tail stands for the last two groups and ends the address.
      if (count > 6 || (gap === -1 && count !== 6)) return false;
      const v4 = parseIpv4(s, i, end);
      if (v4 < 0) return false;
      groups[count++] = v4 >>> 16;
      groups[count++] = v4 & 0xffff;
      i = end;
      break;
    }
    groups[count++] = value;
    i = j;
    if (i === end) break;
    if (s.charCodeAt(i) !== COLON) return false;
    i++;
    if (i === end) return false;
    if (s.charCodeAt(i) === COLON) {
      if (gap !== -1) return false;
      gap = count;
      i++;
    }
  }
  if (gap === -1) return count === 8;
  // "::" stands for at least one zero group.
  if (count > 7) return false;
  const tail = count - gap;
  const shift = 8 - count;
  for (let k = tail - 1; k >= 0; k--) groups[gap + shift + k] = groups[gap + k]!;
  groups.fill(0, gap, gap + shift);
  return true;
}
