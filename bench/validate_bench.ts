import { anonymizeAddress } from "../lib/record/anonymize.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";
import { toRow } from "../lib/record/validate.ts";

// Varied inputs keep V8 from folding a single constant call away.
const IPV4 = Array.from({ length: 1024 }, (_, i) => `10.${i & 255}.${(i * 7) & 255}.${i % 251}`);
const IPV4_PORT = IPV4.map((a, i) => `${a}:${1024 + i}`);
const IPV6 = Array.from(
  { length: 1024 },
  (_, i) => `2001:db8:${i.toString(16)}:8d3:1319:8a2e:370:${(i * 13).toString(16)}`,
);
const MAPPED = IPV4.map((a) => `::ffff:${a}`);
const GARBAGE = Array.from({ length: 1024 }, (_, i) => `not-an-address-${i}`);

// A module-level write the optimizer cannot prove unused, so no call is elided.
let sink = 0;
function each(inputs: string[]): () => void {
  let i = 0;
  return () => {
    sink ^= anonymizeAddress(inputs[i++ & 1023]!).length;
  };
}

Deno.bench("anonymizeAddress() IPv4", { group: "anonymize", baseline: true }, each(IPV4));
Deno.bench("anonymizeAddress() IPv4 with port", { group: "anonymize" }, each(IPV4_PORT));
Deno.bench("anonymizeAddress() IPv6", { group: "anonymize" }, each(IPV6));
Deno.bench("anonymizeAddress() IPv4-mapped IPv6", { group: "anonymize" }, each(MAPPED));
Deno.bench("anonymizeAddress() invalid", { group: "anonymize" }, each(GARBAGE));

const NOW = 1_700_000_000_000;
const RECORDS: HttpLogRecord[] = IPV4.map((remoteAddr, i) => ({
  timestampEpochMilli: BigInt(NOW - i * 1000),
  resourceId: BigInt(i),
  bytesSent: BigInt(i * 100),
  requestTimeMilli: BigInt(i % 50),
  responseStatus: 200,
  cacheStatus: i % 3 === 0 ? "MISS" : "HIT",
  method: i % 10 === 0 ? "post" : "GET",
  remoteAddr,
  url: `/static/assets/${i}/image-${i * 31}.png?v=${i}`,
}));
const LONG_URL = { ...RECORDS[0]!, url: "/" + "a".repeat(100_000) };

let next = 0;
Deno.bench("toRow() typical record", { group: "toRow", baseline: true }, () => {
  const result = toRow(RECORDS[next++ & 1023]!, { now: NOW });
  sink ^= result.ok ? result.row.timestamp : 0;
});

Deno.bench("toRow() 100 KB URL", { group: "toRow" }, () => {
  const result = toRow(LONG_URL, { now: NOW });
  sink ^= result.ok ? result.row.url.length : 0;
});
