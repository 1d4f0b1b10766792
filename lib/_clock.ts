/**
 * The flusher's time: what time it is, and waiting. A seam, so a test can
 * run the flusher on a fake clock through many proxy slots in no real time.
 *
 * @module
 */

/** Time and waiting. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Resolves after `ms`, or as soon as `signal` aborts (a wake); never rejects. */
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

/** The system clock and timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
    }),
};
