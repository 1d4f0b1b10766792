/**
 * Wire compatibility with the reference implementation: the `capnp` tool
 * (Debian package capnproto, installed by scripts/install.sh) encodes what
 * decodeRecord() reads, and decodes what encodeRecord() writes.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { decodeRecord } from "../lib/record/decode.ts";
import { encodeRecord } from "../tools/encode_record.ts";
import { DecodeError } from "../lib/errors.ts";
import type { HttpLogRecord } from "../lib/record/types.ts";

const SCHEMA = fileURLToPath(new URL("../schema/http_log.capnp", import.meta.url));
const UINT64_MAX = (1n << 64n) - 1n;

const CASES: Record<string, HttpLogRecord> = {
  typical: {
    timestampEpochMilli: 1_700_000_000_123n,
    resourceId: 123_456_789n,
    bytesSent: 1_048_576n,
    requestTimeMilli: 250n,
    responseStatus: 200,
    cacheStatus: "HIT",
    method: "GET",
    remoteAddr: "203.0.113.9",
    url: "/static/css/site.css",
  },
  "maximum numbers and empty strings": {
    timestampEpochMilli: UINT64_MAX,
    resourceId: UINT64_MAX,
    bytesSent: UINT64_MAX,
    requestTimeMilli: UINT64_MAX,
    responseStatus: 65_535,
    cacheStatus: "",
    method: "",
    remoteAddr: "",
    url: "",
  },
  "zero numbers and unicode": {
    timestampEpochMilli: 0n,
    resourceId: 0n,
    bytesSent: 0n,
    requestTimeMilli: 0n,
    responseStatus: 0,
    cacheStatus: "MISS",
    method: "HEAD",
    remoteAddr: "2001:db8::1",
    url: "/ünïcødé/日本語/😀/\u{10ffff}",
  },
  "2^63 and a long url": {
    timestampEpochMilli: 1n << 63n,
    resourceId: 999_999_999n,
    bytesSent: 2_097_151n,
    requestTimeMilli: 30_000n,
    responseStatus: 504,
    cacheStatus: "REVALIDATED",
    method: "GET",
    remoteAddr: "255.255.255.255",
    url: "/" + "a1".repeat(2_000),
  },
};

async function capnp(args: string[], input: Uint8Array): Promise<Uint8Array> {
  let child;
  try {
    child = new Deno.Command("capnp", { args, stdin: "piped", stdout: "piped", stderr: "piped" })
      .spawn();
  } catch (err) {
    throw new Error(
      "Cannot run the capnp tool: install Debian package capnproto (bash scripts/install.sh)",
      { cause: err },
    );
  }
  const writer = child.stdin.getWriter();
  await writer.write(input);
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  assert.equal(code, 0, `capnp ${args.join(" ")}: ${new TextDecoder().decode(stderr)}`);
  return stdout;
}

/** The schema-language struct literal of `record`: strings hold no character capnp escapes. */
function textLiteral(record: HttpLogRecord): string {
  const fields = Object.entries(record).map(([name, value]) =>
    `${name} = ${typeof value === "string" ? `"${value}"` : String(value)}`
  );
  return `(${fields.join(", ")})`;
}

function encodeText(record: HttpLogRecord, ...flags: string[]): Promise<Uint8Array> {
  return capnp(
    ["encode", ...flags, SCHEMA, "HttpLogRecord"],
    new TextEncoder().encode(textLiteral(record)),
  );
}

Deno.test("decodeRecord() reads what `capnp encode` writes", async (t) => {
  for (const [name, record] of Object.entries(CASES)) {
    await t.step(name, async () => {
      assert.deepEqual(decodeRecord(await encodeText(record)), record);
    });
  }
  await t.step("multi-segment messages with far pointers (--segment-size=2)", async () => {
    for (const record of Object.values(CASES)) {
      const bytes = await encodeText(record, "--segment-size=2");
      assert.ok(new DataView(bytes.buffer).getUint32(0, true) > 0, "expected several segments");
      assert.deepEqual(decodeRecord(bytes), record);
    }
  });
  await t.step("a packed message is refused with a DecodeError", async () => {
    const bytes = await encodeText(CASES.typical!, "--packed");
    assert.throws(() => decodeRecord(bytes), DecodeError);
  });
});

Deno.test("decodeRecord() reads messages of older and newer schema versions", async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    await t.step("an older schema without remoteAddr and url", async () => {
      const older = `${dir}/older.capnp`;
      await Deno.writeTextFile(
        older,
        `@0xde66e776c76851f2;
struct HttpLogRecord {
  timestampEpochMilli @0 :UInt64; resourceId @1 :UInt64; bytesSent @2 :UInt64;
  requestTimeMilli @3 :UInt64; responseStatus @4 :UInt16; cacheStatus @5 :Text;
  method @6 :Text;
}`,
      );
      const { remoteAddr: _a, url: _u, ...fields } = CASES.typical!;
      const literal = textLiteral(fields as HttpLogRecord);
      const bytes = await capnp(
        ["encode", older, "HttpLogRecord"],
        new TextEncoder().encode(literal),
      );
      assert.deepEqual(decodeRecord(bytes), { ...CASES.typical, remoteAddr: "", url: "" });
    });
    await t.step("a newer schema with an extra field", async () => {
      const newer = `${dir}/newer.capnp`;
      await Deno.writeTextFile(
        newer,
        (await Deno.readTextFile(SCHEMA)).replace(
          "url @8 :Text;",
          "url @8 :Text;\n  country @9 :Text;\n  bytesReceived @10 :UInt64;",
        ),
      );
      const literal = textLiteral(CASES.typical!).replace(
        /\)$/,
        `, country = "CZ", bytesReceived = 77)`,
      );
      const bytes = await capnp(
        ["encode", newer, "HttpLogRecord"],
        new TextEncoder().encode(literal),
      );
      assert.deepEqual(decodeRecord(bytes), CASES.typical);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("encodeRecord() writes what `capnp decode` reads", async (t) => {
  for (const [name, record] of Object.entries(CASES)) {
    await t.step(`${name}: capnp decode --short prints the same values`, async () => {
      const text = new TextDecoder().decode(
        await capnp(["decode", "--short", SCHEMA, "HttpLogRecord"], encodeRecord(record)),
      );
      assert.equal(text.trim(), textLiteral(record));
    });
    await t.step(`${name}: capnp convert binary:json gives the same fields`, async () => {
      const json = JSON.parse(
        new TextDecoder().decode(
          await capnp(
            ["convert", "binary:json", SCHEMA, "HttpLogRecord"],
            encodeRecord(record),
          ),
        ),
      );
      // capnp's JSON codec writes UInt64 as strings, as JSON numbers lose precision above 2^53.
      assert.deepEqual(json, {
        timestampEpochMilli: String(record.timestampEpochMilli),
        resourceId: String(record.resourceId),
        bytesSent: String(record.bytesSent),
        requestTimeMilli: String(record.requestTimeMilli),
        responseStatus: record.responseStatus,
        cacheStatus: record.cacheStatus,
        method: record.method,
        remoteAddr: record.remoteAddr,
        url: record.url,
      });
    });
  }
  await t.step("capnp convert binary:binary keeps the bytes", async () => {
    const bytes = encodeRecord(CASES.typical!);
    assert.deepEqual(await capnp(["convert", "binary:binary"], bytes), bytes);
  });
});
