/**
 * Keeps secrets out of everything anonymizer prints: config errors, logs,
 * `--help`, metrics and dead-letter headers.
 *
 * @module
 */

/** What replaces a secret or the userinfo of a URL. */
export const REDACTED = "***";

/**
 * Replaces the userinfo `user:password@` of every URL or `user:password@host`
 * form in `text` by `***@`: any setting can hold a URL, and a URL can carry a
 * password.
 *
 * @example
 * ```ts
 * import { redactUserinfo } from "./redact.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(
 *   redactUserinfo("http://admin:s3cret@127.0.0.1:8124"),
 *   "http://***@127.0.0.1:8124",
 * );
 * assert.equal(redactUserinfo("a:b@h1:9092,h2:9092"), "***@h1:9092,h2:9092");
 * assert.equal(redactUserinfo("127.0.0.1:9092"), "127.0.0.1:9092");
 * assert.equal(redactUserinfo("partitions 0@12,1@40"), "partitions 0@12,1@40");
 * ```
 */
export function redactUserinfo(text: string): string {
  // Only `user:password@` holds a secret; `partition@offset` and `user@host` forms stay readable.
  return text.replace(
    /(^|[\s,;"'(<]|:\/\/)[^\s,;"'(<@/:]*:[^\s,;"'(<@/]*@(?=[^\s@])/g,
    `$1${REDACTED}@`,
  );
}

/**
 * The form of a setting's value that may be shown: `***` for a secret that
 * is set, otherwise the value with any URL userinfo redacted.
 *
 * @example
 * ```ts
 * import { shownValue } from "./redact.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(shownValue("hunter2", { secret: true }), "***");
 * assert.equal(shownValue("", { secret: true }), "");
 * assert.equal(shownValue("http://u:p@h:1"), "http://***@h:1");
 * ```
 */
export function shownValue(value: string, options: { secret?: boolean } = {}): string {
  if (options.secret) return value === "" ? "" : REDACTED;
  return redactUserinfo(value);
}

/**
 * Returns a function that replaces every occurrence of the given secrets
 * (and any URL userinfo) in a text by `***`. Empty secrets are ignored.
 * Longer secrets are replaced first, so one that contains another is not
 * left half shown.
 *
 * @example
 * ```ts
 * import { secretScrubber } from "./redact.ts";
 * import assert from "node:assert/strict";
 *
 * const scrub = secretScrubber(["pw1", ""]);
 * assert.equal(scrub("login pw1 failed at http://u:x@h"), "login *** failed at http://***@h");
 * assert.equal(secretScrubber(['p"w'])(JSON.stringify({ password: 'p"w' })), '{"password":"***"}');
 * ```
 */
export function secretScrubber(secrets: readonly string[]): (text: string) => string {
  // A log format may have escaped a secret holding quotes or backslashes: hide that form too.
  const forms = secrets.filter((s) => s !== "").flatMap((s) => [s, JSON.stringify(s).slice(1, -1)]);
  const list = [...new Set(forms)].sort((a, b) => b.length - a.length);
  return (text) => {
    let out = text;
    for (const s of list) out = out.replaceAll(s, REDACTED);
    return redactUserinfo(out);
  };
}
