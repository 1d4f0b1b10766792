import assert from "node:assert/strict";
import {
  classifyFailure,
  classifyResponse,
  fromClickHouse,
  serverCode,
} from "./_classify_response.ts";

const nginx = new Headers({ server: "nginx/1.22.1", "content-type": "text/html" });
const clickhouse = new Headers({ "x-clickhouse-server-display-name": "vm" });

Deno.test("classifyResponse() tells proxy answers from ClickHouse answers", async (t) => {
  await t.step("nginx 503: refused, ClickHouse never saw it", () => {
    const e = classifyResponse("INSERT of batch 1", {
      status: 503,
      headers: nginx,
      body: "<html>503</html>",
    });
    assert.equal(e.outcome, "refused");
    assert.equal(e.retriable, true);
    assert.equal(e.code, "proxy_refused");
  });
  await t.step("nginx 413: too large, not applied", () => {
    const e = classifyResponse("INSERT of batch 1", { status: 413, headers: nginx, body: "" });
    assert.equal(e.outcome, "too_large");
    assert.equal(e.retriable, false);
  });
  await t.step("nginx 502 and 504: outcome unknown", () => {
    for (const status of [502, 504]) {
      const e = classifyResponse("INSERT", { status, headers: nginx, body: "" });
      assert.equal(e.outcome, "unknown");
      assert.equal(e.code, "upstream_unavailable");
    }
  });
  await t.step("a 503 from ClickHouse itself is not a proxy refusal", () => {
    const e = classifyResponse("INSERT", {
      status: 503,
      headers: clickhouse,
      body: "Code: 999. boom",
    });
    assert.equal(e.outcome, "unknown");
  });
});

Deno.test("classifyResponse() sorts ClickHouse errors by whether data was written", async (t) => {
  await t.step("parse and type errors are poison: rejected, not retriable", () => {
    for (const code of [27, 53, 131, 691]) {
      const e = classifyResponse("INSERT", {
        status: 500,
        headers: clickhouse,
        body: `Code: ${code}, e.displayText() = DB::Exception: bad, e.what() = DB::Exception`,
      });
      assert.equal(e.outcome, "rejected", `code ${code}`);
      assert.equal(e.retriable, false);
      assert.equal(e.serverCode, code);
    }
  });
  await t.step("an unknown Enum element is poison on modern servers too (code 691)", () => {
    const e = classifyResponse("INSERT", {
      status: 500,
      headers: clickhouse,
      body: "Code: 691. DB::Exception: Unknown element 'POST' for enum: while executing " +
        "'FUNCTION _CAST(toString(method) :: 5)'. (UNKNOWN_ELEMENT_OF_ENUM) (version 26.9.2.1)",
    });
    assert.deepEqual([e.outcome, e.retriable, e.serverCode], ["rejected", false, 691]);
  });
  await t.step("an unknown Enum element is poison under 49 (18.16) and 36", () => {
    for (const code of [49, 36]) {
      const e = classifyResponse("INSERT", {
        status: 500,
        headers: clickhouse,
        body: `Code: ${code}. DB::Exception: Unknown element 'POST' for type Enum8('GET' = 1)`,
      });
      assert.deepEqual([e.code, e.retriable], ["server_rejected", false], `code ${code}`);
    }
  });
  await t.step("body and transport errors keep the batch: body_rejected, retriable", () => {
    for (const code of [33, 36, 40, 271, 561]) {
      const e = classifyResponse("INSERT", {
        status: 500,
        headers: clickhouse,
        body: `Code: ${code}. DB::Exception: Checksum doesn't match: corrupted data`,
      });
      assert.deepEqual(
        [e.code, e.outcome, e.retriable, e.serverCode],
        ["body_rejected", "rejected", true, code],
      );
      assert.match(e.message, new RegExp(`could not read the body \\(code ${code}\\)`));
    }
  });
  await t.step("schema, auth and load errors wait: rejected, retriable", () => {
    for (const code of [60, 81, 516, 252]) {
      const e = classifyResponse("INSERT", {
        status: 500,
        headers: clickhouse,
        body: `Code: ${code}. DB::Exception: x`,
      });
      assert.equal(e.outcome, "rejected", `code ${code}`);
      assert.equal(e.retriable, true);
    }
  });
  await t.step("other errors may have written: unknown", () => {
    const e = classifyResponse("INSERT", {
      status: 500,
      headers: clickhouse,
      body: "Code: 241. Memory limit",
    });
    assert.equal(e.outcome, "unknown");
    assert.equal(e.serverCode, 241);
  });
});

Deno.test("classifyFailure() treats a refused connection as not sent and the rest as unknown", () => {
  const refused = classifyFailure(
    "INSERT",
    "http://127.0.0.1:8124",
    new TypeError("fetch failed", {
      cause: new Error("tcp connect error: Connection refused (os error 111)"),
    }),
  );
  assert.equal(refused.outcome, "refused");
  const timeout = classifyFailure(
    "INSERT",
    "http://x",
    new DOMException("timed out", "TimeoutError"),
  );
  assert.equal(timeout.outcome, "unknown");
  assert.equal(timeout.code, "timeout");
  const reset = classifyFailure("INSERT", "http://x", new TypeError("connection reset by peer"));
  assert.equal(reset.outcome, "unknown");
  assert.equal(reset.code, "connection_lost");
});

Deno.test("serverCode() and fromClickHouse() read both server generations", () => {
  assert.equal(serverCode("Code: 27, e.displayText() = DB::Exception: x"), 27);
  assert.equal(serverCode("Code: 62. DB::Exception: Syntax error"), 62);
  assert.equal(serverCode("<html>"), undefined);
  assert.equal(fromClickHouse(clickhouse), true);
  assert.equal(fromClickHouse(nginx), false);
});
