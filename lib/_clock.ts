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

const WAKE = "wake";

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

/**
 * Sleeps on a clock that a wake ends early. A wake that comes while nothing
 * sleeps (e.g. during a seal) ends the next sleep at once, so it is not lost.
 */
export class Alarm {
  readonly #clock: Clock;
  readonly #sleepers = new Set<AbortController>();
  #woken = false;

  /** Sleeps on `clock`. */
  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /** Resolves after `ms` on the clock, or at the next wake. */
  async sleep(ms: number): Promise<void> {
    if (this.#woken) {
      this.#woken = false;
      return;
    }
    const sleeper = new AbortController();
    this.#sleepers.add(sleeper);
    try {
      await this.#clock.sleep(ms, sleeper.signal);
    } finally {
      this.#sleepers.delete(sleeper);
    }
  }

  /** Ends every sleep, or the next one if none is under way. */
  wake(): void {
    if (this.#sleepers.size === 0) this.#woken = true;
    // A plain reason: the default one is a DOMException, whose stack is captured at every wake.
    for (const s of this.#sleepers) s.abort(WAKE);
    this.#sleepers.clear();
  }
}
