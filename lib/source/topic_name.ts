/**
 * The one check of a Kafka topic name, shared by the service settings and
 * the load generator so both accept the same names.
 *
 * @module
 */

/** What a topic name must be, as config errors state it. */
export const TOPIC_NAME_RULE = "must be 1 to 249 of [A-Za-z0-9._-], not starting with -";

/**
 * Whether `name` is a topic name Kafka accepts (see {@linkcode TOPIC_NAME_RULE}).
 *
 * @example
 * ```ts
 * import { isTopicName } from "./topic_name.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(isTopicName("http_log"), true);
 * assert.equal(isTopicName("-x"), false);
 * assert.equal(isTopicName("a b"), false);
 * ```
 */
export function isTopicName(name: string): boolean {
  return /^[A-Za-z0-9._][A-Za-z0-9._-]{0,248}$/.test(name);
}
