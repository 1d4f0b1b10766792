/**
 * Progress lines of long-running fault tests, on stderr.
 *
 * @module
 */

/** Writes `message` to stderr, so a long wait shows what it waits for. */
export function progress(message: string): void {
  // deno-lint-ignore no-console -- progress and figures of a long-running test
  console.error(message);
}
