/**
 * Structured logging setup. Every module logs through logtape under the
 * `["anonymizer", ...]` category; this decides the level and line format.
 *
 * @module
 */
import {
  configure,
  getConsoleSink,
  getJsonLinesFormatter,
  getTextFormatter,
  type LogRecord,
} from "@logtape/logtape";
import { secretScrubber } from "./redact.ts";

/** Options of {@linkcode configureLogging}. */
export interface LoggingOptions {
  /** Lowest level written. Default: `"info"`. */
  level?: "trace" | "debug" | "info" | "warning" | "error" | "fatal";
  /** `"text"` for people, `"json"` for log shippers (one object per line). Default: `"text"`. */
  format?: "text" | "json";
  /**
   * Values no line may show (passwords); each is written as `***`, as is the
   * userinfo of any URL. Default: none (URL userinfo is still redacted).
   */
  secrets?: readonly string[];
}

/**
 * Configures logtape for the process. Call once, before the first log line.
 *
 * @example
 * ```ts
 * import { configureLogging } from "./logging.ts";
 * import { getLogger, reset } from "@logtape/logtape";
 *
 * await configureLogging({ level: "warning", format: "json" });
 * getLogger(["anonymizer", "example"]).info("not written: below warning");
 * await reset();
 * ```
 */
export async function configureLogging(options: LoggingOptions = {}): Promise<void> {
  const base = options.format === "json"
    ? getJsonLinesFormatter({ properties: "flatten" })
    : getTextFormatter({ timestamp: "date-time-timezone" });
  // Scrubbing the finished line covers every level, logger and property, kafkajs's included.
  const scrub = secretScrubber(options.secrets ?? []);
  const formatter = (record: LogRecord) => scrub(base(record));
  await configure({
    reset: true,
    sinks: { console: getConsoleSink({ formatter }) },
    loggers: [
      { category: ["anonymizer"], lowestLevel: options.level ?? "info", sinks: ["console"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["console"] },
    ],
  });
}
