import assert from "node:assert/strict";
import { clickhouseQuery, startProxy, uniqueName } from "../testing/stack.ts";

/** Production's client_max_body_size: nginx's default of 1 MiB. */
const MAX_BODY = 1024 * 1024;

/** Sends `rows` (TSV) as an INSERT into `table` through the proxy at `url`. */
async function insertVia(
  url: string,
  table: string,
  rows: BodyInit,
): Promise<{ status: number; text: string }> {
  const query = encodeURIComponent(`INSERT INTO ${table} FORMAT TSV`);
  const res = await fetch(`${url}/?query=${query}`, { method: "POST", body: rows });
  return { status: res.status, text: await res.text() };
}

/** Runs `fn` with a fresh one-column Memory table, dropped afterwards. */
async function withTable(fn: (table: string) => Promise<void>): Promise<void> {
  const table = uniqueName("proxy_test");
  await clickhouseQuery(`CREATE TABLE ${table} (n UInt32) ENGINE = Memory`);
  try {
    await fn(table);
  } finally {
    await clickhouseQuery(`DROP TABLE ${table}`);
  }
}

Deno.test("ch-proxy refuses a second request 1 s after an accepted one", async (t) => {
  await using proxy = await startProxy();
  await withTable(async (table) => {
    await t.step("the first request reaches ClickHouse", async () => {
      const res = await insertVia(proxy.url, table, "1\n");
      assert.equal(res.status, 200, res.text);
    });

    await t.step("a second request 1 s later gets 503", async () => {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const res = await insertVia(proxy.url, table, "2\n");
      assert.equal(res.status, 503, res.text);
    });

    await t.step("ClickHouse never saw the refused request", async () => {
      assert.equal(await clickhouseQuery(`SELECT groupArray(n) FROM ${table}`), "[1]\n");
      const log = await proxy.readAccessLog();
      assert.deepEqual(log.map((e) => [e.status, e.upstreamStatus]), [[200, "200"], [503, ""]]);
    });
  });
});

Deno.test("ch-proxy answers 413 to a body over 1 MiB without using up the request slot", async (t) => {
  await using proxy = await startProxy();
  await withTable(async (table) => {
    await t.step("a body of 1 MiB + 1 byte sent with Content-Length gets 413", async () => {
      const body = new TextEncoder().encode("7\n".repeat(MAX_BODY / 2) + "\n");
      assert.equal(body.length, MAX_BODY + 1);
      const res = await insertVia(proxy.url, table, body);
      assert.equal(res.status, 413, res.text);
    });

    await t.step("a body of exactly 1 MiB right after it is accepted", async () => {
      // Past 16 KiB nginx spools the body to a temp file, so this also proves its workers can.
      const body = new TextEncoder().encode("1\n".repeat(MAX_BODY / 2));
      const res = await insertVia(proxy.url, table, body);
      assert.equal(res.status, 200, res.text);
    });

    await t.step("only the accepted request reached ClickHouse", async () => {
      const rows = await clickhouseQuery(`SELECT count(), sum(n) FROM ${table}`);
      assert.equal(rows, `${MAX_BODY / 2}\t${MAX_BODY / 2}\n`);
      const log = await proxy.readAccessLog();
      assert.deepEqual(log.map((e) => [e.status, e.upstreamStatus]), [[413, ""], [200, "200"]]);
    });
  });
});
