/**
 * The service as a child process (`spawnService()` of tests/_pipeline.ts)
 * with what multi-instance tests need on top: its name, whether it exited,
 * and parsers for the log lines that show group joins and flushed batches.
 *
 * @module
 */
import { type ServiceProcess, spawnService, type World } from "./_pipeline.ts";

/** A child service plus helpers to read its log. */
export interface ServiceChild extends ServiceProcess {
  /** Name given at spawn; the log is `<world.dir>/<name>.log`. */
  name: string;
  /** The whole log so far. */
  readLog(): Promise<string>;
  /** Whether the child has exited. */
  readonly exited: boolean;
}

/** Starts the service with the world's settings plus `overrides`, logging to `<world.dir>/<name>.log`. */
export async function spawnServiceChild(
  world: World,
  options: { overrides?: Record<string, string>; name: string },
): Promise<ServiceChild> {
  const service = await spawnService(world, options);
  let exited = false;
  service.child.status.then(() => exited = true);
  return {
    ...service,
    name: options.name,
    readLog: () => Deno.readTextFile(service.logPath),
    get exited() {
      return exited;
    },
  };
}

/** Partition sets of every "Joined group" line in `log`, oldest first. */
export function joinedPartitions(log: string): number[][] {
  return [...log.matchAll(/Joined group \S+ with partitions "?([\d,]+|none)"?/g)]
    .map((m) => m[1] === "none" ? [] : m[1]!.split(",").map(Number));
}

/** Rows of every "Flushed batch" line in `log`. */
export function flushedRows(log: string): number[] {
  return [...log.matchAll(/Flushed batch \S+: (\d+) rows/g)].map((m) => Number(m[1]));
}
