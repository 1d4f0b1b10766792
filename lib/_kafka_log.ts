/**
 * Routes kafkajs's own log lines into logtape under `["anonymizer", "kafkajs"]`,
 * so `LOG_LEVEL` governs them and nothing bypasses the structured logs.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
// Every kafkajs user in anonymizer imports this module, so the fix is always in place.
import "./_kafkajs_idle_fix.ts";
import { type logCreator, type LogEntry, logLevel } from "kafkajs";

const log = getLogger(["anonymizer", "kafkajs"]);

/** A kafkajs `logCreator` writing to logtape. */
export const kafkaLogCreator: logCreator =
  (): (entry: LogEntry) => void => ({ namespace, level, log: entry }) => {
    const { message, ...rest } = entry;
    const props = { ...rest, namespace: namespace || "kafkajs", message };
    switch (level) {
      case logLevel.ERROR:
        log.error("{namespace}: {message}", props);
        break;
      case logLevel.WARN:
        log.warn("{namespace}: {message}", props);
        break;
      case logLevel.INFO:
        log.info("{namespace}: {message}", props);
        break;
      default:
        log.debug("{namespace}: {message}", props);
    }
  };
