import assert from "node:assert/strict";
import { anonymizeAddress, INVALID_ADDRESS } from "../lib/record/anonymize.ts";
import { decodeRecord } from "../lib/record/decode.ts";
import { encodeRecord } from "../tools/encode_record.ts";
import { DecodeError } from "../lib/errors.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { toRow } from "../lib/record/validate.ts";
import { seededRandom } from "../testing/seeded_random.ts";

const NOW = 1_700_000_000_000;

type Outcome =
  | { kind: "stored" }
  | { kind: "decode"; code: string }
  | { kind: "validate"; code: string };

/**
 * The consumer's path for one message. Anything thrown other than a
 * DecodeError escapes and fails the test.
 */
function consume(bytes: Uint8Array): Outcome {
  let record: HttpLogRecord;
  try {
    record = decodeRecord(bytes);
  } catch (err) {
    if (err instanceof DecodeError) return { kind: "decode", code: err.code };
    throw err;
  }
  const result = toRow(record, { now: NOW });
  if (!result.ok) {
    for (const text of [record.remoteAddr, record.url]) {
      if (text.length >= 4) assert.ok(!result.message.includes(text), "payload in a rejection");
    }
    return { kind: "validate", code: result.code };
  }
  assert.equal(result.row.remoteAddr, anonymizeAddress(record.remoteAddr));
  if (result.row.remoteAddr !== INVALID_ADDRESS) {
    assert.ok(result.row.remoteAddr.endsWith("X"), "address left unmasked");
  }
  return { kind: "stored" };
}

class Tally {
  readonly counts = new Map<string, number>();
  total = 0;

  add(outcome: Outcome): void {
    const key = outcome.kind === "stored" ? "stored" : `${outcome.kind}:${outcome.code}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    this.total++;
  }

  of(kind: Outcome["kind"]): number {
    let n = 0;
    for (const [key, count] of this.counts) if (key.split(":")[0] === kind) n += count;
    return n;
  }

  toString(): string {
    return [...this.counts].sort().map(([k, n]) => `${k}=${n}`).join(" ");
  }
}

function randomRecord(rand: () => number): HttpLogRecord {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const octet = () => Math.floor(rand() * 256);
  const group = () => Math.floor(rand() * 0x10000).toString(16);
  return {
    timestampEpochMilli: BigInt(Math.floor(NOW + (rand() - 0.7) * 3_600_000)),
    resourceId: BigInt(Math.floor(rand() * 1e9)),
    bytesSent: BigInt(Math.floor(rand() * 1e7)),
    requestTimeMilli: BigInt(Math.floor(rand() * 5000)),
    responseStatus: pick([200, 204, 301, 304, 404, 500, 503]),
    cacheStatus: pick(["HIT", "MISS", "BYPASS", "", "EXPIRED"]),
    method: pick(["GET", "HEAD", "POST", "get"]),
    remoteAddr: pick([
      `${octet()}.${octet()}.${octet()}.${octet()}`,
      `${octet()}.${octet()}.${octet()}.${octet()}:${Math.floor(rand() * 65536)}`,
      `2001:db8:${group()}:${group()}::${group()}`,
      `[2001:db8::${group()}]:443`,
      `::ffff:${octet()}.${octet()}.${octet()}.${octet()}`,
    ]),
    url: `/p/${Math.floor(rand() * 1e6)}?q=${"x".repeat(Math.floor(rand() * 200))}`,
  };
}

function randomBytes(rand: () => number, length: number): Uint8Array {
  return Uint8Array.from({ length }, () => Math.floor(rand() * 256));
}

function mutate(bytes: Uint8Array, rand: () => number): Uint8Array {
  let out = bytes.slice();
  const edits = 1 + Math.floor(rand() * 4);
  for (let e = 0; e < edits; e++) {
    const at = Math.floor(rand() * out.length);
    const op = rand();
    if (op < 0.35) {
      out[at] = out[at]! ^ (1 << Math.floor(rand() * 8));
    } else if (op < 0.6) {
      out[at] = Math.floor(rand() * 256);
    } else if (op < 0.7) {
      out[at] = [0x00, 0xff, 0x7f, 0x80, 0xc0, 0xed][Math.floor(rand() * 6)]!;
    } else if (op < 0.8) {
      out = out.slice(0, at);
    } else if (op < 0.9) {
      const extra = randomBytes(rand, 1 + Math.floor(rand() * 16));
      const grown = new Uint8Array(out.length + extra.length);
      grown.set(out.subarray(0, at));
      grown.set(extra, at);
      grown.set(out.subarray(at), at + extra.length);
      out = grown;
    } else {
      // Keep the framing consistent with the new length so the body gets parsed.
      const words = Math.max(0, Math.floor((out.length - 8) / 8) + Math.floor(rand() * 8) - 4);
      const size = words * 8;
      const resized = new Uint8Array(8 + size);
      resized.set(out.subarray(0, Math.min(out.length, resized.length)));
      new DataView(resized.buffer).setUint32(4, words, true);
      out = resized;
    }
  }
  return out;
}

Deno.test("decodeRecord() → toRow() ends every message stored or dead-lettered", async (t) => {
  const rand = seededRandom(0xf022);

  await t.step("valid messages round-trip and are stored", () => {
    const tally = new Tally();
    for (let n = 0; n < 5_000; n++) {
      const record = randomRecord(rand);
      const bytes = encodeRecord(record);
      assert.deepEqual(decodeRecord(bytes), record);
      tally.add(consume(bytes));
    }
    assert.equal(tally.of("stored"), tally.total, tally.toString());
  });

  const all = new Tally();

  await t.step("random bytes", () => {
    const tally = new Tally();
    for (let n = 0; n < 20_000; n++) {
      const outcome = consume(randomBytes(rand, Math.floor(rand() * 256)));
      tally.add(outcome);
      all.add(outcome);
    }
    assert.equal(tally.of("stored") + tally.of("decode") + tally.of("validate"), 20_000);
  });

  await t.step("random bodies behind a valid single-segment header", () => {
    const tally = new Tally();
    for (let n = 0; n < 20_000; n++) {
      const words = 1 + Math.floor(rand() * 32);
      const bytes = randomBytes(rand, 8 + words * 8);
      const view = new DataView(bytes.buffer);
      view.setUint32(0, 0, true);
      view.setUint32(4, words, true);
      const outcome = consume(bytes);
      tally.add(outcome);
      all.add(outcome);
    }
    assert.equal(tally.of("stored") + tally.of("decode") + tally.of("validate"), 20_000);
    assert.ok(tally.of("decode") > 0, tally.toString());
  });

  await t.step("mutated valid messages", () => {
    const tally = new Tally();
    for (let n = 0; n < 40_000; n++) {
      const outcome = consume(mutate(encodeRecord(randomRecord(rand)), rand));
      tally.add(outcome);
      all.add(outcome);
    }
    assert.equal(tally.of("stored") + tally.of("decode") + tally.of("validate"), 40_000);
    // Each ending must be reached, or the mutations explore too little.
    for (const kind of ["stored", "decode", "validate"] as const) {
      assert.ok(tally.of(kind) > 100, `${kind}: ${tally.toString()}`);
    }
  });

  await t.step(`every message was counted once (${all})`, () => {
    assert.equal(all.total, 80_000);
    assert.equal(all.of("stored") + all.of("decode") + all.of("validate"), all.total);
  });
});
