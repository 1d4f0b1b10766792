/**
 * Builders of malformed Kafka messages, one per case of docs/validation.md
 * (decoder errors, the decision table and the anonymization table). Each
 * built message carries the outcome the documentation promises for it: the
 * dead-letter code, or the exact row ClickHouse must hold. The expectations
 * are written from the documentation, never computed by the product.
 *
 * @module
 */
import { encodeRecord } from "../tools/encode_record.ts";
import type { HttpLogRecord, HttpLogRow } from "../lib/record/types.ts";
import { seededRandom } from "./seeded_random.ts";
import type { ErrorCode } from "../lib/errors.ts";

/** A row as ClickHouse must hold it: the columns anonymizer writes, `batch_id` aside. */
export type StoredForm = HttpLogRow;

/** What must become of a message. */
export type Expected =
  | { outcome: "stored"; row: StoredForm }
  | { outcome: "dead_lettered"; code: ErrorCode };

/** One message to produce, with its documented fate. */
export interface TestMessage {
  /** Case name, e.g. `"timestamp_zero"`; `"good"` for an ordinary record. */
  kind: string;
  /** Kafka message value; `null` is a tombstone. */
  value: Uint8Array | null;
  /** The record's resource id, `null` when the bytes carry none a reader could trust. */
  resourceId: bigint | null;
  /** The raw client address in the payload, `null` when there is none or it is unreadable. */
  remoteAddr: string | null;
  /** The raw URL in the payload, `null` when unreadable. */
  url: string | null;
  /** What must happen to it. */
  expected: Expected;
}

/** Inputs of one builder call. */
export interface BuildContext {
  /** Sequence number of this message among the malformed ones; makes texts unique. */
  index: number;
  /** How many messages of this kind were built before; picks the variant. */
  ordinal: number;
  /** The clock the service will validate against, ms. Builders keep 1 h away from every bound. */
  now: number;
  /** A resource id no other message uses. */
  resourceId: bigint;
  /** Seeded uniform [0, 1). */
  random: () => number;
}

/** A builder of one malformed message. */
export type Builder = (ctx: BuildContext) => TestMessage;

const DAY_MS = 86_400_000;
const MARKER = "[truncated]";
const MAX_URL_BYTES = 8192;
const encoder = new TextEncoder();

/** A valid record: GET, HIT, status 200, an IPv4 address unique to `ctx.index`. */
function baseRecord(ctx: BuildContext): HttpLogRecord {
  return {
    timestampEpochMilli: BigInt(ctx.now - 60_000 - Math.floor(ctx.random() * 3_000_000)),
    resourceId: ctx.resourceId,
    bytesSent: BigInt(Math.floor(ctx.random() * 1_000_000)),
    requestTimeMilli: BigInt(Math.floor(ctx.random() * 30_000)),
    responseStatus: 200,
    cacheStatus: "HIT",
    method: "GET",
    remoteAddr: uniqueIpv4(ctx.index),
    url: `/malformed/${ctx.index}/${Math.floor(ctx.random() * 1e9).toString(36)}.png`,
  };
}

/** 198.18.0.0/15 (benchmarking), unique for the first 131,072 indexes. */
function uniqueIpv4(index: number): string {
  return `198.${18 + ((index >> 16) & 1)}.${(index >> 8) & 255}.${index & 255}`;
}

function maskedIpv4(addr: string): string {
  return addr.slice(0, addr.lastIndexOf(".") + 1) + "X";
}

/** The row the documentation promises for `r` with the given stored values. */
function storedRow(r: HttpLogRecord, fields: Partial<StoredForm> = {}): StoredForm {
  return {
    timestamp: Number(r.timestampEpochMilli / 1000n),
    resourceId: r.resourceId,
    bytesSent: r.bytesSent,
    requestTimeMilli: r.requestTimeMilli,
    responseStatus: r.responseStatus,
    cacheStatus: r.cacheStatus,
    method: r.method,
    remoteAddr: maskedIpv4(r.remoteAddr),
    url: r.url,
    ...fields,
  };
}

function stored(kind: string, r: HttpLogRecord, fields: Partial<StoredForm> = {}): TestMessage {
  return {
    kind,
    value: encodeRecord(r),
    resourceId: r.resourceId,
    remoteAddr: r.remoteAddr,
    url: r.url,
    expected: { outcome: "stored", row: storedRow(r, fields) },
  };
}

function dead(
  kind: string,
  value: Uint8Array | null,
  code: ErrorCode,
  r: HttpLogRecord | null,
): TestMessage {
  return {
    kind,
    value,
    resourceId: r?.resourceId ?? null,
    remoteAddr: r?.remoteAddr ?? null,
    url: r?.url ?? null,
    expected: { outcome: "dead_lettered", code },
  };
}

/**
 * Encodes `r` with text field `field` replaced by raw `bytes` (any bytes, e.g.
 * invalid UTF-8): the field is encoded as a placeholder of the same length,
 * which is then overwritten in place.
 */
function withRawText(
  r: HttpLogRecord,
  field: "cacheStatus" | "method" | "remoteAddr" | "url",
  bytes: Uint8Array,
): Uint8Array {
  const placeholder = "\u0001".repeat(bytes.length - 2) + "~^";
  const value = encodeRecord({ ...r, [field]: placeholder });
  const at = indexOf(value, encoder.encode(placeholder));
  if (at < 0 || bytes.length < 2) throw new Error(`Cannot place raw bytes in ${field}`);
  value.set(bytes, at);
  return value;
}

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** `s` cut to at most `bytes` UTF-8 bytes on a character boundary (written independently of lib/). */
function utf8Prefix(s: string, bytes: number): string {
  let n = 0;
  let out = "";
  for (const ch of s) {
    const len = encoder.encode(ch).length;
    if (n + len > bytes) break;
    out += ch;
    n += len;
  }
  return out;
}

function truncatedUrl(url: string): string {
  return utf8Prefix(url, MAX_URL_BYTES - encoder.encode(MARKER).length) + MARKER;
}

function hex(n: number): string {
  return n.toString(16);
}

function pick<T>(ctx: BuildContext, values: readonly T[]): T {
  return values[ctx.ordinal % values.length]!;
}

/**
 * Every case of docs/validation.md as a builder, keyed by case name. Codes
 * and stored forms are the documented ones.
 */
export const BUILDERS: Readonly<Record<string, Builder>> = {
  // --- The decoder (lib/record/decode.ts): never reaches toRow(), always dead-lettered.
  truncated_tail: (ctx) => {
    const r = baseRecord(ctx);
    const bytes = encodeRecord(r);
    return dead(
      "truncated_tail",
      bytes.slice(0, bytes.length - 1 - (ctx.ordinal % 16)),
      "truncated",
      r,
    );
  },
  truncated_header: (ctx) =>
    dead(
      "truncated_header",
      encodeRecord(baseRecord(ctx)).slice(0, 1 + (ctx.ordinal % 7)),
      "truncated",
      null,
    ),
  trailing_bytes: (ctx) => {
    const r = baseRecord(ctx);
    const bytes = encodeRecord(r);
    const out = new Uint8Array(bytes.length + 8);
    out.set(bytes);
    return dead("trailing_bytes", out, "trailing_bytes", r);
  },
  not_capnp_http_text: (ctx) =>
    dead(
      "not_capnp_http_text",
      encoder.encode(`GET /not-capnp/${ctx.index} HTTP/1.1\r\nHost: example.com\r\n\r\n`),
      "not_capnp",
      null,
    ),
  not_capnp_json: (ctx) =>
    dead(
      "not_capnp_json",
      encoder.encode(JSON.stringify({ timestamp: ctx.now, url: `/json/${ctx.index}` })),
      "not_capnp",
      null,
    ),
  not_capnp_empty_segment: () =>
    // One segment of 0 words: no room for the root pointer.
    dead("not_capnp_empty_segment", new Uint8Array(16), "not_capnp", null),
  not_capnp_root_outside: (ctx) => {
    // One segment of 1 word whose root struct pointer points 1000 words away.
    const bytes = new Uint8Array(16);
    const view = new DataView(bytes.buffer);
    view.setUint32(4, 1, true);
    view.setUint32(8, (1000 + (ctx.ordinal % 100)) << 2, true);
    view.setUint16(12, 5, true);
    view.setUint16(14, 4, true);
    return dead("not_capnp_root_outside", bytes, "not_capnp", null);
  },
  not_capnp_text_unterminated: (ctx) => {
    const r = baseRecord(ctx);
    // The URL's NUL terminator becomes 'x'.
    const bytes = withRawText(r, "url", encoder.encode(`/unterminated/${ctx.index}xx`));
    const at = indexOf(bytes, encoder.encode(`/unterminated/${ctx.index}xx`));
    bytes[at + `/unterminated/${ctx.index}xx`.length] = 0x78;
    return dead("not_capnp_text_unterminated", bytes, "not_capnp", { ...r, url: "" });
  },
  empty_value: () => dead("empty_value", new Uint8Array(0), "empty", null),
  null_value: () => dead("null_value", null, "empty", null),
  too_large: (ctx) => {
    // 66 KB of URL: the message exceeds the decoder's 64 KiB before any URL rule applies.
    const r = { ...baseRecord(ctx), url: "/" + "h".repeat(66_000 + ctx.index) };
    return dead("too_large", encodeRecord(r), "too_large", r);
  },
  url_100_kb: (ctx) => {
    // 100 KB of URL. The URL rule would cut it to 8 KiB, but the decoder's 64 KiB message
    // limit comes first: docs/validation.md lists too_large among the decoder's codes.
    const r = { ...baseRecord(ctx), url: `/big/${ctx.index}/` + "u".repeat(100_000) };
    return dead("url_100_kb", encodeRecord(r), "too_large", r);
  },
  invalid_utf8_url: (ctx) => {
    const r = baseRecord(ctx);
    const raw = new Uint8Array([0x2f, 0x61, ...pick(ctx, BAD_UTF8), 0x62]);
    return dead("invalid_utf8_url", withRawText(r, "url", raw), "invalid_utf8", { ...r, url: "" });
  },
  invalid_utf8_method: (ctx) => {
    const r = baseRecord(ctx);
    const raw = new Uint8Array([0x47, ...pick(ctx, BAD_UTF8), 0x54]);
    return dead("invalid_utf8_method", withRawText(r, "method", raw), "invalid_utf8", r);
  },
  invalid_utf8_cache_status: (ctx) => {
    const r = baseRecord(ctx);
    const raw = new Uint8Array([0x48, ...pick(ctx, BAD_UTF8), 0x54]);
    return dead(
      "invalid_utf8_cache_status",
      withRawText(r, "cacheStatus", raw),
      "invalid_utf8",
      r,
    );
  },
  invalid_utf8_remote_addr: (ctx) => {
    const r = baseRecord(ctx);
    const raw = new Uint8Array([0x31, 0x30, 0x2e, ...pick(ctx, BAD_UTF8), 0x2e, 0x31]);
    return dead(
      "invalid_utf8_remote_addr",
      withRawText(r, "remoteAddr", raw),
      "invalid_utf8",
      { ...r, remoteAddr: "" },
    );
  },

  // --- toRow() rejections.
  timestamp_zero: (ctx) => {
    const r = { ...baseRecord(ctx), timestampEpochMilli: 0n };
    return dead("timestamp_zero", encodeRecord(r), "timestamp_zero", r);
  },
  timestamp_after_2106: (ctx) => {
    const r = {
      ...baseRecord(ctx),
      timestampEpochMilli: pick(ctx, [4_294_967_296_000n, 2n ** 63n, 2n ** 64n - 1n]),
    };
    return dead("timestamp_after_2106", encodeRecord(r), "timestamp_out_of_range", r);
  },
  timestamp_future: (ctx) => {
    const r = { ...baseRecord(ctx), timestampEpochMilli: BigInt(ctx.now + 2 * DAY_MS) };
    return dead("timestamp_future", encodeRecord(r), "timestamp_future", r);
  },
  timestamp_too_old: (ctx) => {
    const r = {
      ...baseRecord(ctx),
      timestampEpochMilli: pick(ctx, [BigInt(ctx.now - 40 * DAY_MS), 1_000n]),
    };
    return dead("timestamp_too_old", encodeRecord(r), "timestamp_too_old", r);
  },
  status_out_of_range: (ctx) => {
    const r = { ...baseRecord(ctx), responseStatus: pick(ctx, [0, 42, 99, 600, 65_535]) };
    return dead("status_out_of_range", encodeRecord(r), "status_out_of_range", r);
  },

  // --- Stored, normalized.
  method_empty: (ctx) =>
    stored("method_empty", { ...baseRecord(ctx), method: "" }, { method: "UNKNOWN" }),
  method_unknown: (ctx) => {
    const method = pick(ctx, ["PROPFIND", "GET ", "poſt", "M".repeat(10_240)]);
    return stored("method_unknown", { ...baseRecord(ctx), method }, { method: "OTHER" });
  },
  method_case: (ctx) => {
    const method = pick(ctx, ["get", "Patch", "oPTIONS", "post"]);
    return stored("method_case", { ...baseRecord(ctx), method }, { method: method.toUpperCase() });
  },
  cache_status_empty: (ctx) =>
    stored("cache_status_empty", { ...baseRecord(ctx), cacheStatus: "" }),
  cache_status_unknown: (ctx) => {
    const cacheStatus = pick(ctx, ["-", "DYNAMIC", "HIT ", "ＨＩＴ"]);
    return stored(
      "cache_status_unknown",
      { ...baseRecord(ctx), cacheStatus },
      { cacheStatus: "OTHER" },
    );
  },
  cache_status_case: (ctx) => {
    const cacheStatus = pick(ctx, ["hit", "Miss", "revalidated"]);
    return stored(
      "cache_status_case",
      { ...baseRecord(ctx), cacheStatus },
      { cacheStatus: cacheStatus.toUpperCase() },
    );
  },
  url_empty: (ctx) => stored("url_empty", { ...baseRecord(ctx), url: "" }),
  url_truncated: (ctx) => {
    // About 60 KB: long, yet the message stays under the decoder's 64 KiB.
    const url = `/long/${ctx.index}/` +
      pick(ctx, ["a".repeat(60_000), "é".repeat(30_000), "😀".repeat(14_000)]);
    return stored("url_truncated", { ...baseRecord(ctx), url }, { url: truncatedUrl(url) });
  },
  url_control_chars: (ctx) => {
    const url = `/ctl/${ctx.index}/a\u0000b\tc\u007fd\u0085e`;
    return stored("url_control_chars", { ...baseRecord(ctx), url }, {
      url: `/ctl/${ctx.index}/a%00b%09c%7Fd%C2%85e`,
    });
  },
  timestamp_rounded_down: (ctx) => {
    const r = baseRecord(ctx);
    const ms = (r.timestampEpochMilli / 1000n) * 1000n + 999n;
    return stored("timestamp_rounded_down", { ...r, timestampEpochMilli: ms });
  },
  status_bounds: (ctx) =>
    stored("status_bounds", { ...baseRecord(ctx), responseStatus: pick(ctx, [100, 599]) }),

  // --- Addresses.
  ipv6: (ctx) => {
    const g2 = 1 + (ctx.index % 0xfffe);
    const remoteAddr = `2001:DB8:${hex(g2).toUpperCase()}:8d3:1319:8a2e:${
      hex(ctx.index & 0xffff)
    }:7348`;
    return stored("ipv6", { ...baseRecord(ctx), remoteAddr }, {
      remoteAddr: `2001:db8:${hex(g2)}::X`,
    });
  },
  ipv6_compressed: (ctx) => {
    const remoteAddr = `2001:db8::${hex(1 + (ctx.index & 0xfffe))}:${hex(0x1000 + ctx.index)}`;
    return stored("ipv6_compressed", { ...baseRecord(ctx), remoteAddr }, {
      remoteAddr: "2001:db8::X",
    });
  },
  ipv6_bracketed_port: (ctx) => {
    const remoteAddr = `[2a00:1450:${hex(0x4000 + (ctx.index & 0xfff))}::200e:${hex(ctx.index)}]:${
      443 + ctx.index
    }`;
    return stored("ipv6_bracketed_port", { ...baseRecord(ctx), remoteAddr }, {
      remoteAddr: `2a00:1450:${hex(0x4000 + (ctx.index & 0xfff))}::X`,
    });
  },
  ipv6_6to4: (ctx) => {
    const remoteAddr = `2002:c000:${hex(0x200 | (ctx.index & 0xff))}::${hex(1 + ctx.index)}`;
    return stored("ipv6_6to4", { ...baseRecord(ctx), remoteAddr }, {
      remoteAddr: "2002:c000:200::X",
    });
  },
  ipv4_mapped: (ctx) => {
    const v4 = `203.0.${(ctx.index >> 8) & 255}.${ctx.index & 255}`;
    return stored("ipv4_mapped", { ...baseRecord(ctx), remoteAddr: `::ffff:${v4}` }, {
      remoteAddr: maskedIpv4(v4),
    });
  },
  ipv4_mapped_hex: (ctx) => {
    // ::ffff:cb00:7100+i is 203.0.113.i
    const remoteAddr = `::ffff:cb00:${hex(0x7100 + (ctx.index & 255))}`;
    return stored("ipv4_mapped_hex", { ...baseRecord(ctx), remoteAddr }, {
      remoteAddr: "203.0.113.X",
    });
  },
  ipv4_port: (ctx) => {
    const v4 = `192.0.${2 + ((ctx.index >> 8) & 1)}.${ctx.index & 255}`;
    return stored("ipv4_port", { ...baseRecord(ctx), remoteAddr: `${v4}:${1024 + ctx.index}` }, {
      remoteAddr: maskedIpv4(v4),
    });
  },
  remote_addr_empty: (ctx) =>
    stored("remote_addr_empty", { ...baseRecord(ctx), remoteAddr: "" }, { remoteAddr: "invalid" }),
  remote_addr_invalid: (ctx) => {
    const remoteAddr = pick(ctx, [
      `not-an-address-${ctx.index}`,
      `01.2.3.${ctx.index & 255}`,
      `fe80::${hex(ctx.index + 1)}%eth0`,
      `10.1.2.${256 + ctx.index}`,
      ` 10.3.4.${ctx.index & 255}`,
      `[10.5.6.${ctx.index & 255}]:80`,
      `2001:db8::${hex(ctx.index)}::1`,
      `client-${ctx.index}.example.net`,
    ]);
    return stored("remote_addr_invalid", { ...baseRecord(ctx), remoteAddr }, {
      remoteAddr: "invalid",
    });
  },
};

/** Invalid UTF-8: lone continuation, overlong '/', surrogate, 0xff, cut 3-byte sequence. */
const BAD_UTF8: readonly number[][] = [[0x80], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xff], [
  0xe2,
  0x82,
]];

/** Options of {@linkcode malformedMessages}. */
export interface MalformedOptions {
  /** How many messages; every kind appears at least once when `count >= kinds`. */
  count: number;
  /** Seed. */
  seed: number;
  /** Validation clock, ms. */
  now: number;
  /** First resource id; ids are consecutive. Default: `10_000_000_000n` (outside synthetic ids). */
  firstResourceId?: bigint;
  /** Kinds to use. Default: all of {@linkcode BUILDERS}. */
  kinds?: readonly string[];
}

/** `count` malformed messages, cycling through the kinds. */
export function malformedMessages(options: MalformedOptions): TestMessage[] {
  const random = seededRandom(options.seed);
  const kinds = options.kinds ?? Object.keys(BUILDERS);
  const first = options.firstResourceId ?? 10_000_000_000n;
  const out: TestMessage[] = [];
  for (let i = 0; i < options.count; i++) {
    const kind = kinds[i % kinds.length]!;
    const build = BUILDERS[kind];
    if (build === undefined) throw new Error(`Cannot build unknown kind ${kind}`);
    const ordinal = Math.floor(i / kinds.length);
    out.push(build({ index: i, ordinal, now: options.now, resourceId: first + BigInt(i), random }));
  }
  return out;
}

/** Good records as test messages (IPv4 addresses, stored as is but masked). */
export function goodMessages(records: readonly HttpLogRecord[]): TestMessage[] {
  return records.map((r) => stored("good", r));
}

/** `a` and `b` interleaved in a seeded random order; each keeps its own order. */
export function interleave<T>(a: readonly T[], b: readonly T[], seed: number): T[] {
  const random = seededRandom(seed);
  const out: T[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const left = a.length - i;
    const right = b.length - j;
    if (random() * (left + right) < left) out.push(a[i++]!);
    else out.push(b[j++]!);
  }
  return out;
}

/**
 * The texts through which raw address `addr` could leak: the address itself
 * and, for the IPv4 inside it (plain, with a port, IPv4-mapped dotted or hex),
 * its dotted form.
 */
export function leakForms(addr: string): string[] {
  const forms = new Set<string>([addr]);
  const dotted = /(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})/.exec(addr);
  if (dotted) forms.add(dotted[1]!);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(addr);
  if (mapped) {
    const hi = parseInt(mapped[1]!, 16);
    const lo = parseInt(mapped[2]!, 16);
    forms.add(`${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`);
  }
  const bracketed = /^\[([^\]]+)\]/.exec(addr);
  if (bracketed) forms.add(bracketed[1]!);
  forms.delete("");
  return [...forms];
}
