/**
 * glibc malloc settings and trimming for the service process, through
 * `mallopt` and `malloc_trim` over FFI, so that neither `deno task run` nor
 * the compiled binary needs `MALLOC_*` environment variables.
 *
 * @module
 */

/** `mallopt` parameter numbers, from glibc's malloc.h. */
const M_MMAP_THRESHOLD = -3;
const M_ARENA_MAX = -8;

/**
 * Allocations from this size on get pages of their own, returned to the
 * system when freed. glibc starts at this size too, but raises it to the
 * largest block freed so far, up to 32 MiB: after the first zstd context of
 * a seal every later one came from the main heap, which then kept memory it
 * could not give back (docs/capacity.md). Setting it fixes it.
 */
const MMAP_THRESHOLD_BYTES = 128 * 1024;
/** Heaps malloc may keep; the runtime's threads would otherwise get one each. */
const ARENA_MAX = 2;

/** The environment variables with which an operator sets these by hand. */
const ENV = { mmapThreshold: "MALLOC_MMAP_THRESHOLD_", arenaMax: "MALLOC_ARENA_MAX" } as const;

const SYMBOLS = {
  mallopt: { parameters: ["i32", "i32"], result: "i32" },
  malloc_trim: { parameters: ["usize"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>;

/** glibc, opened once; a string says why it cannot be. */
let libc: Libc | string | undefined;

function openLibc(): Libc | string {
  if (libc !== undefined) return libc;
  if (Deno.build.os !== "linux") return libc = `not Linux (${Deno.build.os})`;
  // Asking would prompt on a terminal; without the permission there is nothing to do.
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return libc = "no --allow-ffi";
  }
  try {
    return libc = Deno.dlopen("libc.so.6", SYMBOLS);
  } catch (err) {
    return libc = `cannot load glibc: ${err instanceof Error ? err.message : String(err)}`;
  }
}

/** What {@linkcode tuneMalloc} set. */
export interface MallocTuning {
  /** `M_MMAP_THRESHOLD` set, bytes; `null` when left to the environment or unavailable. */
  mmapThreshold: number | null;
  /** `M_ARENA_MAX` set; `null` when left to the environment or unavailable. */
  arenaMax: number | null;
  /** Why nothing was set: not Linux, no glibc, or no `--allow-ffi`. `null` otherwise. */
  skipped: string | null;
}

/** Options of {@linkcode tuneMalloc}. */
export interface TuneMallocOptions {
  /** Reads an environment variable. Default: `Deno.env.get`. */
  env?: (name: string) => string | undefined;
}

/**
 * Sets glibc's mmap threshold (fixed at 128 KiB) and arena count (2) unless
 * the environment sets them, so large short-lived buffers go back to the
 * system when freed. Skips, saying why, where it cannot: another OS, another
 * libc, or no `--allow-ffi`.
 *
 * @example
 * ```ts
 * import { tuneMalloc } from "./_malloc.ts";
 * import assert from "node:assert/strict";
 *
 * const t = tuneMalloc({ env: () => "1" });
 * assert.equal(t.mmapThreshold, null);
 * assert.equal(t.arenaMax, null);
 * ```
 */
export function tuneMalloc(options: TuneMallocOptions = {}): MallocTuning {
  const env = options.env ?? ((name: string) => Deno.env.get(name));
  const wanted = {
    mmapThreshold: env(ENV.mmapThreshold) === undefined,
    arenaMax: env(ENV.arenaMax) === undefined,
  };
  const none = { mmapThreshold: null, arenaMax: null };
  if (!wanted.mmapThreshold && !wanted.arenaMax) return { ...none, skipped: null };
  const lib = openLibc();
  if (typeof lib === "string") return { ...none, skipped: lib };
  // mallopt returns 1 on success.
  const set = (param: number, value: number) => lib.symbols.mallopt(param, value) === 1;
  return {
    mmapThreshold: wanted.mmapThreshold && set(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
      ? MMAP_THRESHOLD_BYTES
      : null,
    arenaMax: wanted.arenaMax && set(M_ARENA_MAX, ARENA_MAX) ? ARENA_MAX : null,
    skipped: null,
  };
}

/**
 * Gives the free pages inside malloc's heaps back to the system
 * (`malloc_trim(0)`); returns `false` where glibc cannot be reached.
 * glibc returns only the top of a heap by itself, so freed buffers in the
 * middle stay resident until reused.
 *
 * @example
 * ```ts
 * import { trimMalloc } from "./_malloc.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(typeof trimMalloc(), "boolean");
 * ```
 */
export function trimMalloc(): boolean {
  const lib = openLibc();
  if (typeof lib === "string") return false;
  lib.symbols.malloc_trim(0n);
  return true;
}
