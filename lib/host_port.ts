/**
 * The one check of a `host:port` setting, shared by the service's settings
 * and `anonymizer produce`.
 *
 * @module
 */

/**
 * Splits `host:port` where host is a DNS name or an IPv4 address and port is
 * 1 to 65535; returns `null` for anything else. Every host:port setting of
 * the service and of `anonymizer produce` is checked with it. A bracketed
 * IPv6 address is refused: kafkajs splits a seed broker at its first colon.
 *
 * @example
 * ```ts
 * import { parseHostPort } from "./host_port.ts";
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(parseHostPort("127.0.0.1:9092"), { hostname: "127.0.0.1", port: 9092 });
 * assert.equal(parseHostPort("kafka"), null);
 * assert.equal(parseHostPort("kafka:99999"), null);
 * ```
 */
export function parseHostPort(text: string): { hostname: string; port: number } | null {
  const match = /^([A-Za-z0-9.\-]+):(\d{1,5})$/.exec(text);
  if (match === null) return null;
  const port = Number(match[2]);
  return port >= 1 && port <= 65_535 ? { hostname: match[1]!, port } : null;
}
