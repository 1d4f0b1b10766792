/**
 * The one rule for what anonymizer does on which ClickHouse release. Every
 * version-dependent choice (body encoding, schema templates, insert settings,
 * how an unknown outcome is resolved) reads {@linkcode serverProfile}, so a
 * release anonymizer does not know fails loudly here instead of taking a
 * silently wrong path.
 *
 * @module
 */
import { AnonymizerError } from "../../errors.ts";

/** The oldest release anonymizer supports: Debian's `clickhouse-server`. */
const OLDEST: readonly [number, number] = [18, 16];
/**
 * First "modern" release: zstd request bodies, `insert_deduplication_token`,
 * `non_replicated_deduplication_window`, codecs and Native type conversion are
 * all there from 23.3 (a long-term-support release) on.
 */
const MODERN_SINCE: readonly [number, number] = [23, 3];

/** What anonymizer knows of a ClickHouse release. */
export interface ServerProfile {
  /** The version as the server printed it, trimmed, e.g. `"26.9.2.1"`. */
  version: string;
  /** Major and minor release numbers, e.g. `[26, 9]`. */
  release: readonly [number, number];
  /** Whether it is 23.3 or later, the "modern" path of the schema, the wire and deduplication. */
  modern: boolean;
}

/** A ClickHouse release anonymizer does not know how to write to. */
export class UnsupportedServerError extends AnonymizerError {
  /** Builds the error for `version`, as the server printed it. */
  constructor(version: string, options: { cause?: unknown } = {}) {
    super(
      `Cannot write to ClickHouse as its version must be ${OLDEST.join(".")} or later, in ` +
        `major.minor form: current value is ${JSON.stringify(version.slice(0, 100))}`,
      { code: "server_version_unsupported", retriable: false, cause: options.cause },
    );
    this.name = "UnsupportedServerError";
  }
}

/**
 * Parses what `SELECT version()` printed into a {@linkcode ServerProfile}.
 * Throws {@linkcode UnsupportedServerError} for text that is not
 * `major.minor...`, or a release older than 18.16. Every release from 18.16 to
 * 23.2 takes the 18.16 path, which each of them reads; 23.3 and later take the
 * modern path.
 *
 * @example
 * ```ts
 * import { serverProfile, UnsupportedServerError } from "./server_version.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(serverProfile("18.16.1").modern, false);
 * assert.equal(serverProfile("26.9.2.1\n").modern, true);
 * assert.deepEqual(serverProfile("23.3.1.2823").release, [23, 3]);
 * assert.throws(() => serverProfile('"26.9.2.1"'), UnsupportedServerError);
 * assert.throws(() => serverProfile("1.1.54394"), UnsupportedServerError);
 * ```
 */
export function serverProfile(version: string): ServerProfile {
  const text = version.trim();
  const match = /^(\d+)\.(\d+)(\.|$)/.exec(text);
  if (match === null) throw new UnsupportedServerError(text);
  const release = [Number(match[1]), Number(match[2])] as const;
  if (atLeast(release, OLDEST) === false) throw new UnsupportedServerError(text);
  return { version: text, release, modern: atLeast(release, MODERN_SINCE) };
}

function atLeast(release: readonly [number, number], since: readonly [number, number]): boolean {
  return release[0] > since[0] || (release[0] === since[0] && release[1] >= since[1]);
}
