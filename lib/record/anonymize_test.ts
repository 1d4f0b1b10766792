import assert from "node:assert/strict";
import { isIPv4, isIPv6 } from "node:net";
import { anonymizeAddress, INVALID_ADDRESS } from "./anonymize.ts";
import { seededRandom } from "../../testing/seeded_random.ts";

Deno.test("anonymizeAddress() masks the last IPv4 octet", async (t) => {
  const cases: [string, string][] = [
    ["1.2.3.4", "1.2.3.X"],
    ["0.0.0.0", "0.0.0.X"],
    ["255.255.255.255", "255.255.255.X"],
    ["10.0.100.7", "10.0.100.X"],
    ["192.168.1.254", "192.168.1.X"],
  ];
  await t.step("bare", () => {
    for (const [input, want] of cases) assert.equal(anonymizeAddress(input), want, input);
  });
  await t.step("with a port", () => {
    for (const [input, want] of cases) {
      for (const port of ["0", "80", "5678", "65535"]) {
        assert.equal(anonymizeAddress(`${input}:${port}`), want, `${input}:${port}`);
      }
    }
  });
});

Deno.test("anonymizeAddress() keeps at most the /48 of IPv6", async (t) => {
  const cases: [string, string][] = [
    ["2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::X"],
    ["2001:0DB8:85A3:08D3:1319:8A2E:0370:7348", "2001:db8:85a3::X"],
    ["2001:db8::1", "2001:db8::X"],
    ["2001:db8:0:1::1", "2001:db8::X"],
    ["2001::", "2001::X"],
    ["0:1:0::ffff", "0:1::X"],
    ["0:0:1::", "0:0:1::X"],
    ["::", "::X"],
    ["::1", "::X"],
    ["fe80::1", "fe80::X"],
    ["1:2:3:4:5:6:7:8", "1:2:3::X"],
    ["1::2:3:4:5:6:7", "1:0:2::X"],
    // Without brackets a trailing ":443" is the last group, not a port.
    ["2001:db8::1:443", "2001:db8::X"],
    ["1:2:3:4:5:6:7::", "1:2:3::X"],
    ["ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", "ffff:ffff:ffff::X"],
    ["::1.2.3.4", "::X"],
    ["64:ff9b::1.2.3.4", "64:ff9b::X"],
    ["::ffff:0:1.2.3.4", "::X"],
  ];
  await t.step("bare", () => {
    for (const [input, want] of cases) assert.equal(anonymizeAddress(input), want, input);
  });
  await t.step("bracketed, with and without a port", () => {
    for (const [input, want] of cases) {
      assert.equal(anonymizeAddress(`[${input}]`), want, input);
      assert.equal(anonymizeAddress(`[${input}]:443`), want, input);
    }
  });
  await t.step("6to4 keeps only 24 bits of its embedded IPv4 address", () => {
    assert.equal(anonymizeAddress("2002:c000:0204::1"), "2002:c000:200::X");
    assert.equal(anonymizeAddress("2002:102:3::1"), "2002:102::X");
    assert.equal(anonymizeAddress("[2002:ffff:ffff:1::]:80"), "2002:ffff:ff00::X");
  });
});

Deno.test("anonymizeAddress() treats IPv4-mapped IPv6 as IPv4", () => {
  const cases: [string, string][] = [
    ["::ffff:1.2.3.4", "1.2.3.X"],
    ["::FFFF:1.2.3.4", "1.2.3.X"],
    ["::ffff:102:304", "1.2.3.X"],
    ["0:0:0:0:0:ffff:c0a8:1fe", "192.168.1.X"],
    ["[::ffff:1.2.3.4]:8080", "1.2.3.X"],
    ["[::ffff:ffff:ffff]", "255.255.255.X"],
  ];
  for (const [input, want] of cases) assert.equal(anonymizeAddress(input), want, input);
});

Deno.test("anonymizeAddress() returns the fixed marker for anything else", () => {
  const cases = [
    "",
    " ",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1.2.3.4\n",
    "1.2.3",
    "1.2.3.4.5",
    "1.2.3.",
    ".1.2.3",
    "1..2.3",
    "256.1.1.1",
    "1.2.3.256",
    "1.2.3.1000",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3.00",
    "0x1.2.3.4",
    "1.2.3.4:",
    "1.2.3.4:65536",
    "1.2.3.4:123456",
    "1.2.3.4:-1",
    "1.2.3.4:80 ",
    "[1.2.3.4]:80",
    "localhost",
    "localhost:80",
    "unix:",
    "-",
    "fe80::1%eth0",
    "[fe80::1%25eth0]:443",
    "::%1",
    ":",
    ":::",
    ":1",
    "1:",
    "1::2::3",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "12345::",
    "g::1",
    "2001:db8::1]",
    "[2001:db8::1",
    "[2001:db8::1]443",
    "[2001:db8::1]:",
    "[2001:db8::1]:65536",
    "[]",
    "[]:80",
    "::ffff:01.2.3.4",
    "::ffff:1.2.3",
    "1:2:3:4:5:6:7:1.2.3.4",
    "1:2:3:4:5:6::1.2.3.4",
    "::1.2.3.4:5",
    "1.2.3.4::",
    "１.２.３.４",
    "1.2.3.4".repeat(10),
  ];
  for (const input of cases) {
    assert.equal(anonymizeAddress(input), INVALID_ADDRESS, JSON.stringify(input));
  }
});

/** Stricter than node:net in one place only: zone ids are refused. */
function oracleValid(s: string): boolean {
  const bracketed = /^\[([^\]]*)\](?::(\d{1,5}))?$/.exec(s);
  if (bracketed) {
    const port = bracketed[2];
    return isIPv6(bracketed[1]!) && !s.includes("%") &&
      (port === undefined || Number(port) <= 65535);
  }
  const withPort = /^([^:]*):(\d{1,5})$/.exec(s);
  if (withPort) return isIPv4(withPort[1]!) && Number(withPort[2]) <= 65535;
  return isIPv4(s) || (isIPv6(s) && !s.includes("%"));
}

const hex = (n: number): string => n.toString(16);

/** A random textual form of the 8 `groups`: compressed or not, mixed case, padded, v4 tail. */
function ipv6Text(groups: number[], rand: () => number): string {
  const parts = groups.map((g) => {
    let s = hex(g);
    if (rand() < 0.2) s = s.padStart(4, "0");
    if (rand() < 0.2) s = s.toUpperCase();
    return s;
  });
  if (rand() < 0.2) {
    const v4 = `${groups[6]! >>> 8}.${groups[6]! & 255}.${groups[7]! >>> 8}.${groups[7]! & 255}`;
    parts.splice(6, 2, v4);
  }
  // Compress one run of zero groups, if there is one, at random.
  const zeroRuns: [number, number][] = [];
  for (let i = 0; i < parts.length; i++) {
    if (groups[i] !== 0) continue;
    let j = i;
    while (j < parts.length && groups[j] === 0 && /^0+$/.test(parts[j]!)) j++;
    if (j > i) zeroRuns.push([i, j]);
    i = j;
  }
  if (zeroRuns.length > 0 && rand() < 0.7) {
    const [from, to] = zeroRuns[Math.floor(rand() * zeroRuns.length)]!;
    const head = parts.slice(0, from).join(":");
    const tail = parts.slice(to).join(":");
    return `${head}::${tail}`;
  }
  return parts.join(":");
}

/** What the /48 (or mapped IPv4) must look like, computed without the parser under test. */
function expectedIpv6(groups: number[]): string {
  const [g0, g1, g2] = groups as [number, number, number];
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `${groups[6]! >>> 8}.${groups[6]! & 255}.${groups[7]! >>> 8}.X`;
  }
  const kept = [g0, g1, g0 === 0x2002 ? g2 & 0xff00 : g2];
  while (kept.length > 0 && kept[kept.length - 1] === 0) kept.pop();
  return `${kept.map(hex).join(":")}::X`;
}

const NEAR_ALPHABET = "0123456789abcdefABCDEF.:[]% \t\n-xX\u00a0\u0661";

function randomGroup(rand: () => number): number {
  const r = rand();
  if (r < 0.3) return 0;
  if (r < 0.35) return 0xffff;
  return Math.floor(rand() * 0x10000);
}

Deno.test("anonymizeAddress() never reveals more than it may, for 100k random inputs", async (t) => {
  const rand = seededRandom(0x5eed);
  const pick = (s: string): string => s[Math.floor(rand() * s.length)]!;
  const N = 100_000;
  const counts = { ipv4: 0, ipv6: 0, mutated: 0, text: 0, valid: 0 };

  await t.step("random IPv4, bare or with a port, keeps octets 1-3 and never the 4th", () => {
    for (let n = 0; n < N / 4; n++) {
      const o = [0, 0, 0, 0].map(() => Math.floor(rand() * 256));
      const addr = o.join(".");
      const input = rand() < 0.3 ? `${addr}:${Math.floor(rand() * 65536)}` : addr;
      const out = anonymizeAddress(input);
      assert.equal(out, `${o[0]}.${o[1]}.${o[2]}.X`, input);
      assert.notEqual(out.split(".")[3], String(o[3]));
      counts.ipv4++;
    }
  });

  await t.step("random IPv6 in any text form reveals only bits 0-47", () => {
    for (let n = 0; n < N / 4; n++) {
      const groups = Array.from({ length: 8 }, () => randomGroup(rand));
      if (rand() < 0.1) groups.splice(0, 6, 0, 0, 0, 0, 0, 0xffff);
      if (rand() < 0.05) groups[0] = 0x2002;
      let input = ipv6Text(groups, rand);
      if (rand() < 0.3) input = `[${input}]${rand() < 0.5 ? `:${Math.floor(rand() * 65536)}` : ""}`;
      const out = anonymizeAddress(input);
      const want = expectedIpv6(groups);
      assert.equal(out, want, input);
      if (want.endsWith("::X")) {
        assert.match(out, /^([0-9a-f]{1,4}(:[0-9a-f]{1,4}){0,2})?::X$/, input);
      }
      counts.ipv6++;
    }
  });

  await t.step("mutated addresses agree with node:net and mask or refuse", () => {
    for (let n = 0; n < N / 4; n++) {
      const seed = rand() < 0.5
        ? [0, 0, 0, 0].map(() => Math.floor(rand() * 256)).join(".")
        : ipv6Text(Array.from({ length: 8 }, () => randomGroup(rand)), rand);
      const chars = [...seed];
      const edits = 1 + Math.floor(rand() * 3);
      for (let e = 0; e < edits; e++) {
        const at = Math.floor(rand() * (chars.length + 1));
        const op = rand();
        if (op < 0.33) chars.splice(at, 0, pick(NEAR_ALPHABET));
        else if (op < 0.66) chars.splice(at, 1);
        else chars.splice(at, 1, pick(NEAR_ALPHABET));
      }
      const input = chars.join("");
      const out = anonymizeAddress(input);
      if (oracleValid(input)) {
        counts.valid++;
        assert.notEqual(out, INVALID_ADDRESS, input);
        assert.match(
          out,
          /^(\d{1,3}\.\d{1,3}\.\d{1,3}\.X|([0-9a-f]{1,4}(:[0-9a-f]{1,4}){0,2})?::X)$/,
        );
      } else {
        assert.equal(out, INVALID_ADDRESS, JSON.stringify(input));
      }
      counts.mutated++;
    }
  });

  await t.step("random strings and bytes never come back, even in part", () => {
    const decoder = new TextDecoder();
    for (let n = 0; n < N / 4; n++) {
      let input: string;
      const kind = rand();
      if (kind < 0.4) {
        const bytes = Uint8Array.from({ length: Math.floor(rand() * 60) }, () => rand() * 256);
        input = decoder.decode(bytes);
      } else if (kind < 0.7) {
        input = String.fromCharCode(
          ...Array.from({ length: Math.floor(rand() * 60) }, () => Math.floor(rand() * 0x10000)),
        );
      } else {
        input = Array.from({ length: Math.floor(rand() * 60) }, () => pick(NEAR_ALPHABET)).join(
          "",
        );
      }
      const out = anonymizeAddress(input);
      if (oracleValid(input)) {
        counts.valid++;
        assert.notEqual(out, INVALID_ADDRESS, input);
      } else {
        assert.equal(out, INVALID_ADDRESS, JSON.stringify(input));
        if (!INVALID_ADDRESS.includes(input)) assert.ok(!out.includes(input));
      }
      counts.text++;
    }
  });

  await t.step("every input was checked", () => {
    assert.equal(counts.ipv4 + counts.ipv6 + counts.mutated + counts.text, N);
    // The mutations must also produce valid addresses, or the oracle step proves little.
    assert.ok(counts.valid > 1000, `only ${counts.valid} mutated inputs were valid`);
  });
});
