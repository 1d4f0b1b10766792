/**
 * A TCP proxy on 127.0.0.1 for fault tests, placed between the private
 * ch-proxy (nginx) and ClickHouse: it can hold ClickHouse's answers for a
 * while (so a request is applied but its client does not know yet), or play
 * dead (accept and close at once, so nginx answers 502).
 *
 * Every connection is recorded as an {@linkcode Exchange}: the request line,
 * the status ClickHouse answered and whether the answer reached the client.
 *
 * @module
 */
import { AnonymizerError } from "../lib/errors.ts";
import { CLICKHOUSE_URL } from "./stack.ts";

/** What happened to one connection through the proxy. */
export interface Exchange {
  /** Sequence number, from 1. */
  id: number;
  /** When the connection was accepted (ms since the epoch). */
  openedAt: number;
  /** First line of the request, e.g. `"POST /?query=INSERT... HTTP/1.1"`; `""` until it arrives. */
  requestLine: string;
  /** Status in ClickHouse's status line, or `null` while none came. */
  status: number | null;
  /** When ClickHouse's first response byte arrived (ms), or `null`. */
  answeredAt: number | null;
  /**
   * `"refused"`: closed at once in down mode; `"upstream_failed"`: ClickHouse
   * unreachable; `"open"`: request on its way or awaiting an answer; `"held"`:
   * answered and held back; `"delivering"`: its first bytes were passed on;
   * `"delivered"`: the whole answer reached the client; `"dropped"`: the
   * client went away before the whole answer reached it.
   */
  state: "refused" | "upstream_failed" | "open" | "held" | "delivering" | "delivered" | "dropped";
}

/** Options of {@linkcode startDelayProxy}. */
export interface DelayProxyOptions {
  /** ClickHouse `host:port` on loopback. Default: the host of `CLICKHOUSE_URL`. */
  upstream?: string;
  /** Initial delay of the upstream → client direction, ms. Default: `0`. */
  delayMs?: number;
}

/** A running delay proxy. */
export interface DelayProxy extends AsyncDisposable {
  /** `127.0.0.1:port`, to use as nginx's upstream. */
  readonly addr: string;
  /** Delay applied to response bytes read from now on, ms. */
  delayMs: number;
  /** `"up"` forwards; `"down"` accepts and closes at once (nginx then answers 502). */
  mode: "up" | "down";
  /** Every connection so far, oldest first (live objects). */
  readonly exchanges: readonly Exchange[];
  /** Resolves with the first exchange, existing or future, matching `pred`; rejects after `timeoutMs`. */
  waitFor(pred: (e: Exchange) => boolean, timeoutMs: number): Promise<Exchange>;
  /** Stops listening and closes every open connection. Safe to call twice. */
  close(): Promise<void>;
}

const CHUNK = 64 * 1024;

/**
 * Starts a delay proxy on a free loopback port.
 *
 * @example Hold answers 200 ms
 * ```ts ignore
 * await using slow = startDelayProxy({ delayMs: 200 });
 * const proxy = await startProxy({ upstream: slow.addr, rate: "120r/m" });
 * ```
 */
export function startDelayProxy(options: DelayProxyOptions = {}): DelayProxy {
  const upstream = options.upstream ?? new URL(CLICKHOUSE_URL).host;
  const m = /^(127\.\d+\.\d+\.\d+|localhost):(\d+)$/.exec(upstream);
  if (m === null) {
    throw new AnonymizerError(
      `Cannot start a delay proxy as the upstream must be a loopback host:port: current value is "${upstream}"`,
      { code: "test_delay_proxy_upstream" },
    );
  }
  const target = { hostname: m[1]!, port: Number(m[2]) };
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const exchanges: Exchange[] = [];
  const conns = new Set<Deno.Conn>();
  const watchers = new Set<() => void>();
  const notify = () => {
    for (const w of [...watchers]) w();
  };
  const tasks = new Set<Promise<void>>();

  const proxy: DelayProxy = {
    addr: `127.0.0.1:${listener.addr.port}`,
    delayMs: options.delayMs ?? 0,
    mode: "up",
    exchanges,
    waitFor(pred, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = exchanges.find(pred);
          if (hit === undefined) return;
          watchers.delete(check);
          clearTimeout(timer);
          resolve(hit);
        };
        const timer = setTimeout(() => {
          watchers.delete(check);
          reject(new Error(`No proxied exchange matched within ${timeoutMs} ms`));
        }, timeoutMs);
        watchers.add(check);
        check();
      });
    },
    close,
    [Symbol.asyncDispose]: close,
  };

  async function handle(client: Deno.Conn): Promise<void> {
    const ex: Exchange = {
      id: exchanges.length + 1,
      openedAt: Date.now(),
      requestLine: "",
      status: null,
      answeredAt: null,
      state: "open",
    };
    exchanges.push(ex);
    conns.add(client);
    if (proxy.mode === "down") {
      ex.state = "refused";
      closeQuietly(client);
      conns.delete(client);
      notify();
      return;
    }
    let server: Deno.Conn;
    try {
      server = await Deno.connect(target);
    } catch {
      ex.state = "upstream_failed";
      closeQuietly(client);
      conns.delete(client);
      notify();
      return;
    }
    conns.add(server);
    let clientGone = false;
    let upstreamDone = false;
    const queue: Array<{ data: Uint8Array; due: number }> = [];
    let wakeWriter: (() => void) | null = null;
    const poke = () => {
      wakeWriter?.();
      wakeWriter = null;
    };

    const requestSide = (async () => {
      const buf = new Uint8Array(CHUNK);
      let head = "";
      for (;;) {
        let n: number | null;
        try {
          n = await client.read(buf);
        } catch {
          n = null;
        }
        if (n === null) break;
        if (ex.requestLine === "") {
          head += new TextDecoder().decode(buf.subarray(0, Math.min(n, 4096)));
          const eol = head.indexOf("\r\n");
          if (eol >= 0) {
            ex.requestLine = decodeQuietly(head.slice(0, eol));
            notify();
          }
        }
        if (!await writeAll(server, buf.subarray(0, n))) break;
      }
      // The client (nginx) closes only once it has its answer or gives up on it.
      clientGone = true;
      poke();
    })();

    const responseSide = (async () => {
      const buf = new Uint8Array(CHUNK);
      for (;;) {
        let n: number | null;
        try {
          n = await server.read(buf);
        } catch {
          n = null;
        }
        if (n === null) break;
        if (ex.status === null) {
          ex.answeredAt = Date.now();
          const line = new TextDecoder().decode(buf.subarray(0, Math.min(n, 64)));
          ex.status = Number(/^HTTP\/\d\.\d (\d{3})/.exec(line)?.[1] ?? 0);
          ex.state = "held";
          notify();
        }
        queue.push({ data: buf.slice(0, n), due: Date.now() + proxy.delayMs });
        poke();
      }
      upstreamDone = true;
      poke();
    })();

    const writer = (async () => {
      for (;;) {
        if (clientGone) break;
        const next = queue[0];
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
        queue.shift();
        if (!await writeAll(client, next.data)) {
          clientGone = true;
          break;
        }
        if (ex.state === "held") {
          ex.state = "delivering";
          notify();
        }
      }
      if (ex.status !== null) {
        // A server that keeps the connection open after its answer (ClickHouse 26.9 does) leaves
        // nginx to close it once it has read the whole answer: all written is delivered then.
        ex.state = queue.length === 0 && (upstreamDone || ex.state === "delivering")
          ? "delivered"
          : "dropped";
      } else if (clientGone) {
        ex.state = "dropped";
      }
      notify();
      closeQuietly(client);
      closeQuietly(server);
    })();

    await Promise.all([requestSide, responseSide, writer]);
    conns.delete(client);
    conns.delete(server);
  }

  const accepting = (async () => {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      const t = handle(conn).catch(() => {});
      tasks.add(t);
      t.finally(() => tasks.delete(t));
    }
  })();

  let closing: Promise<void> | undefined;
  function close(): Promise<void> {
    return closing ??= (async () => {
      try {
        listener.close();
      } catch {
        // Already closed.
      }
      await accepting;
      for (const c of conns) closeQuietly(c);
      await Promise.all(tasks);
    })();
  }
  return proxy;
}

function decodeQuietly(line: string): string {
  try {
    return decodeURIComponent(line.replaceAll("+", " "));
  } catch {
    return line;
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<boolean> {
  try {
    let off = 0;
    while (off < data.byteLength) off += await conn.write(data.subarray(off));
    return true;
  } catch {
    return false;
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
