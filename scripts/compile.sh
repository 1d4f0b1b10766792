#!/usr/bin/env bash
# Builds dist/anonymizer, one executable holding main.ts, its npm packages and
# schema/ (migrate reads schema/clickhouse/*.sql, the demo schema/queries/*.sql),
# with the permissions and V8 heap limits of the deno.json run task and the
# unstable kv and cron APIs baked in. It needs no Deno where it runs.
#
# Usage: bash scripts/compile.sh [--print-denort]      (or: deno task compile)
#   --print-denort  print the denort binary a build would use and exit 0, or
#                   print the SKIPPED line and exit 3; builds nothing.
# Env:
#   DENORT_BIN       the denort binary (Deno's runtime without its tools) that
#                    deno compile builds on; deno compile reads this variable.
#                    Default: the denort that an earlier deno compile left in
#                    Deno's cache, $DENO_DIR/dl/release/v<version>/denort-<target>.zip.
#                    Otherwise deno compile would download it, which only works
#                    with access to the Deno release server.
#   COMPILE_KV_PATH  an absolute KV_PATH to bake into the binary as its default.
#                    Default: none (see "Where the binary keeps its queue").
# Exit status:
#   0  built dist/anonymizer
#   1  deno compile failed (its output and exit status are above)
#   2  a bad setting (DENORT_BIN or COMPILE_KV_PATH), named on one line
#   3  SKIPPED: no denort to build on; nothing was built
#
# Where the binary keeps its queue: at KV_PATH (--kv-path), as `run` does. Its
# default is data/anonymizer.kv, relative to the directory the binary is
# started in, not to where the binary lies: start it from a fixed directory
# (systemd: WorkingDirectory=) or, better, set KV_PATH to an absolute path.
# Two starts from different directories use two different queues, and rows
# left in the first are not sent until it is started there again.
# COMPILE_KV_PATH=/var/lib/anonymizer/queue.kv bakes such a path in (deno
# compile --env-file): KV_PATH from the environment still wins, but
# `--help` keeps showing the data/anonymizer.kv default, and `demo` uses the
# baked path too, so prefer setting KV_PATH where the service is started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The V8 heap limits of deno.json's run task (tests/heap_limit_test.ts keeps
# the two equal), baked in so the binary needs no flags: without them V8 sizes
# its heap for the machine's memory and the service's RSS grows to ~300 MB.
V8_FLAGS="--max-old-space-size=48,--max-semi-space-size=1,--no-memory-pool,--expose-gc,--single-threaded-gc,--no-turbofan"
OUT="$ROOT/dist/anonymizer"
SKIPPED_EXIT=3

say() { printf '[compile] %s\n' "$*"; }
bad_setting() {
  printf '[compile] ERROR: %s\n' "$*" >&2
  exit 2
}

command -v deno >/dev/null || bad_setting "Cannot compile as deno is not on PATH: current value is \"$PATH\""

# find_denort: prints the denort a build would use; returns 1 when there is none.
find_denort() {
  local info dir version target cached
  if [[ -n "${DENORT_BIN:-}" ]]; then
    printf '%s\n' "$DENORT_BIN"
    return 0
  fi
  info="$(deno info --json 2>/dev/null)" || return 1
  dir="$(sed -n 's/^ *"denoDir": "\(.*\)",$/\1/p' <<<"$info")"
  version="$(deno eval --no-config 'console.log(Deno.version.deno)')"
  target="$(deno eval --no-config 'console.log(Deno.build.target)')"
  cached="$dir/dl/release/v$version/denort-$target.zip"
  [[ -n "$dir" && -f "$cached" ]] || return 1
  printf '%s\n' "$cached"
}

skipped() {
  printf 'SKIPPED: deno compile needs denort (the Deno runtime it builds on) and none is here: set DENORT_BIN to a denort binary of deno %s, or cache one by running deno compile once where the Deno release server is reachable; dist/anonymizer was not built\n' \
    "$(deno eval --no-config 'console.log(Deno.version.deno)')"
  exit "$SKIPPED_EXIT"
}

# Checked here, not in find_denort: a bad DENORT_BIN is a mistake to report, never a skip.
if [[ -n "${DENORT_BIN:-}" && ! (-f "$DENORT_BIN" && -x "$DENORT_BIN") ]]; then
  bad_setting "Cannot compile as DENORT_BIN must be an executable file: current value is \"$DENORT_BIN\""
fi

case "${1:-}" in
  "") ;;
  --print-denort)
    find_denort || skipped
    exit 0
    ;;
  *) bad_setting "Cannot compile as the only option is --print-denort: current value is \"$1\"" ;;
esac

denort="$(find_denort)" || skipped

env_file_args=()
if [[ -n "${COMPILE_KV_PATH:-}" ]]; then
  [[ "$COMPILE_KV_PATH" =~ ^/[A-Za-z0-9._/-]+$ ]] ||
    bad_setting "Cannot compile as COMPILE_KV_PATH must be an absolute path of [A-Za-z0-9._/-]: current value is \"$COMPILE_KV_PATH\""
  env_file="$(mktemp)"
  trap 'rm -f "$env_file"' EXIT
  printf 'KV_PATH=%s\n' "$COMPILE_KV_PATH" >"$env_file"
  env_file_args=(--env-file="$env_file")
fi

mkdir -p "$ROOT/dist"
say "building $OUT on $denort"
# DENORT_BIN is read by deno compile itself; a cached denort needs no variable.
if (
  cd "$ROOT"
  if [[ -n "${DENORT_BIN:-}" ]]; then export DENORT_BIN; fi
  deno compile --unstable-kv --unstable-cron "--v8-flags=$V8_FLAGS" \
    --allow-net --allow-read --allow-write --allow-env --allow-sys --allow-ffi \
    --include schema/ "${env_file_args[@]}" \
    --output "$OUT" main.ts
) 2>&1; then
  rc=0
else
  rc=$?
fi
if ((rc != 0)); then
  say "ERROR: deno compile failed with exit $rc; its output is above"
  # deno compile writes beside the output first and leaves that behind when it aborts.
  rm -f "$OUT".tmp-*
  # Its own status could read as 2 or 3 above.
  exit 1
fi
say "built $OUT ($(du -h "$OUT" | cut -f1))"
if [[ -n "${COMPILE_KV_PATH:-}" ]]; then
  say "its queue: KV_PATH if set, else $COMPILE_KV_PATH (baked in)"
else
  say "its queue: KV_PATH if set, else data/anonymizer.kv under the directory it is started in"
fi
