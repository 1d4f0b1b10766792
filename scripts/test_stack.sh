#!/usr/bin/env bash
# The stack test matrix: runs the tests in tests/ once per ClickHouse server,
# with TEST_CLICKHOUSE set to it, both servers at once (each test makes its own
# topics, databases and proxies, so the two runs share Kafka safely). Every
# line is prefixed with its server; each run's log is kept in .stack/logs.
#
# Usage: bash scripts/test_stack.sh [deno test args...]   (default: tests/)
# Env:   STACK_CLICKHOUSE  18.16, modern or both. Default: both
#        STACK_DIR         where logs go. Default: <repo>/.stack
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
SERVERS="${STACK_CLICKHOUSE:-both}"
cd "$ROOT"
case "$SERVERS" in
  both) names=(18.16 modern) ;;
  18.16 | modern) names=("$SERVERS") ;;
  *)
    printf 'Cannot run the test matrix as STACK_CLICKHOUSE must be 18.16, modern or both: current value is "%s"\n' "$SERVERS" >&2
    exit 2
    ;;
esac
mkdir -p "$STACK_DIR/logs"
# Files that never reach ClickHouse, or test Kafka rather than ClickHouse (kafka4_test.ts): with
# both servers they run in the 18.16 run only.
ONCE=(capnp_wire_test.ts config_test.ts compose_test.ts fuzz_test.ts produce_roundtrip_test.ts readme_test.ts
  server_version_test.ts kafka4_test.ts)

# files_for NAME: the default file list of one server's run.
files_for() {
  local f base skip
  if [[ "$1" == 18.16 || ${#names[@]} == 1 ]]; then
    printf '%s\n' tests/
    return
  fi
  for f in tests/*_test.ts; do
    base="${f#tests/}"
    skip=0
    for once in "${ONCE[@]}"; do [[ "$base" == "$once" ]] && skip=1; done
    ((skip)) || printf '%s\n' "$f"
  done
}

declare -A pids started
for name in "${names[@]}"; do
  log="$STACK_DIR/logs/test-stack-$name.log"
  started[$name]=$SECONDS
  if (($# > 0)); then
    args=("$@")
  else
    mapfile -t args < <(files_for "$name")
  fi
  (
    TEST_CLICKHOUSE="$name" deno test -A --doc "${args[@]}" 2>&1 | tee "$log" | sed -u "s/^/[$name] /"
    exit "${PIPESTATUS[0]}"
  ) &
  pids[$name]=$!
done

rc=0
for name in "${names[@]}"; do
  status=0
  wait "${pids[$name]}" || status=$?
  log="$STACK_DIR/logs/test-stack-$name.log"
  # Deno's closing line is "ok | 12 passed (30 steps) | 0 failed (9s)"; restated without the
  # bars, so that whoever adds up the runs' closing lines does not count this one too.
  passed="$(grep -oE '^(ok|FAILED) \| [0-9]+ passed' "$log" | tail -n 1 | grep -oE '[0-9]+' || true)"
  failed="$(grep -oE '^(ok|FAILED) \| .* [0-9]+ failed' "$log" | tail -n 1 | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || true)"
  printf '[matrix] ClickHouse %s: exit %s after %s s, %s tests passed and %s failed (log %s)\n' \
    "$name" "$status" "$((SECONDS - started[$name]))" "${passed:-no}" "${failed:-no}" "$log"
  ((status == 0)) || rc=1
done
exit "$rc"
