/**
 * A ClickHouse release anonymizer does not know never gets data: `migrate`
 * refuses it in one line, and the flusher keeps rows queued and logs why.
 * The server here is a stand-in on loopback that answers every request with
 * a version string no real server of the test matrix prints; the real servers
 * are covered by the rest of the suite.
 */
import assert from "node:assert/strict";
import { ClickHouseClient } from "../lib/sink/clickhouse/clickhouse_client.ts";
import { Flusher } from "../lib/flusher.ts";
import { ClickHouseSink } from "../lib/sink/clickhouse/clickhouse_sink.ts";
import { openQueue } from "../lib/queue/kv_queue.ts";
import { stockRows } from "../testing/stock_rows.ts";

interface StandIn extends AsyncDisposable {
  url: string;
  /** The SQL of every request, in order. */
  requests: string[];
}

/** Answers `SELECT version()` with `version`, and migrate's discovery as if the database were empty. */
function standIn(version: string): StandIn {
  const requests: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const sql = new URL(req.url).searchParams.get("query") ?? await req.text();
    requests.push(sql);
    const body = sql.endsWith("FORMAT JSONCompact")
      ? JSON.stringify({ data: [[version, 0, []]] })
      : `${version}\n`;
    return new Response(body, { headers: { "X-ClickHouse-Server-Display-Name": "stand-in" } });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    requests,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

Deno.test("anonymizer migrate refuses a ClickHouse release it does not know, in one line", async () => {
  await using server = standIn("1.1.54394");
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-version-" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../main.ts", import.meta.url).pathname,
        "migrate",
        "--direct",
        server.url,
      ],
      env: { KV_PATH: `${dir}/queue.kv`, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr).trim();
    assert.equal(out.code, 1, stderr);
    assert.equal(
      stderr.split("\n").at(-1),
      'Cannot write to ClickHouse as its version must be 18.16 or later, in major.minor form: current value is "1.1.54394"',
    );
    assert.equal(server.requests.length, 1, "only the discovery SELECT was sent");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Flusher keeps rows queued when the server's version is unknown, and sends no INSERT", async (t) => {
  await using server = standIn('"26.9.2.1"');
  const dir = await Deno.makeTempDir({ prefix: "anonymizer-version-" });
  try {
    await using queue = await openQueue(`${dir}/queue.kv`);
    const rows = stockRows(100, 7);
    await queue.append("http_log", 0, rows.map((row, i) => ({ offset: BigInt(i), row })), {
      next: 100n,
    });
    await queue.promote("http_log", 0, 100n);
    const flusher = new Flusher(queue, new ClickHouseSink(new ClickHouseClient(server.url)), {
      spacingMs: 50,
      marginMs: 0,
    });
    flusher.start();
    try {
      await t.step("the version check is answered with text that is not major.minor", async () => {
        for (let i = 0; i < 100 && server.requests.length === 0; i++) {
          await new Promise((r) => setTimeout(r, 20));
        }
        assert.deepEqual(server.requests, ["SELECT version() FORMAT TabSeparated"]);
      });
      await t.step(
        "twenty slots later nothing else was sent, and every row is queued",
        async () => {
          await new Promise((r) => setTimeout(r, 20 * 50));
          assert.equal(server.requests.length, 1, server.requests.join("\n"));
          assert.equal(flusher.status().serverVersion, null);
          assert.equal((await queue.stats()).queuedRows, 100);
        },
      );
    } finally {
      await flusher.stop({ graceMs: 1_000 });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
