/**
 * Captures the service's log records in memory, for tests of what an
 * operator reads.
 *
 * @module
 */
import { configure, type LogRecord } from "@logtape/logtape";

/**
 * Replaces the logging configuration with one that collects every record of
 * `["anonymizer"]` from debug up into the returned array; call logtape's
 * `reset()` when done.
 *
 * @example
 * ```ts
 * import { captureLogs } from "./capture_logs.ts";
 * import { getLogger, reset } from "@logtape/logtape";
 * import assert from "node:assert/strict";
 *
 * const records = await captureLogs();
 * getLogger(["anonymizer", "example"]).info("hello");
 * await reset();
 * assert.equal(records.length, 1);
 * ```
 */
export async function captureLogs(): Promise<LogRecord[]> {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { mem: (r) => records.push(r) },
    loggers: [
      { category: ["anonymizer"], lowestLevel: "debug", sinks: ["mem"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
    ],
  });
  return records;
}
