import assert from "node:assert/strict";
import { messageToRow } from "../record/message_to_row.ts";
import { encodeRecord } from "../../tools/encode_record.ts";
import type { MessageContext } from "./kafka_source.ts";
import { judgeLetter, UNKNOWN_CODE } from "./_dead_letter_verdict.ts";

const NOW = 1_700_000_000_000;
const DAY_MS = 86_400_000;
const encoder = new TextEncoder();

const oldRecord = encodeRecord({
  timestampEpochMilli: BigInt(NOW - 40 * DAY_MS),
  resourceId: 7n,
  bytesSent: 1n,
  requestTimeMilli: 2n,
  responseStatus: 200,
  cacheStatus: "HIT",
  method: "GET",
  remoteAddr: "1.2.3.4",
  url: "/a",
});

function letter(headers: MessageContext["headers"], timestamp = NOW): MessageContext {
  return { partition: 0, offset: "5", timestamp: String(timestamp), headers };
}

const tooOld = letter({
  "anonymizer.error.code": encoder.encode("timestamp_too_old"),
  "anonymizer.error.message": "too old",
});
const at = (maxPastAgeMs: number) => (value: Uint8Array | null) =>
  messageToRow(value, { now: NOW, maxPastAgeMs });

Deno.test("judgeLetter() replays a letter that passes with the raised setting", () => {
  const v = judgeLetter(oldRecord, tooOld, { filter: {}, toRow: at(60 * DAY_MS) });
  assert.equal(v.outcome, "replayed");
  assert.equal(v.code, "timestamp_too_old");
  assert.ok(v.outcome === "replayed" && v.row.remoteAddr === "1.2.3.X");
});

Deno.test("judgeLetter() keeps a letter dead with the code it fails with now", () => {
  assert.deepEqual(judgeLetter(oldRecord, tooOld, { filter: {}, toRow: at(30 * DAY_MS) }), {
    code: "timestamp_too_old",
    outcome: "dead",
    now: "timestamp_too_old",
  });
  const empty = letter({ "anonymizer.error.code": "timestamp_too_old" });
  assert.deepEqual(judgeLetter(null, empty, { filter: {}, toRow: at(60 * DAY_MS) }), {
    code: "timestamp_too_old",
    outcome: "dead",
    now: "empty",
  });
});

Deno.test("judgeLetter() skips letters of another code or written before since", () => {
  const toRow = at(60 * DAY_MS);
  assert.equal(
    judgeLetter(oldRecord, tooOld, { filter: { code: "status_out_of_range" }, toRow }).outcome,
    "skipped",
  );
  assert.equal(
    judgeLetter(oldRecord, tooOld, { filter: { code: "timestamp_too_old" }, toRow }).outcome,
    "replayed",
  );
  assert.equal(
    judgeLetter(oldRecord, tooOld, { filter: { since: NOW + 1 }, toRow }).outcome,
    "skipped",
  );
  assert.equal(
    judgeLetter(oldRecord, tooOld, { filter: { since: NOW }, toRow }).outcome,
    "replayed",
  );
});

Deno.test("judgeLetter() leaves a row ClickHouse rejected dead, as its source bytes are gone", () => {
  const rejected = letter({
    "anonymizer.error.code": "clickhouse_rejected",
    "content-type": encoder.encode("application/json"),
  });
  const row = encoder.encode(JSON.stringify({ resourceId: "7", remoteAddr: "1.2.3.X" }));
  assert.deepEqual(judgeLetter(row, rejected, { filter: {}, toRow: at(60 * DAY_MS) }), {
    code: "clickhouse_rejected",
    outcome: "dead",
    now: "clickhouse_rejected",
  });
});

Deno.test("judgeLetter() names a letter without a code header unknown, and reads list headers", () => {
  assert.equal(
    judgeLetter(oldRecord, letter({}), { filter: {}, toRow: at(60 * DAY_MS) }).code,
    UNKNOWN_CODE,
  );
  const listed = letter({ "anonymizer.error.code": [encoder.encode("timestamp_too_old"), "x"] });
  assert.equal(
    judgeLetter(oldRecord, listed, { filter: {}, toRow: at(60 * DAY_MS) }).code,
    "timestamp_too_old",
  );
});
