/**
 * Shared pieces of the end-to-end and backlog benchmarks: the service as a
 * child process whose JSON log is parsed live, per-process CPU and memory from
 * /proc, and the host facts a figure is only meaningful with.
 *
 * @module
 */
import process from "node:process";
import { delay, type ServiceProcess, spawnService, type World } from "../testing/pipeline.ts";
import { CLICKHOUSE_TARGET, withKafkaAdmin } from "../testing/stack.ts";

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

/** The service as a child process logging JSON, its lines parsed as they come. */
export interface JsonService extends ServiceProcess {
  /** Every parsed JSON log line so far. */
  readonly records: readonly LogRecord[];
  /** Resolves with the first log record, existing or future, matching `pred`. */
  waitFor(pred: (r: LogRecord) => boolean, timeoutMs: number): Promise<LogRecord>;
}

/**
 * Starts the service with `spawnService()` of testing/pipeline.ts (the
 * world's settings plus `overrides`, /metrics on a free port, any extra
 * `denoFlags` such as `--v8-flags=...`) with LOG_FORMAT=json; each parsed log
 * line is passed to `onRecord`. Its log is `<world.dir>/<name>.log`.
 */
export async function spawnJsonService(
  world: World,
  options: {
    name: string;
    overrides?: Record<string, string>;
    denoFlags?: string[];
    onRecord?: (r: LogRecord) => void;
  },
): Promise<JsonService> {
  const records: LogRecord[] = [];
  const service = await spawnService(world, {
    name: options.name,
    overrides: { ...options.overrides, LOG_FORMAT: "json" },
    metrics: true,
    denoFlags: options.denoFlags ?? [],
    onLine: (line) => {
      if (!line.startsWith("{")) return;
      try {
        const r = JSON.parse(line) as LogRecord;
        records.push(r);
        options.onRecord?.(r);
      } catch {
        // A line that is not one of logtape's JSON lines (e.g. a Deno warning).
      }
    },
  });
  return Object.assign(service, {
    records,
    async waitFor(pred: (r: LogRecord) => boolean, timeoutMs: number): Promise<LogRecord> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = records.find(pred);
        if (hit !== undefined) return hit;
        if (service.hasExited) throw new Error(`The service exited; see ${service.logPath}`);
        if (Date.now() > deadline) {
          throw new Error(
            `No matching service log line within ${timeoutMs} ms; see ${service.logPath}`,
          );
        }
        await delay(100);
      }
    },
  });
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

/** Deletes Kafka topics a benchmark created (they can hold hundreds of MB). */
export async function deleteTopics(topics: string[]): Promise<void> {
  await withKafkaAdmin((admin) => admin.deleteTopics({ topics, timeout: 30_000 }), {
    clientId: "anonymizer-bench",
  });
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

/**
 * The fields every benchmark report ends with: this process's own CPU, the
 * host with its load over the run (stopping `run.load`), the seed, the ClickHouse server, the
 * service's extra flags, the glibc malloc tunables and the code version.
 */
export function reportContext(run: {
  host: ReturnType<typeof hostFacts>;
  load: LoadSampler;
  seed: number;
  serviceFlags: string[];
  code: ReturnType<typeof codeVersion>;
}): Record<string, unknown> {
  const cpu = process.cpuUsage();
  return {
    bench_process_cpu_s: round((cpu.user + cpu.system) / 1e6, 1),
    host: { ...run.host, load_avg_1m: run.load.stop() },
    seed: run.seed,
    // TEST_CLICKHOUSE picks the server and is not part of the recorded command.
    clickhouse: { server: CLICKHOUSE_TARGET.name, url: CLICKHOUSE_TARGET.url },
    service_flags: run.serviceFlags,
    // glibc malloc tunables reach the service through the inherited environment.
    malloc_env: Object.fromEntries(
      Object.entries(Deno.env.toObject()).filter(([k]) => k.startsWith("MALLOC_")),
    ),
    code: run.code,
  };
}

/**
 * Removes a benchmark's world and its topics (they can hold hundreds of MB),
 * or with `keep` only says where they are, to look into after the run.
 */
export async function closeWorld(world: World, keep: boolean): Promise<void> {
  if (keep) {
    progress(`kept ${world.dir}, database ${world.database}, topic ${world.topic}`);
    return;
  }
  await world.close();
  await deleteTopics([world.topic, world.dlqTopic]).catch((err) =>
    progress(`cannot delete topics ${world.topic}: ${err}`)
  );
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
