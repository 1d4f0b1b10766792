/**
 * The end of a test server in a temp dir of its own, shared by the
 * ClickHouse and Kafka test servers.
 *
 * @module
 */

/**
 * Stops the server, then removes its dir; a dir already gone is fine, so a
 * second close after a failed start does not throw.
 */
export async function stopAndRemove(stop: () => Promise<void>, dir: string): Promise<void> {
  await stop();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}
