/**
 * The service as a child process whose log a test can follow line by line
 * while it runs, to signal it at a precise moment (e.g. right after
 * "Sending INSERT").
 *
 * `spawnService()` in `_pipeline.ts` writes the log through
 * `FsFile.writable`, which Deno (2.7+) buffers in 64 KiB steps until close,
 * so its `waitForLog` cannot see a line while the process is alive. This
 * keeps the output in memory as it arrives and writes the file with
 * `FsFile.write`.
 *
 * @module
 */
import type { World } from "./_pipeline.ts";

const ROOT = new URL("..", import.meta.url);

/** A service child process with a live log. */
export interface LiveService {
  /** Name given at spawn; the log is `<world.dir>/<name>.log`. */
  readonly name: string;
  /** The child. */
  readonly child: Deno.ChildProcess;
  /** Path of the file collecting its stdout and stderr. */
  readonly logPath: string;
  /** When it was spawned (ms since the epoch). */
  readonly spawnedAt: number;
  /** Everything it wrote so far. */
  log(): string;
  /**
   * Resolves with the first match of `pattern` in the log at or after
   * character `from` (default 0) and the time it was seen; rejects after
   * `timeoutMs` (default 60 s) or when the process exits without it.
   */
  waitForLog(
    pattern: RegExp,
    options?: { from?: number; timeoutMs?: number },
  ): Promise<{ match: RegExpExecArray; end: number; seenAt: number }>;
  /** Resolves with the exit status, once its output is drained. */
  readonly exited: Promise<Deno.CommandStatus>;
  /** Sends `signal` (default SIGKILL) unless it already exited, then waits for the exit status. */
  kill(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/** Starts `deno run main.ts run` with the world's settings plus `overrides`. */
export async function spawnLiveService(
  world: World,
  options: { overrides?: Record<string, string>; name?: string } = {},
): Promise<LiveService> {
  const name = options.name ?? "service";
  const logPath = `${world.dir}/${name}.log`;
  const file = await Deno.open(logPath, { create: true, append: true, write: true });
  const child = new Deno.Command(Deno.execPath(), {
    // The service's permissions, as `deno task run` grants them.
    args: [
      "run",
      "--allow-net",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-sys",
      "main.ts",
      "run",
    ],
    cwd: ROOT,
    env: { ...world.env, ...options.overrides, NO_COLOR: "1" },
    clearEnv: false,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const spawnedAt = Date.now();
  let text = "";
  const watchers = new Set<() => void>();
  let writing = Promise.resolve();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      writing = writing.then(async () => {
        let off = 0;
        while (off < chunk.byteLength) off += await file.write(chunk.subarray(off));
      });
      for (const w of [...watchers]) w();
    }
  };
  let done = false;
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
    name,
    child,
    logPath,
    spawnedAt,
    log: () => text,
    exited,
    waitForLog(pattern, opts = {}) {
      const from = opts.from ?? 0;
      const timeoutMs = opts.timeoutMs ?? 60_000;
      const re = new RegExp(
        pattern.source,
        pattern.flags.includes("g") ? pattern.flags : pattern.flags + "g",
      );
      return new Promise((resolve, reject) => {
        const check = () => {
          re.lastIndex = from;
          const match = re.exec(text);
          if (match !== null) {
            finish();
            resolve({ match, end: match.index + match[0].length, seenAt: Date.now() });
          } else if (done) {
            finish();
            reject(
              new Error(
                `${name} exited without logging ${pattern}; its log ends:\n${text.slice(-3000)}`,
              ),
            );
          }
        };
        const timer = setTimeout(() => {
          finish();
          reject(
            new Error(
              `Cannot find ${pattern} in the log of ${name} within ${timeoutMs} ms:\n${
                text.slice(-3000)
              }`,
            ),
          );
        }, timeoutMs);
        const finish = () => {
          clearTimeout(timer);
          watchers.delete(check);
        };
        watchers.add(check);
        check();
      });
    },
    async kill(signal: Deno.Signal = "SIGKILL") {
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

/** Reads one unlabelled gauge or counter from a Prometheus `/metrics` endpoint at `addr`. */
export async function scrapeMetric(addr: string, metric: string): Promise<number | null> {
  const res = await fetch(`http://${addr}/metrics`, { signal: AbortSignal.timeout(5_000) });
  const body = await res.text();
  const m = new RegExp(`^${metric} (\\S+)$`, "m").exec(body);
  return m === null ? null : Number(m[1]);
}

/** A free TCP port on 127.0.0.1 (free when asked; another process may take it after). */
export function freeLoopbackPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  listener.close();
  return listener.addr.port;
}
