/**
 * A private ClickHouse server for tests that stop and restart ClickHouse, of
 * either kind the stack runs: 18.16, rendered from the stack's
 * `stack/clickhouse-config.xml.tmpl` and `stack/clickhouse-users.xml` as
 * scripts/stack.sh renders them; or modern, ClickHouse 26.9 in chDB served by
 * `stack/chdb_server.py` as the stack serves it. Either runs on free loopback
 * ports with a temp data folder, so stopping it never touches the shared
 * stack.
 *
 * @module
 */
import { AnonymizerError } from "../lib/errors.ts";
import {
  CLICKHOUSE_TARGET,
  type ClickHouseTarget,
  fillTemplate,
  freePort,
  readOrEmpty,
} from "./stack.ts";
import { stopAndRemove } from "./_stop_and_remove.ts";

const CONFIG_TEMPLATE = new URL("../stack/clickhouse-config.xml.tmpl", import.meta.url);
const USERS_CONFIG = new URL("../stack/clickhouse-users.xml", import.meta.url);
const SCHEMA_DIR = new URL("../schema/", import.meta.url);
const CHDB_SERVER = new URL("../stack/chdb_server.py", import.meta.url);

/** Options of {@linkcode startClickHouseServer}. */
export interface StartClickHouseServerOptions {
  /** Which server: `"18.16"` or `"modern"`. Default: the test run's, {@linkcode CLICKHOUSE_TARGET}. */
  kind?: ClickHouseTarget["name"];
  /**
   * Defaults of the modern server's default profile, e.g. `{ async_insert: "1" }`,
   * for tests that prove anonymizer sets what it relies on. Default: none, the
   * server's own. 18.16 refuses them.
   */
  defaults?: Record<string, string>;
  /** How long to wait for `SELECT 1` after each start, ms. Default: `60_000`. */
  startTimeoutMs?: number;
  /** How long `stop()` waits after SIGTERM before SIGKILL, ms. Default: `60_000`. */
  stopTimeoutMs?: number;
}

/** A private ClickHouse server started by {@linkcode startClickHouseServer}. */
export interface ClickHouseServer extends AsyncDisposable {
  /** Which server this is. */
  readonly kind: ClickHouseTarget["name"];
  /** HTTP endpoint, e.g. `"http://127.0.0.1:40123"`; the same across restarts. */
  readonly url: string;
  /** HTTP `host:port`, for `startProxy({ upstream })`. */
  readonly httpHostPort: string;
  /** Native protocol port. */
  readonly tcpPort: number;
  /** Temp folder holding the config, data and logs. */
  readonly dir: string;
  /** Whether the server process runs. */
  readonly running: boolean;
  /** Pid of the running server, or `null` while stopped. */
  readonly pid: number | null;
  /** Starts the server again on the same data folder and ports; waits for `SELECT 1`. */
  start(): Promise<void>;
  /** Sends SIGTERM and waits for the exit (SIGKILL after `stopTimeoutMs`). */
  stop(): Promise<void>;
  /** Runs `sql` on this server and returns the body; throws on a non-2xx status. */
  query(sql: string): Promise<string>;
  /** Stops the server and removes its folder. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Starts a private ClickHouse server on free loopback ports with a temp data
 * folder, and waits until it answers `SELECT 1`.
 *
 * @example Stop and start again on the same data
 * ```ts
 * import { startClickHouseServer } from "./clickhouse_server.ts";
 * import assert from "node:assert/strict";
 *
 * await using server = await startClickHouseServer();
 * await server.query("CREATE TABLE t (n UInt8) ENGINE = TinyLog");
 * await server.query("INSERT INTO t VALUES (7)");
 * await server.stop();
 * await server.start();
 * assert.equal(await server.query("SELECT n FROM t"), "7\n");
 * ```
 */
export async function startClickHouseServer(
  options: StartClickHouseServerOptions = {},
): Promise<ClickHouseServer> {
  const template = await Deno.readTextFile(CONFIG_TEMPLATE);
  // A port picked free may be taken before ClickHouse binds it; another try gets others.
  for (let attempt = 1;; attempt++) {
    const dir = await Deno.makeTempDir({ prefix: "clickhouse-test-" });
    const server = new PrivateServer(dir, template, options);
    try {
      await server.start();
      return server;
    } catch (err) {
      await server.close();
      if (!(err instanceof PortTakenError) || attempt === 3) throw err;
    }
  }
}

class PortTakenError extends AnonymizerError {
  constructor(message: string) {
    super(message, { code: "test_clickhouse_port_taken", retriable: true });
    this.name = "PortTakenError";
  }
}

class PrivateServer implements ClickHouseServer {
  readonly kind: ClickHouseTarget["name"];
  readonly url: string;
  readonly httpHostPort: string;
  readonly tcpPort: number;
  readonly dir: string;
  readonly #config: string;
  readonly #errLog: string;
  readonly #template: string;
  readonly #startTimeoutMs: number;
  readonly #stopTimeoutMs: number;
  readonly #defaults: Record<string, string>;
  #child: Deno.ChildProcess | null = null;
  #exited: Promise<Deno.CommandStatus> | null = null;
  #hasExited = false;
  #closing: Promise<void> | undefined;

  constructor(dir: string, template: string, options: StartClickHouseServerOptions) {
    this.dir = dir;
    this.kind = options.kind ?? CLICKHOUSE_TARGET.name;
    this.#defaults = options.defaults ?? {};
    if (this.kind !== "modern" && Object.keys(this.#defaults).length > 0) {
      throw new AnonymizerError(
        `Cannot start ClickHouse 18.16 with other defaults: only the modern server takes them: current value is ${
          JSON.stringify(this.#defaults)
        }`,
        { code: "test_clickhouse_failed" },
      );
    }
    const httpPort = freePort();
    let tcpPort = freePort();
    while (tcpPort === httpPort) tcpPort = freePort();
    this.tcpPort = tcpPort;
    this.httpHostPort = `127.0.0.1:${httpPort}`;
    this.url = `http://${this.httpHostPort}`;
    this.#config = `${dir}/config.xml`;
    this.#errLog = this.kind === "modern"
      ? `${dir}/logs/chdb_server.log`
      : `${dir}/logs/clickhouse-server.err.log`;
    this.#template = template;
    this.#startTimeoutMs = options.startTimeoutMs ?? 60_000;
    this.#stopTimeoutMs = options.stopTimeoutMs ?? 60_000;
  }

  get running(): boolean {
    return this.#child !== null && !this.#hasExited;
  }

  get pid(): number | null {
    return this.running ? this.#child!.pid : null;
  }

  async start(): Promise<void> {
    if (this.running) return;
    if (this.#closing !== undefined) {
      throw new AnonymizerError(`Cannot start ClickHouse in ${this.dir} as it was closed`, {
        code: "test_clickhouse_closed",
      });
    }
    await Deno.mkdir(`${this.dir}/data`, { recursive: true });
    await Deno.mkdir(`${this.dir}/logs`, { recursive: true });
    const child = this.kind === "modern" ? this.#spawnModern() : await this.#spawnLegacy();
    this.#child = child;
    this.#hasExited = false;
    this.#exited = child.status.then((s) => {
      this.#hasExited = true;
      return s;
    });
    const deadline = Date.now() + this.#startTimeoutMs;
    for (;;) {
      if (this.#hasExited) {
        const code = (await this.#exited).code;
        const log = (await readOrEmpty(this.#errLog)).trim().split("\n").slice(-15).join("\n");
        const message =
          `Cannot start ClickHouse ${this.kind} on ${this.httpHostPort}: it exited with code ${code}; ` +
          `the end of ${this.#errLog} says:\n${log}`;
        throw /Address already in use/i.test(log)
          ? new PortTakenError(message)
          : new AnonymizerError(message, { code: "test_clickhouse_failed" });
      }
      if (await this.#answers()) return;
      if (Date.now() > deadline) {
        await this.stop();
        throw new AnonymizerError(
          `Cannot start ClickHouse on ${this.httpHostPort}: no answer to SELECT 1 within ${this.#startTimeoutMs} ms`,
          { code: "test_clickhouse_failed" },
        );
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async stop(): Promise<void> {
    const child = this.#child;
    if (child === null || this.#hasExited) return;
    child.kill("SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        if (!this.#hasExited) child.kill("SIGKILL");
        resolve();
      }, this.#stopTimeoutMs);
    });
    await Promise.race([this.#exited, killed]);
    await this.#exited;
    clearTimeout(timer);
  }

  async query(sql: string): Promise<string> {
    const res = await fetch(`${this.url}/`, {
      method: "POST",
      body: sql,
      signal: AbortSignal.timeout(60_000),
    });
    const text = await res.text();
    if (!res.ok) {
      throw new AnonymizerError(
        `Cannot run ${
          JSON.stringify(sql.slice(0, 200))
        } as ClickHouse at ${this.url} answered ${res.status}: ${text.trim()}`,
        { code: "test_clickhouse_failed" },
      );
    }
    return text;
  }

  close(): Promise<void> {
    return this.#closing ??= stopAndRemove(() => this.stop(), this.dir);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #spawnLegacy(): Promise<Deno.ChildProcess> {
    await Deno.writeTextFile(this.#config, this.#render());
    return new Deno.Command("clickhouse-server", {
      args: [`--config-file=${this.#config}`],
      cwd: this.dir,
      stdin: "null",
      stdout: "null",
      stderr: "null",
      env: { PATH: `${Deno.env.get("PATH") ?? ""}:/usr/sbin:/sbin` },
    }).spawn();
  }

  #spawnModern(): Deno.ChildProcess {
    // exec keeps the pid the server's, so SIGKILL reaches the server itself.
    return new Deno.Command("sh", {
      args: [
        "-c",
        'log="$1"; shift; exec python3 "$0" "$@" >>"$log" 2>&1',
        CHDB_SERVER.pathname,
        this.#errLog,
        `${this.dir}/data`,
        this.httpHostPort.split(":")[1]!,
        ...Object.entries(this.#defaults).flatMap(([k, v]) => ["--setting", `${k}=${v}`]),
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  }

  async #answers(): Promise<boolean> {
    try {
      const res = await fetch(`${this.url}/?query=SELECT%201`, {
        signal: AbortSignal.timeout(2_000),
      });
      return res.ok && (await res.text()) === "1\n";
    } catch {
      return false;
    }
  }

  /** Fills the template as scripts/stack.sh does, then moves the ports off the stack's. */
  #render(): string {
    const values: Record<string, string> = {
      data_dir: `${this.dir}/data/`,
      log_dir: `${this.dir}/logs`,
      users_config: USERS_CONFIG.pathname,
      format_schema_dir: SCHEMA_DIR.pathname,
    };
    let text = fillTemplate(this.#template, values, {
      name: "stack/clickhouse-config.xml.tmpl",
      code: "test_clickhouse_failed",
    });
    const ports = [
      [/<http_port>\d+<\/http_port>/, `<http_port>${this.httpHostPort.split(":")[1]}</http_port>`],
      [/<tcp_port>\d+<\/tcp_port>/, `<tcp_port>${this.tcpPort}</tcp_port>`],
    ] as const;
    for (const [pattern, replacement] of ports) {
      if (!pattern.test(text)) {
        throw new AnonymizerError(
          `Cannot move ClickHouse off the stack's ports as stack/clickhouse-config.xml.tmpl has no ${pattern.source}`,
          { code: "test_clickhouse_failed" },
        );
      }
      text = text.replace(pattern, replacement);
    }
    return text;
  }
}
