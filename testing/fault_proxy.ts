/**
 * The one TCP fault proxy of the tests and benches, meant to sit between a
 * private ch-proxy (nginx) and ClickHouse: it passes connections through,
 * holds responses back, drops responses after ClickHouse produced them,
 * mangles request bodies, or refuses service.
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
 * - `"delay"`: forwarded, but each response byte is held for `delayMs` (as set when it
 *   arrived) before it is passed on, so the request is applied but its client does not know yet;
 * - `"drop"`: forwarded, the whole response read from ClickHouse and thrown away, then the
 *   connection closed, so the request was applied but nginx answers 502;
 * - `"down"`: accepted and closed at once, unread, so ClickHouse never sees it and nginx answers 502;
 * - `"flip"`: forwarded both ways, but the request body byte at `flipOffset` is inverted (XOR
 *   0xff) on the way, as a faulty network or proxy would; a shorter body passes unchanged.
 */
export type FaultMode = "pass" | "delay" | "drop" | "down" | "flip";

/**
 * Where a connection stands:
 * - `"refused"`: closed at once in mode `"down"`;
 * - `"upstream_failed"`: ClickHouse could not be reached;
 * - `"open"`: the request is on its way or awaits an answer;
 * - `"held"`: ClickHouse answered and nothing of the answer reached the client yet;
 * - `"delivering"`: the first bytes of the answer were passed on;
 * - `"delivered"`: the whole answer reached the client;
 * - `"dropped"`: the answer was thrown away (mode `"drop"`), or the client went away before
 *   the whole answer reached it.
 */
export type FaultState =
  | "refused"
  | "upstream_failed"
  | "open"
  | "held"
  | "delivering"
  | "delivered"
  | "dropped";

/** One connection the proxy accepted; a live object, updated as the exchange goes on. */
export interface FaultConnection {
  /** Sequence number, from 1. */
  id: number;
  /** When it was accepted (ms since the epoch). */
  at: number;
  /**
   * HTTP request line as sent, e.g. `"POST /?query=INSERT%20INTO... HTTP/1.1"`; `""` in mode
   * `"down"` and until it arrives.
   */
  requestLine: string;
  /** The first bytes of the request body as text (up to 512), filled as they pass. */
  bodyPreview: string;
  /** What was done with it. */
  mode: FaultMode;
  /** Where it stands. */
  state: FaultState;
  /** Status in ClickHouse's status line, or `null` while none came. */
  status: number | null;
  /** When ClickHouse's first response byte arrived (ms), or `null`. */
  answeredAt: number | null;
  /** Bytes of response forwarded to the client. */
  responseBytes: number;
  /** When the upstream response ended (ms), or `null`. */
  upstreamDoneAt: number | null;
  /** Whether a body byte was inverted (mode `"flip"`). */
  flipped: boolean;
}

/** Options of {@linkcode startFaultProxy}. */
export interface FaultProxyOptions {
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
  /** `127.0.0.1:port` it listens on, for `startProxy({ upstream })`. */
  readonly hostPort: string;
  /** Mode of new connections; a {@linkcode FaultProxy.rule} may override it per request. */
  mode: FaultMode;
  /** Hold time of mode `"delay"` for response bytes arriving from now on, ms. */
  delayMs: number;
  /** Offset in the request body of the byte mode `"flip"` inverts. */
  flipOffset: number;
  /**
   * Picks the mode of one request from its request line; `undefined` keeps
   * {@linkcode FaultProxy.mode}. Not consulted in mode `"down"`. Default: none.
   */
  rule: ((requestLine: string) => FaultMode | undefined) | null;
  /**
   * Sets a {@linkcode FaultProxy.rule} that gives `mode` to the next request
   * whose request line contains `match`, once; every other request keeps
   * {@linkcode FaultProxy.mode}.
   */
  faultNext(mode: FaultMode, match: string): void;
  /** Every connection so far, oldest first. */
  readonly connections: readonly FaultConnection[];
  /**
   * Resolves with the first connection, existing or future, for which `pred`
   * holds; rejects once `timeoutMs` passed without one.
   */
  waitFor(pred: (c: FaultConnection) => boolean, timeoutMs: number): Promise<FaultConnection>;
  /** Stops listening, closes open connections and waits for their handlers. Safe to call twice. */
  close(): Promise<void>;
}

const HEAD_END = new Uint8Array([13, 10, 13, 10]);
const MAX_HEAD = 64 * 1024;
const PREVIEW = 512;
const CHUNK = 64 * 1024;

/**
 * Starts a fault proxy on a free loopback port, forwarding to `upstream`, a
 * `host:port` on 127.0.0.0/8 or `localhost`.
 *
 * @example Pass, then refuse service so that nginx answers 502
 * ```ts
 * import { startFaultProxy } from "./fault_proxy.ts";
 * import { CLICKHOUSE_URL, startProxy } from "./stack.ts";
 * import assert from "node:assert/strict";
 *
 * await using fault = await startFaultProxy(new URL(CLICKHOUSE_URL).host);
 * await using proxy = await startProxy({ upstream: fault.hostPort, rate: "600r/m" });
 * const ask = async () => (await fetch(proxy.url, { method: "POST", body: "SELECT 1" })).text();
 * assert.equal(await ask(), "1\n");
 * await fault.waitFor((c) => c.state === "delivered", 5_000);
 * await new Promise((r) => setTimeout(r, 150));
 * fault.mode = "down";
 * assert.match(await ask(), /502 Bad Gateway/);
 * assert.deepEqual(fault.connections.map((c) => [c.mode, c.state]), [
 *   ["pass", "delivered"],
 *   ["down", "refused"],
 * ]);
 * ```
 */
export function startFaultProxy(
  upstream: string,
  options: FaultProxyOptions = {},
): Promise<FaultProxy> {
  const m = /^(127\.\d+\.\d+\.\d+|localhost):(\d+)$/.exec(upstream);
  if (m === null) {
    return Promise.reject(
      new AnonymizerError(
        `Cannot start a fault proxy as upstream must be a loopback host:port: current value is "${upstream}"`,
        { code: "test_fault_proxy_failed" },
      ),
    );
  }
  const target = { hostname: m[1]!, port: Number(m[2]) };
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const handlers = new Set<Promise<void>>();
  const connections: FaultConnection[] = [];
  const watchers = new Set<() => void>();
  const notify = (): void => {
    for (const w of [...watchers]) w();
  };
  let closing: Promise<void> | undefined;

  const proxy: FaultProxy = {
    hostPort: `127.0.0.1:${listener.addr.port}`,
    mode: options.mode ?? "pass",
    delayMs: options.delayMs ?? 5_000,
    flipOffset: options.flipOffset ?? 64,
    rule: null,
    connections,
    faultNext(mode, match) {
      let done = false;
      proxy.rule = (line) => {
        if (done || !line.includes(match)) return undefined;
        done = true;
        return mode;
      };
    },
    waitFor(pred, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = connections.find(pred);
          if (hit === undefined) return;
          watchers.delete(check);
          clearTimeout(timer);
          resolve(hit);
        };
        const timer = setTimeout(() => {
          watchers.delete(check);
          reject(
            new AnonymizerError(
              `Cannot find the awaited connection as none of ${connections.length} matched within ${timeoutMs} ms`,
              { code: "test_fault_proxy_failed" },
            ),
          );
        }, timeoutMs);
        watchers.add(check);
        check();
      });
    },
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
      id: connections.length + 1,
      at: Date.now(),
      requestLine: "",
      bodyPreview: "",
      mode: proxy.mode,
      state: "open",
      status: null,
      answeredAt: null,
      responseBytes: 0,
      upstreamDoneAt: null,
      flipped: false,
    };
    connections.push(record);
    let server: Deno.Conn | null = null;
    try {
      if (record.mode === "down") {
        record.state = "refused";
        return;
      }
      const head = await readHead(client);
      const text = new TextDecoder().decode(head);
      record.requestLine = text.slice(0, Math.max(0, text.indexOf("\r\n")));
      record.mode = proxy.rule?.(record.requestLine) ?? proxy.mode;
      if (record.mode === "down") {
        record.state = "refused";
        return;
      }
      notify();
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
      try {
        server = track(await Deno.connect(target));
      } catch {
        record.state = "upstream_failed";
        return;
      }
      const s = server;
      await writeAll(s, head);
      await exchange(client, s, record, (data) => {
        flip(data, bodySeen);
        bodySeen += data.length;
        if (record.bodyPreview.length < PREVIEW) {
          record.bodyPreview += new TextDecoder().decode(data)
            .slice(0, PREVIEW - record.bodyPreview.length);
        }
      });
    } catch {
      // A peer went away; both ends are closed below.
    } finally {
      release(server);
      release(client);
      notify();
    }
  }

  /**
   * Forwards the rest of the request as `onRequest` sees it, and the response
   * by the connection's mode. The response is read to its end whatever the
   * client does, so that ClickHouse finishes the request as it would behind a
   * slow network.
   */
  async function exchange(
    client: Deno.Conn,
    server: Deno.Conn,
    record: FaultConnection,
    onRequest: (data: Uint8Array) => void,
  ): Promise<void> {
    let clientGone = false;
    let upstreamDone = false;
    const pending: Array<{ data: Uint8Array; due: number }> = [];
    let wakeWriter: (() => void) | null = null;
    const poke = (): void => {
      wakeWriter?.();
      wakeWriter = null;
    };

    const requestSide = (async () => {
      const buf = new Uint8Array(CHUNK);
      for (;;) {
        const n = await client.read(buf).catch(() => null);
        if (n === null) break;
        onRequest(buf.subarray(0, n));
        if (!await writeAll(server, buf.subarray(0, n)).then(() => true, () => false)) break;
      }
      // nginx closes only once it has its answer or gives up on it.
      clientGone = true;
      poke();
    })();

    const responseSide = (async () => {
      const buf = new Uint8Array(CHUNK);
      for (;;) {
        const n = await server.read(buf).catch(() => null);
        if (n === null) break;
        if (record.status === null) {
          record.answeredAt = Date.now();
          const line = new TextDecoder().decode(buf.subarray(0, Math.min(n, 64)));
          record.status = Number(/^HTTP\/\d\.\d (\d{3})/.exec(line)?.[1] ?? 0);
          record.state = "held";
          notify();
        }
        if (record.mode === "drop" || clientGone) continue;
        const hold = record.mode === "delay" ? proxy.delayMs : 0;
        pending.push({ data: buf.slice(0, n), due: Date.now() + hold });
        poke();
      }
      record.upstreamDoneAt = Date.now();
      upstreamDone = true;
      poke();
    })();

    for (;;) {
      if (clientGone) break;
      const next = pending[0];
      if (next === undefined) {
        if (upstreamDone) break;
        await new Promise<void>((r) => wakeWriter = r);
        continue;
      }
      const wait = next.due - Date.now();
      if (wait > 0) {
        await new Promise<void>((r) => {
          const t = setTimeout(r, wait);
          wakeWriter = () => {
            clearTimeout(t);
            r();
          };
        });
        continue;
      }
      pending.shift();
      try {
        await writeAll(client, next.data);
      } catch {
        clientGone = true;
        break;
      }
      record.responseBytes += next.data.length;
      if (record.state === "held") {
        record.state = "delivering";
        notify();
      }
    }
    if (record.mode === "drop" && record.status !== null) {
      record.state = "dropped";
    } else if (record.status !== null) {
      // A server that keeps the connection open after its answer (ClickHouse 26.9 does) leaves
      // nginx to close it once it has read the whole answer: all written is delivered then.
      record.state = pending.length === 0 && (upstreamDone || record.state === "delivering")
        ? "delivered"
        : "dropped";
    } else if (clientGone) {
      record.state = "dropped";
    }
    notify();
    if (!upstreamDone) {
      // The answer is read to its end unseen; the client learns nothing more.
      closeQuietly(client);
    }
    await responseSide;
    closeQuietly(client);
    await requestSide;
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
