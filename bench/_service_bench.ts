/**
 * Shared pieces of the end-to-end and backlog benchmarks: the service as a
 * child process whose JSON log is parsed live, per-process CPU and memory from
 * /proc, a switchable TCP forwarder to play an unreachable ClickHouse, and the
 * host facts a figure is only meaningful with.
 *
 * @module
 */
import { Kafka, logLevel } from "kafkajs";
import { KAFKA_BROKERS } from "../tests/_stack.ts";

const ROOT = new URL("..", import.meta.url);
const encoder = new TextEncoder();

/** Writes a timestamped progress line to stderr. */
export function progress(message: string): void {
  Deno.stderr.writeSync(encoder.encode(`${new Date().toISOString()} ${message}\n`));
}

/** One line of the service's JSON log (LOG_FORMAT=json, properties flattened). */
export interface LogRecord {
  "@timestamp": string;
  level: string;
  message: string;
  logger: string;
  [property: string]: unknown;
}

/** The service as a child process. */
export interface ServiceChild {
  /** Process id, for /proc. */
  readonly pid: number;
  /** Path of the file collecting its output. */
  readonly logPath: string;
  /** Every parsed JSON log line so far. */
  readonly records: readonly LogRecord[];
  /** Resolves with the exit status once its output is drained. */
  readonly exited: Promise<Deno.CommandStatus>;
  /** Resolves with the first log record, existing or future, matching `pred`. */
  waitFor(pred: (r: LogRecord) => boolean, timeoutMs: number): Promise<LogRecord>;
  /** Sends `signal` (default SIGTERM) unless it exited, and waits for the exit status. */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/**
 * Starts `deno run main.ts run` with the service's own permissions, any
 * extra `denoFlags` (e.g. `--v8-flags=...`), and `env` (LOG_FORMAT is forced
 * to json). Each parsed log line is passed to
 * `onRecord`; every byte of output also goes to `logPath`.
 */
export async function spawnServiceChild(
  env: Record<string, string>,
  options: { logPath: string; onRecord?: (r: LogRecord) => void; denoFlags?: string[] },
): Promise<ServiceChild> {
  const file = await Deno.open(options.logPath, { create: true, append: true, write: true });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...(options.denoFlags ?? []),
      "--allow-net",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-sys",
      "main.ts",
      "run",
    ],
    cwd: ROOT,
    env: { ...env, LOG_FORMAT: "json", NO_COLOR: "1" },
    clearEnv: false,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const records: LogRecord[] = [];
  const watchers = new Set<() => void>();
  let writing = Promise.resolve();
  let done = false;
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    let rest = "";
    for await (const chunk of stream) {
      writing = writing.then(async () => {
        let off = 0;
        while (off < chunk.byteLength) off += await file.write(chunk.subarray(off));
      });
      rest += decoder.decode(chunk, { stream: true });
      const lines = rest.split("\n");
      rest = lines.pop()!;
      for (const line of lines) {
        if (!line.startsWith("{")) continue;
        try {
          const r = JSON.parse(line) as LogRecord;
          records.push(r);
          options.onRecord?.(r);
        } catch {
          // A line that is not one of logtape's JSON lines (e.g. a Deno warning).
        }
      }
      for (const w of [...watchers]) w();
    }
  };
  const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const exited = (async () => {
    const status = await child.status;
    await pumped;
    await writing;
    file.close();
    done = true;
    for (const w of [...watchers]) w();
    return status;
  })();
  return {
    pid: child.pid,
    logPath: options.logPath,
    records,
    exited,
    waitFor(pred, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = records.find(pred);
          if (hit !== undefined || done) {
            clearTimeout(timer);
            watchers.delete(check);
            if (hit !== undefined) resolve(hit);
            else reject(new Error(`The service exited; see ${options.logPath}`));
          }
        };
        const timer = setTimeout(() => {
          watchers.delete(check);
          reject(
            new Error(
              `No matching service log line within ${timeoutMs} ms; see ${options.logPath}`,
            ),
          );
        }, timeoutMs);
        watchers.add(check);
        check();
      });
    },
    async stop(signal: Deno.Signal = "SIGTERM") {
      if (!done) {
        try {
          child.kill(signal);
        } catch {
          // Exited meanwhile.
        }
      }
      return await exited;
    },
  };
}

/** CPU and memory of one process, read from /proc. */
export interface ProcSample {
  /** When read (ms since the epoch). */
  at: number;
  /** User + system CPU seconds of every thread so far. */
  cpuS: number;
  /** Resident set size, MiB (VmRSS). */
  rssMb: number;
  /** Peak resident set size so far, MiB (VmHWM). */
  hwmMb: number;
  /** Anonymous part of the RSS (heap, stacks), MiB (RssAnon). */
  anonMb: number;
  /** File-backed part of the RSS (binary, mapped files), MiB (RssFile). */
  fileMb: number;
}

const CLOCK_TICKS = 100;

/** Reads /proc/<pid>/stat and /proc/<pid>/status; `null` once the process is gone. */
export function readProc(pid: number): ProcSample | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]);
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const kb = (name: string) =>
      Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0);
    return {
      at: Date.now(),
      cpuS: ticks / CLOCK_TICKS,
      rssMb: kb("VmRSS") / 1024,
      hwmMb: kb("VmHWM") / 1024,
      anonMb: kb("RssAnon") / 1024,
      fileMb: kb("RssFile") / 1024,
    };
  } catch {
    return null;
  }
}

/** Samples a process's /proc figures at a fixed interval. */
export class ProcSampler {
  readonly samples: ProcSample[] = [];
  readonly #pid: number;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(pid: number, intervalMs = 1_000) {
    this.#pid = pid;
    this.sample();
    this.#timer = setInterval(() => this.sample(), intervalMs);
  }

  /** Takes one sample now (also called by the timer). */
  sample(): ProcSample | null {
    const s = readProc(this.#pid);
    if (s !== null) this.samples.push(s);
    return s;
  }

  /** Stops sampling. */
  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** CPU seconds at time `at`, linearly interpolated between the samples around it. */
  cpuAt(at: number): number {
    const s = this.samples;
    if (s.length === 0) return 0;
    if (at <= s[0]!.at) return s[0]!.cpuS;
    for (let i = 1; i < s.length; i++) {
      const b = s[i]!;
      if (b.at >= at) {
        const a = s[i - 1]!;
        return a.cpuS + ((b.cpuS - a.cpuS) * (at - a.at)) / Math.max(1, b.at - a.at);
      }
    }
    return s.at(-1)!.cpuS;
  }

  /** Largest sampled RSS (MiB) with `from <= at <= to`. */
  maxRss(from = 0, to = Infinity): number {
    let max = 0;
    for (const s of this.samples) if (s.at >= from && s.at <= to && s.rssMb > max) max = s.rssMb;
    return max;
  }

  /** The sample with the largest RSS with `from <= at <= to`, if any. */
  peak(from = 0, to = Infinity): ProcSample | undefined {
    let best: ProcSample | undefined;
    for (const s of this.samples) {
      if (s.at >= from && s.at <= to && (best === undefined || s.rssMb > best.rssMb)) best = s;
    }
    return best;
  }

  /** The last sample. */
  get last(): ProcSample | undefined {
    return this.samples.at(-1);
  }
}

/** A TCP forwarder on 127.0.0.1 that can play dead. */
export interface Forwarder extends AsyncDisposable {
  /** `127.0.0.1:port`, for nginx's `upstream`. */
  readonly addr: string;
  /** `"up"` forwards to the upstream; `"down"` accepts and closes at once, so nginx answers 502. */
  mode: "up" | "down";
  /** Connections accepted in each mode. */
  readonly counts: { up: number; down: number };
  /** Stops listening and closes open connections. */
  close(): Promise<void>;
}

/** Starts a {@linkcode Forwarder} to `upstream` (a loopback `host:port`). */
export function startForwarder(upstream: string): Forwarder {
  const m = /^(127\.\d+\.\d+\.\d+):(\d+)$/.exec(upstream);
  if (m === null) throw new Error(`Cannot forward to ${upstream}: only 127.0.0.0/8 host:port`);
  const target = { hostname: m[1]!, port: Number(m[2]) };
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  const handle = async (client: Deno.Conn) => {
    if (fwd.mode === "down") {
      fwd.counts.down++;
      client.close();
      return;
    }
    fwd.counts.up++;
    open.add(client);
    let up: Deno.Conn | undefined;
    try {
      up = await Deno.connect(target);
      open.add(up);
      await Promise.allSettled([
        client.readable.pipeTo(up.writable),
        up.readable.pipeTo(client.writable),
      ]);
    } catch {
      // Either side went away; both are closed below.
    } finally {
      for (const c of [client, up]) {
        if (c === undefined) continue;
        open.delete(c);
        try {
          c.close();
        } catch {
          // Already closed by a finished pipe.
        }
      }
    }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const t = handle(conn);
        tasks.add(t);
        t.finally(() => tasks.delete(t));
      }
    } catch {
      // Listener closed.
    }
  })();
  let closing: Promise<void> | undefined;
  const close = () =>
    closing ??= (async () => {
      listener.close();
      for (const c of open) {
        try {
          c.close();
        } catch {
          // Already closed.
        }
      }
      await accepting;
      await Promise.allSettled([...tasks]);
    })();
  const fwd: Forwarder = {
    addr: `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    mode: "up",
    counts: { up: 0, down: 0 },
    close,
    [Symbol.asyncDispose]: close,
  };
  return fwd;
}

/** Deletes Kafka topics a benchmark created (they can hold hundreds of MB). */
export async function deleteTopics(topics: string[]): Promise<void> {
  const admin = new Kafka({
    clientId: "anonymizer-bench",
    brokers: KAFKA_BROKERS.split(","),
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
  try {
    await admin.deleteTopics({ topics, timeout: 30_000 });
  } finally {
    await admin.disconnect();
  }
}

/** Reads every unlabelled sample of a Prometheus `/metrics` endpoint at `addr` (host:port). */
export async function scrape(addr: string): Promise<Map<string, number>> {
  const res = await fetch(`http://${addr}/metrics`, { signal: AbortSignal.timeout(10_000) });
  const out = new Map<string, number>();
  for (const line of (await res.text()).split("\n")) {
    const m = /^([a-z_:][a-z0-9_:]*) (\S+)$/i.exec(line);
    if (m !== null) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

/** A free TCP port on 127.0.0.1 (free when asked). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  listener.close();
  return (listener.addr as Deno.NetAddr).port;
}

/** The 1-minute load average. */
export function loadAvg1(): number {
  return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
}

/** CPU model and online cores, for the report. */
export function hostFacts(): { cpu_model: string; cores: number; memory_gib: number } {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? "unknown";
  const meminfo = Deno.readTextFileSync("/proc/meminfo");
  const memKb = Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
  return {
    cpu_model: model,
    cores: navigator.hardwareConcurrency,
    memory_gib: Math.round(memKb / 1024 / 1024),
  };
}

/** Samples the 1-minute load average every `intervalMs` while a benchmark runs. */
export class LoadSampler {
  readonly values: number[] = [];
  #timer: ReturnType<typeof setInterval>;
  constructor(intervalMs = 5_000) {
    this.values.push(loadAvg1());
    this.#timer = setInterval(() => this.values.push(loadAvg1()), intervalMs);
  }
  stop(): { start: number; end: number; mean: number; max: number } {
    clearInterval(this.#timer);
    this.values.push(loadAvg1());
    const v = this.values;
    return {
      start: v[0]!,
      end: v.at(-1)!,
      mean: round(v.reduce((a, b) => a + b, 0) / v.length, 2),
      max: Math.max(...v),
    };
  }
}

/** The value at quantile `q` (0–1) of ascending `sorted`, nearest rank. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

/** `x` rounded to `digits` decimals. */
export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Size in bytes of a Deno KV (SQLite) file with its WAL and shared-memory files. */
export async function kvDiskBytes(path: string): Promise<number> {
  let bytes = 0;
  for (const suffix of ["", "-wal", "-shm"]) {
    try {
      bytes += (await Deno.stat(path + suffix)).size;
    } catch {
      // Present only while SQLite needs them.
    }
  }
  return bytes;
}

/** RSS of a sample with its anonymous (heap) and file-backed parts, MiB; `null` without one. */
export function rssParts(
  s: ProcSample | undefined,
): { rss: number; anon: number; file: number } | null {
  if (s === undefined) return null;
  return { rss: round(s.rssMb, 1), anon: round(s.anonMb, 1), file: round(s.fileMb, 1) };
}

/**
 * The commit the service code came from, and whether lib/ or main.ts differ
 * from it in the work tree (read-only git calls; `null` outside a checkout).
 */
export function codeVersion(): { commit: string; lib_modified: boolean } | null {
  const git = (...args: string[]) => {
    const out = new Deno.Command("git", { args, cwd: ROOT, stdout: "piped", stderr: "null" })
      .outputSync();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  };
  const commit = git("rev-parse", "--short", "HEAD");
  const status = git("status", "--porcelain", "--", "lib", "main.ts");
  return commit === null ? null : { commit, lib_modified: status !== "" };
}
