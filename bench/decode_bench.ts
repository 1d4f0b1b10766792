/**
 * decodeRecord() runs once per Kafka message: the target is well under 10 µs
 * per message. Run with `deno bench -A bench/decode_bench.ts`.
 */
import { Buffer } from "node:buffer";
import { decodeRecord } from "../lib/record/decode.ts";
import { encodeRecord } from "../tools/encode_record.ts";
import { DecodeError } from "../lib/errors.ts";
import { syntheticRecords } from "../tools/synthetic_records.ts";

const SAMPLES = 1_024;
const records = syntheticRecords({ seed: 1, now: 1_700_000_000_000 }).take(SAMPLES).toArray();
const messages = records.map(encodeRecord);

// kafkajs hands out Buffers that view one larger fetch response.
const response = new Uint8Array(messages.reduce((n, m) => n + m.length, 0));
let offset = 0;
const buffers = messages.map((m) => {
  response.set(m, offset);
  offset += m.length;
  return Buffer.from(response.buffer, offset - m.length, m.length);
});

const unicode = records.map((r) => encodeRecord({ ...r, url: `/ünïcødé/日本語${r.url}` }));

const invalid = messages.map((m) => {
  const bytes = m.slice();
  bytes[bytes.length - 9] = 0xff;
  return bytes;
});

let i = 0;

Deno.bench("decodeRecord() of a synthetic record (~200 bytes)", { baseline: true }, () => {
  decodeRecord(messages[i++ % SAMPLES]!);
});

Deno.bench("decodeRecord() of a Buffer viewing a fetch response", () => {
  decodeRecord(buffers[i++ % SAMPLES]!);
});

Deno.bench("decodeRecord() of a record with a non-ASCII url", () => {
  decodeRecord(unicode[i++ % SAMPLES]!);
});

Deno.bench("decodeRecord() rejecting invalid UTF-8 in url", () => {
  try {
    decodeRecord(invalid[i++ % SAMPLES]!);
  } catch (err) {
    if (!(err instanceof DecodeError)) throw err;
  }
});
