/**
 * The HTTP listener for operators: `/metrics` (Prometheus text format),
 * `/healthz` (the process is alive), `/readyz` (Kafka joined and KV open;
 * ClickHouse reachability is reported but never makes the service unready,
 * since queueing through an outage is normal operation), `/status.json` (the
 * status snapshot `anonymizer status` prints) and `/` (the same as a page).
 *
 * @module
 */
import type { MetricsSource } from "./metrics.ts";
import type { StatusSnapshot } from "./status.ts";
import { STATUS_PAGE } from "./_status_page.ts";

/** What `/readyz` reports. */
export interface Readiness {
  /** Whether the consumer has joined its group. */
  kafka: boolean;
  /** Whether the KV queue is open. */
  kv: boolean;
  /** Outcome of the last ClickHouse request (informational). */
  clickhouse: string;
}

/** Options of {@linkcode serveObservability}. */
export interface ObservabilityOptions {
  /** Metrics to expose. Required in practice; default: an empty `/metrics`. */
  registry?: MetricsSource;
  /** Readiness at request time. Default: always ready. */
  readiness?: () => Readiness;
  /** The status snapshot, served at `/status.json` and as a page at `/`. Default: neither is served. */
  status?: () => Promise<StatusSnapshot>;
  /** Aborting closes the listener. Default: none. */
  signal?: AbortSignal;
}

/**
 * Serves `/metrics`, `/healthz`, `/readyz`, `/status.json` and `/` on `listen`.
 *
 * @example
 * ```ts
 * import { serveObservability } from "./observability_server.ts";
 * import assert from "node:assert/strict";
 *
 * const ac = new AbortController();
 * const server = serveObservability({ hostname: "127.0.0.1", port: 0 }, {
 *   readiness: () => ({ kafka: false, kv: true, clickhouse: "unknown" }),
 *   signal: ac.signal,
 * });
 * const base = `http://127.0.0.1:${server.addr.port}`;
 * assert.equal((await fetch(`${base}/healthz`).then((r) => r.text())), "ok\n");
 * const ready = await fetch(`${base}/readyz`);
 * assert.equal(ready.status, 503);
 * await ready.body?.cancel();
 * ac.abort();
 * await server.finished;
 * ```
 */
export function serveObservability(
  listen: { hostname: string; port: number },
  options: ObservabilityOptions = {},
): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({
    hostname: listen.hostname,
    port: listen.port,
    signal: options.signal,
    onListen: () => {},
  }, async (req) => {
    const { pathname } = new URL(req.url);
    if (pathname === "/metrics" && options.registry) {
      return new Response(await options.registry.metrics(), {
        headers: { "content-type": options.registry.contentType },
      });
    }
    if (pathname === "/status.json" && options.status) {
      try {
        return Response.json(await options.status(), { headers: { "cache-control": "no-store" } });
      } catch (err) {
        // KV closes while the service stops; the snapshot is then unavailable, not broken.
        return Response.json({ error: `Cannot take a status snapshot: ${String(err)}` }, {
          status: 503,
        });
      }
    }
    if (pathname === "/" && options.status) {
      return new Response(STATUS_PAGE, {
        headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" },
      });
    }
    if (pathname === "/healthz") return new Response("ok\n");
    if (pathname === "/readyz") {
      const r = options.readiness?.() ?? { kafka: true, kv: true, clickhouse: "unknown" };
      return Response.json(r, { status: r.kafka && r.kv ? 200 : 503 });
    }
    return new Response("not found\n", { status: 404 });
  });
}
