/**
 * Routes kafkajs's own log lines into logtape under `["anonymizer", "kafkajs"]`,
 * so `LOG_LEVEL` governs them and nothing bypasses the structured logs.
 *
 * kafkajs puts the reason of a failed response in a separate `error` field
 * (`Response GroupCoordinator(key: 10, version: 2)` + `error`), which the text
 * format would drop: the reason is written into the line itself. Responses
 * kafkajs retries as part of normal group and leader churn are logged at
 * info, not error: they need no action.
 *
 * @module
 */
import { getLogger, type LogLevel } from "@logtape/logtape";
import { type logCreator, type LogEntry, logLevel } from "kafkajs";
import { errorCodes } from "kafkajs/protocol-error";

const log = getLogger(["anonymizer", "kafkajs"]);

/**
 * Protocol errors that a fresh start, a rebalance or a leader election
 * produce and kafkajs retries: routine, so not errors to an operator.
 */
const ROUTINE = new Set([
  "GROUP_COORDINATOR_NOT_AVAILABLE",
  "NOT_COORDINATOR_FOR_GROUP",
  "GROUP_LOAD_IN_PROGRESS",
  "REBALANCE_IN_PROGRESS",
  "LEADER_NOT_AVAILABLE",
  "NOT_LEADER_FOR_PARTITION",
]);

/**
 * kafkajs logs a failed response with only the protocol error's message;
 * its table (kafkajs 2.2.4, pinned in deno.json) gives back the type.
 */
const PROTOCOL_TYPES: ReadonlyMap<string, string> = new Map(
  (errorCodes as Array<{ type: string; message: string }>).map((e) => [e.message, e.type]),
);

/** `Name: message` of kafkajs's `error` field, which is an Error or only its message. */
function reasonOf(error: unknown): { text: string; routine: boolean } | null {
  if (error === undefined || error === null || error === "") return null;
  const message = error instanceof Error ? error.message : String(error);
  const type = (error as { type?: string }).type ?? PROTOCOL_TYPES.get(message);
  const name = error instanceof Error
    ? error.name
    : type === undefined
    ? ""
    : "KafkaJSProtocolError";
  const label = [name, type].filter((x) => x !== undefined && x !== "").join(" ");
  return {
    text: label === "" ? message : `${label}: ${message}`,
    routine: type !== undefined && ROUTINE.has(type),
  };
}

const LEVELS: Record<number, LogLevel> = {
  [logLevel.ERROR]: "error",
  [logLevel.WARN]: "warning",
  [logLevel.INFO]: "info",
};

/**
 * A kafkajs `logCreator` writing to logtape.
 *
 * @example A routine rebalance response keeps its reason and is not an error
 * ```ts
 * import { kafkaLogCreator } from "./_kafka_log.ts";
 * import { configure, type LogRecord, reset } from "@logtape/logtape";
 * import { logLevel } from "kafkajs";
 * import assert from "node:assert/strict";
 *
 * const records: LogRecord[] = [];
 * await configure({
 *   sinks: { mem: (r) => records.push(r) },
 *   loggers: [
 *     { category: ["anonymizer"], lowestLevel: "debug", sinks: ["mem"] },
 *     { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
 *   ],
 *   reset: true,
 * });
 * kafkaLogCreator(logLevel.INFO)({
 *   namespace: "Connection", level: logLevel.ERROR, label: "ERROR",
 *   log: {
 *     timestamp: "", logger: "kafkajs", message: "Response Heartbeat(key: 12, version: 3)",
 *     error: "The group is rebalancing, so a rejoin is needed",
 *   },
 * });
 * assert.equal(records[0]!.level, "info");
 * assert.match(
 *   records[0]!.message.join(""),
 *   /Heartbeat.*KafkaJSProtocolError REBALANCE_IN_PROGRESS: The group is rebalancing/,
 * );
 * await reset();
 * ```
 */
export const kafkaLogCreator: logCreator =
  (): (entry: LogEntry) => void => ({ namespace, level, log: entry }) => {
    const { message, error, ...rest } = entry as LogEntry["log"] & { error?: unknown };
    const reason = reasonOf(error);
    const props = {
      ...rest,
      namespace: namespace || "kafkajs",
      message,
      reason: reason === null
        ? ""
        : `: ${reason.text}${reason.routine ? " (routine; retried)" : ""}`,
      ...(error === undefined ? {} : { error: reason?.text }),
    };
    let lowest = LEVELS[level] ?? "debug";
    if (reason?.routine && (lowest === "error" || lowest === "warning")) lowest = "info";
    // The line itself carries the text: the text format would quote each property.
    const text = `${props.namespace}: ${message}${props.reason}`.replaceAll("{", "{{")
      .replaceAll("}", "}}");
    if (lowest === "error") log.error(text, props);
    else if (lowest === "warning") log.warn(text, props);
    else if (lowest === "info") log.info(text, props);
    else log.debug(text, props);
  };
