/**
 * A small TCP proxy for fault tests, meant to sit between a private ch-proxy
 * (nginx) and ClickHouse: it passes connections through, delays responses,
 * drops responses after ClickHouse produced them, mangles request bodies, or
 * refuses service.
 *
 * nginx opens one upstream connection per request (the template sets no
 * upstream keepalive), so each connection is one request and the proxy can
 * decide per request from its request line.
 *
 * @module
 */
import { AnonymizerError } from "../lib/errors.ts";

/**
 * What happens to a connection:
 * - `"pass"`: forwarded both ways;
 * - `"delay"`: forwarded, but the response is held for `delayMs` from its first byte;
 * - `"drop"`: forwarded, the whole response read from ClickHouse and thrown away, then the
 *   connection closed, so the request was applied but nginx answers 502;
 * - `"down"`: accepted and closed at once, unread, so ClickHouse never sees it and nginx answers 502;
 * - `"flip"`: forwarded both ways, but the request body byte at `flipOffset` is inverted (XOR
 *   0xff) on the way, as a faulty network or proxy would; a shorter body passes unchanged.
 */
export type FaultMode = "pass" | "delay" | "drop" | "down" | "flip";

/** One connection the proxy accepted. */
export interface FaultConnection {
  /** When it was accepted (ms since the epoch). */
  at: number;
  /** HTTP request line, e.g. `"POST /?query=INSERT... HTTP/1.1"`; `""` in mode `"down"`. */
  requestLine: string;
  /** The first bytes of the request body as text (up to 512), filled as they pass. */
  bodyPreview: string;
  /** What was done with it. */
  mode: FaultMode;
  /** Bytes of response forwarded to the client. */
  responseBytes: number;
  /** When the upstream response ended (ms), or `null`. */
  upstreamDoneAt: number | null;
  /** Whether a body byte was inverted (mode `"flip"`). */
  flipped: boolean;
}

/** Options of {@linkcode startFaultProxy}. */
export interface FaultProxyOptions {
  /** `host:port` to forward to. Required. */
  upstream: string;
  /** Initial mode. Default: `"pass"`. */
  mode?: FaultMode;
  /** Hold time of mode `"delay"`, ms. Default: `5_000`. */
  delayMs?: number;
  /**
   * Offset in the request body of the byte mode `"flip"` inverts. Default: `64`, past the
   * headers of both body encodings and past short queries such as `SELECT version()`.
   */
  flipOffset?: number;
}

/** A running fault proxy. */
export interface FaultProxy extends AsyncDisposable {
  /** `host:port` it listens on, for `startProxy({ upstream })`. */
  readonly hostPort: string;
  /** Mode of new connections; a {@linkcode FaultProxy.rule} may override it per request. */
  mode: FaultMode;
  /** Hold time of mode `"delay"`, ms. */
  delayMs: number;
  /** Offset in the request body of the byte mode `"flip"` inverts. */
  flipOffset: number;
  /**
   * Picks the mode of one request from its request line; `undefined` keeps
   * {@linkcode FaultProxy.mode}. Not consulted in mode `"down"`. Default: none.
   */
  rule: ((requestLine: string) => FaultMode | undefined) | null;
  /** Every connection so far, oldest first. */
  readonly connections: readonly FaultConnection[];
  /** Stops listening, closes open connections and waits for their handlers. */
  close(): Promise<void>;
}

const HEAD_END = new Uint8Array([13, 10, 13, 10]);
const MAX_HEAD = 64 * 1024;
const PREVIEW = 512;

/**
 * Starts a fault proxy on a free loopback port.
 *
 * @example Pass, then refuse service so that nginx answers 502
 * ```ts
 * import { startFaultProxy } from "./fault_proxy.ts";
 * import { CLICKHOUSE_URL, startProxy } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * await using fault = await startFaultProxy({ upstream: new URL(CLICKHOUSE_URL).host });
 * await using proxy = await startProxy({ upstream: fault.hostPort, rate: "600r/m" });
 * const ask = async () => (await fetch(proxy.url, { method: "POST", body: "SELECT 1" })).text();
 * assert.equal(await ask(), "1\n");
 * await new Promise((r) => setTimeout(r, 150));
 * fault.mode = "down";
 * assert.match(await ask(), /502 Bad Gateway/);
 * assert.deepEqual(fault.connections.map((c) => c.mode), ["pass", "down"]);
 * ```
 */
export function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const m = /^([^:]+):(\d+)$/.exec(options.upstream);
  if (m === null) {
    return Promise.reject(
      new AnonymizerError(
        `Cannot start a fault proxy as upstream must be host:port: current value is "${options.upstream}"`,
        { code: "test_fault_proxy_failed" },
      ),
    );
  }
  const upstream = { hostname: m[1]!, port: Number(m[2]) };
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const handlers = new Set<Promise<void>>();
  const connections: FaultConnection[] = [];
  let closing: Promise<void> | undefined;

  const proxy: FaultProxy = {
    hostPort: `127.0.0.1:${listener.addr.port}`,
    mode: options.mode ?? "pass",
    delayMs: options.delayMs ?? 5_000,
    flipOffset: options.flipOffset ?? 64,
    rule: null,
    connections,
    close() {
      return closing ??= (async () => {
        listener.close();
        await accepting;
        for (const c of open) closeQuietly(c);
        await Promise.allSettled([...handlers]);
      })();
    },
    [Symbol.asyncDispose]() {
      return proxy.close();
    },
  };

  const track = (conn: Deno.Conn): Deno.Conn => {
    open.add(conn);
    return conn;
  };
  const release = (conn: Deno.Conn | null): void => {
    if (conn === null) return;
    open.delete(conn);
    closeQuietly(conn);
  };

  async function handle(client: Deno.Conn): Promise<void> {
    const record: FaultConnection = {
      at: Date.now(),
      requestLine: "",
      bodyPreview: "",
      mode: proxy.mode,
      responseBytes: 0,
      upstreamDoneAt: null,
      flipped: false,
    };
    connections.push(record);
    let server: Deno.Conn | null = null;
    try {
      if (record.mode === "down") return;
      const head = await readHead(client);
      const text = new TextDecoder().decode(head);
      record.requestLine = text.slice(0, Math.max(0, text.indexOf("\r\n")));
      record.mode = proxy.rule?.(record.requestLine) ?? proxy.mode;
      if (record.mode === "down") return;
      const end = indexOf(head, HEAD_END);
      if (end >= 0) record.bodyPreview = text.slice(end + 4, end + 4 + PREVIEW);
      // Bytes of the body seen so far: whatever followed the head in its reads.
      let bodySeen = end >= 0 ? head.length - (end + 4) : 0;
      const flip = (data: Uint8Array, bodyAt: number): void => {
        const i = proxy.flipOffset - bodyAt;
        if (record.mode !== "flip" || record.flipped || i < 0 || i >= data.length) return;
        data[i]! ^= 0xff;
        record.flipped = true;
      };
      if (end >= 0) flip(head.subarray(end + 4), 0);
      server = track(await Deno.connect(upstream));
      await writeAll(server, head);
      const s = server;
      const requestDone = (async () => {
        const buf = new Uint8Array(64 * 1024);
        for (;;) {
          const n = await client.read(buf);
          if (n === null) return;
          flip(buf.subarray(0, n), bodySeen);
          bodySeen += n;
          if (record.bodyPreview.length < PREVIEW) {
            record.bodyPreview += new TextDecoder().decode(buf.subarray(0, n))
              .slice(0, PREVIEW - record.bodyPreview.length);
          }
          await writeAll(s, buf.subarray(0, n));
        }
      })().catch(() => {});
      // The response is read to its end whatever the client does, so that
      // ClickHouse finishes the request as it would behind a slow network.
      const buf = new Uint8Array(64 * 1024);
      let first = true;
      let clientGone = false;
      for (;;) {
        const n = await s.read(buf).catch(() => null);
        if (n === null) break;
        if (record.mode === "drop" || clientGone) continue;
        if (first && record.mode === "delay") await sleep(proxy.delayMs);
        first = false;
        try {
          await writeAll(client, buf.subarray(0, n));
          record.responseBytes += n;
        } catch {
          clientGone = true;
        }
      }
      record.upstreamDoneAt = Date.now();
      release(server);
      release(client);
      await requestDone;
    } catch {
      // A peer went away; both ends are closed below.
    } finally {
      release(server);
      release(client);
    }
  }

  const accepting = (async () => {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      const h = handle(track(conn));
      handlers.add(h);
      h.finally(() => handlers.delete(h));
    }
  })();

  return Promise.resolve(proxy);
}

async function readHead(conn: Deno.Conn): Promise<Uint8Array> {
  let head = new Uint8Array(0);
  const buf = new Uint8Array(16 * 1024);
  while (indexOf(head, HEAD_END) < 0 && head.length < MAX_HEAD) {
    const n = await conn.read(buf);
    if (n === null) break;
    const next = new Uint8Array(head.length + n);
    next.set(head);
    next.set(buf.subarray(0, n), head.length);
    head = next;
  }
  return head;
}

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
