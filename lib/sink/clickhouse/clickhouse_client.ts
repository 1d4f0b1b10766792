/**
 * A minimal ClickHouse HTTP client on native `fetch`, aware of ch-proxy:
 * every failure is a {@linkcode ClickHouseError} saying whether the request
 * may have been applied.
 *
 * @module
 */
import { classifyFailure, classifyResponse } from "./_classify_response.ts";

/** Options of {@linkcode ClickHouseClient}. */
export interface ClickHouseClientOptions {
  /** User name. Default: `"default"`. */
  user?: string;
  /** Password, sent with HTTP basic auth (never in the URL, which proxies log). Default: `""`. */
  password?: string;
  /** Per-request timeout in milliseconds. Default: `30_000`. */
  timeoutMs?: number;
}

/** Options of {@linkcode ClickHouseClient.query}. */
export interface QueryOptions {
  /** Data sent as the request body; the SQL then goes in the `query` URL parameter. Default: none. */
  body?: Uint8Array;
  /** Extra URL parameters, e.g. settings such as `insert_deduplication_token`. Default: `{}`. */
  params?: Record<string, string>;
  /** Extra HTTP headers, e.g. `Content-Encoding`. Default: `{}`. */
  headers?: Record<string, string>;
  /** Aborts the request. Default: none. */
  signal?: AbortSignal;
  /** Names the request in error messages, e.g. `"INSERT of batch 7"`. Default: the SQL's first word. */
  what?: string;
}

/**
 * Sends SQL to ClickHouse over HTTP.
 *
 * @example A failure says what happened to the request
 * ```ts
 * import { ClickHouseClient } from "./clickhouse_client.ts";
 * import { ClickHouseError } from "../../errors.ts";
 * import assert from "node:assert/strict";
 *
 * // A port nobody listens on: nothing was sent, so the outcome is "refused".
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const { port } = listener.addr;
 * listener.close();
 * const client = new ClickHouseClient(`http://127.0.0.1:${port}`, { timeoutMs: 2_000 });
 * await assert.rejects(client.query("SELECT 1"), (e: ClickHouseError) => e.outcome === "refused");
 * ```
 */
export class ClickHouseClient {
  readonly #url: string;
  readonly #auth: string;
  readonly #timeoutMs: number;

  /** A client for the ClickHouse (or ch-proxy) HTTP endpoint at `url`. */
  constructor(url: string, options: ClickHouseClientOptions = {}) {
    this.#url = url.replace(/\/+$/, "");
    this.#auth = "Basic " + btoa(`${options.user ?? "default"}:${options.password ?? ""}`);
    this.#timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** The endpoint this client talks to. */
  get url(): string {
    return this.#url;
  }

  /** Runs `sql` and returns the response text; throws `ClickHouseError` on any failure. */
  async query(sql: string, options: QueryOptions = {}): Promise<string> {
    const what = options.what ?? sql.trim().split(/\s+/, 1)[0]!.toUpperCase();
    const params = new URLSearchParams(options.params ?? {});
    let body: Uint8Array | string = sql;
    if (options.body !== undefined) {
      params.set("query", sql);
      body = options.body;
    }
    const timeout = AbortSignal.timeout(this.#timeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    let response: Response;
    let text: string;
    try {
      response = await fetch(`${this.#url}/?${params}`, {
        method: "POST",
        headers: { Authorization: this.#auth, ...options.headers },
        body: body as BodyInit,
        signal,
      });
      text = await response.text();
    } catch (cause) {
      throw classifyFailure(what, this.#url, cause);
    }
    if (!response.ok) {
      throw classifyResponse(what, {
        status: response.status,
        headers: response.headers,
        body: text,
      });
    }
    return text;
  }
}
