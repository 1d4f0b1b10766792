import assert from "node:assert/strict";
import { encodeRecord } from "./encode_record.ts";
import { AnonymizerError } from "../lib/errors.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";

const RECORD: HttpLogRecord = {
  timestampEpochMilli: 1_700_000_000_000n,
  resourceId: 123_456_789n,
  bytesSent: 1_024n,
  requestTimeMilli: 12n,
  responseStatus: 200,
  cacheStatus: "HIT",
  method: "GET",
  remoteAddr: "192.0.2.1",
  url: "/static/logo.png",
};

function assertInvalid(record: HttpLogRecord, message: RegExp): void {
  assert.throws(() => encodeRecord(record), (err: unknown) => {
    assert.ok(err instanceof AnonymizerError);
    assert.equal(err.code, "encode_invalid");
    assert.match(err.message, message);
    return true;
  });
}

Deno.test("encodeRecord() writes one framed, unpacked segment", async (t) => {
  const bytes = encodeRecord(RECORD);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  await t.step("segment table declares one segment spanning the rest", () => {
    assert.equal(view.getUint32(0, true), 0);
    assert.equal(8 + 8 * view.getUint32(4, true), bytes.length);
  });
  await t.step("root pointer is a struct of 5 data words and 4 pointers", () => {
    assert.equal(view.getUint32(8, true) & 3, 0);
    assert.equal(view.getUint16(12, true), 5);
    assert.equal(view.getUint16(14, true), 4);
  });
  await t.step("text is stored as is (not packed)", () => {
    const text = new TextDecoder().decode(bytes);
    for (const value of ["HIT", "GET", "192.0.2.1", "/static/logo.png"]) {
      assert.ok(text.includes(value + "\0"), value);
    }
  });
});

Deno.test("encodeRecord() refuses values its fields cannot hold", async (t) => {
  await t.step("UInt64 fields outside [0, 2^64)", () => {
    assertInvalid({ ...RECORD, resourceId: -1n }, /field resourceId .*: value is -1$/);
    assertInvalid(
      { ...RECORD, bytesSent: 1n << 64n },
      /field bytesSent .*: value is 18446744073709551616$/,
    );
    assert.ok(encodeRecord({ ...RECORD, requestTimeMilli: (1n << 64n) - 1n }).length > 0);
  });
  await t.step("responseStatus outside UInt16", () => {
    assertInvalid({ ...RECORD, responseStatus: 65_536 }, /responseStatus .*: value is 65536$/);
    assertInvalid({ ...RECORD, responseStatus: 200.5 }, /responseStatus .*: value is 200.5$/);
  });
  await t.step("lone surrogates, without echoing the value", () => {
    assertInvalid(
      { ...RECORD, remoteAddr: "1.2.3.4\ud800" },
      /field remoteAddr as it must not hold a lone surrogate: value is 8 UTF-16 units$/,
    );
  });
});
