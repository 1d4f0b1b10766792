#!/usr/bin/env bash
# The local stack on 127.0.0.1 only: Kafka (single-node KRaft), the ClickHouse
# servers and one ch-proxy (nginx with the production rate limit) in front of
# each. Two ClickHouse servers can run: Debian's 18.16, and a modern one
# (ClickHouse 26.9 inside PyPI's chdb, served over its real HTTP interface by
# stack/chdb_server.py). Every daemon is started from here, tracked by a pid
# file and stopped only through it.
#
# Usage: bash scripts/stack.sh up|down|status
#   up      install what is missing, start what is not running, wait until all
#           is healthy, create topic http_log. Safe to run again at any time.
#   down    stop what this STACK_DIR started and wait for it to exit.
#   status  show what runs; exits 0 when every chosen part runs, 3 otherwise.
# Env:
#   STACK_DIR         data, logs and pid files. Default: <repo>/.stack
#   STACK_CLICKHOUSE  which ClickHouse servers: 18.16, modern or both. Default: both
#   STACK_PROXY_RATE  ch-proxy limit_req rate, e.g. 60r/m. Default: 1r/m (production)
#   STACK_REUSE       1 to use a healthy service that another folder started on
#                     a stack port instead of failing. Default: 0
#
# Ports: Kafka 9092; ClickHouse 18.16 HTTP 8123 (native 9000) behind ch-proxy
# 8124; modern ClickHouse HTTP 8125 behind ch-proxy 8126.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
PROXY_RATE="${STACK_PROXY_RATE:-1r/m}"
SERVERS="${STACK_CLICKHOUSE:-both}"
REUSE="${STACK_REUSE:-0}"
RUN="$STACK_DIR/run"
LOGS="$STACK_DIR/logs"
KAFKA_LIBS="$STACK_DIR/kafka/libs"
KAFKA_PROPS="$STACK_DIR/kafka/server.properties"
KAFKA_DATA="$STACK_DIR/kafka/data"
CH_CONFIG="$STACK_DIR/clickhouse/config.xml"
PROXY_DIR="$STACK_DIR/ch-proxy"
PROXY_CONF="$PROXY_DIR/nginx.conf"
MODERN_DIR="$STACK_DIR/clickhouse-modern"
MODERN_PROXY_DIR="$STACK_DIR/ch-proxy-modern"
MODERN_PROXY_CONF="$MODERN_PROXY_DIR/nginx.conf"
TOPIC=http_log
TOPIC_PARTITIONS=3
# The pid each start_* function leaves for wait_until; empty for a reused service.
CLICKHOUSE_WATCH=""
KAFKA_WATCH=""
PROXY_WATCH=""
MODERN_WATCH=""
MODERN_PROXY_WATCH=""
# Extra nginx -g directives; see start_proxy.
NGINX_GLOBALS=()
# Debian puts nginx and clickhouse-server in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

say() { printf '[stack] %s\n' "$*"; }
fail() {
  printf '[stack] ERROR: %s\n' "$*" >&2
  exit 1
}

# render TEMPLATE OUT KEY=VALUE...: fills {{KEY}} placeholders, refusing leftovers.
render() {
  local template="$1" out="$2" text kv
  shift 2
  text="$(<"$template")"
  for kv in "$@"; do
    text="${text//"{{${kv%%=*}}}"/"${kv#*=}"}"
  done
  if [[ "$text" =~ \{\{[a-z_]+\}\} ]]; then
    fail "Cannot render $template as placeholder ${BASH_REMATCH[0]} has no value"
  fi
  printf '%s\n' "$text" >"$out"
}

# live_pid PIDFILE PATTERN: prints the pid when its process is alive and its
# command line contains PATTERN, so a recycled pid is never taken for ours.
live_pid() {
  local pid
  [[ -s "$1" ]] || return 0
  pid="$(<"$1")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"; then
    printf '%s\n' "$pid"
  fi
}

kafka_pid() { live_pid "$RUN/kafka.pid" "$KAFKA_PROPS"; }
clickhouse_pid() { live_pid "$RUN/clickhouse.pid" "$CH_CONFIG"; }
proxy_pid() { live_pid "$PROXY_DIR/nginx.pid" "$PROXY_CONF"; }
modern_pid() { live_pid "$RUN/clickhouse-modern.pid" "$MODERN_DIR"; }
modern_proxy_pid() { live_pid "$MODERN_PROXY_DIR/nginx.pid" "$MODERN_PROXY_CONF"; }

want_legacy() { [[ "$SERVERS" == 18.16 || "$SERVERS" == both ]]; }
want_modern() { [[ "$SERVERS" == modern || "$SERVERS" == both ]]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_holder() {
  local holder
  holder="$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(("[^"]*",pid=[0-9]*' | head -n 1 || true)"
  if [[ -n "$holder" ]]; then
    printf 'pid %s (%s)' "${holder##*pid=}" "$(cut -d'"' -f2 <<<"$holder")"
  else
    printf 'an unknown process'
  fi
}

# ports_free NAME PORT...: true when all are free; false (reuse) when taken and
# STACK_REUSE=1; fails otherwise, naming who holds the port.
ports_free() {
  local name="$1" port
  shift
  for port in "$@"; do
    port_open "$port" || continue
    if [[ "$REUSE" == 1 ]]; then
      say "$name: WARNING: 127.0.0.1:$port is served by $(port_holder "$port"), not started from $STACK_DIR; using it as STACK_REUSE=1 ('down' will not stop it)"
      return 1
    fi
    fail "Cannot start $name as 127.0.0.1:$port is in use by $(port_holder "$port"), which $STACK_DIR did not start: stop it, or set STACK_REUSE=1 to use it as it is"
  done
}

# launch LOG COMMAND...: starts a daemon in its own session, so it outlives this
# shell and the terminal, with $! as its pid; fd 9 (the stack lock) stays here.
launch() {
  local log="$1"
  shift
  setsid nohup "$@" >>"$log" 2>&1 </dev/null 9>&- &
}

# alive PID: true while the process runs; a zombie left for a parent that never
# reaps it counts as exited.
alive() {
  local state
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [[ -n "$state" && "$state" != Z ]]
}

kafka_tool() {
  timeout 60 java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j.configuration="file:$ROOT/stack/kafka-tools-log4j.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

start_clickhouse() {
  local pid
  pid="$(clickhouse_pid)"
  CLICKHOUSE_WATCH="$pid"
  if [[ -n "$pid" ]]; then
    say "ClickHouse: already running (pid $pid)"
    return
  fi
  ports_free ClickHouse 8123 9000 || return 0
  mkdir -p "$STACK_DIR/clickhouse/data"
  render "$ROOT/stack/clickhouse-config.xml.tmpl" "$CH_CONFIG" \
    "data_dir=$STACK_DIR/clickhouse/data/" "log_dir=$LOGS" \
    "users_config=$ROOT/stack/clickhouse-users.xml" "format_schema_dir=$ROOT/schema/"
  say "ClickHouse: starting (data in $STACK_DIR/clickhouse/data, log $LOGS/clickhouse-server.log)"
  # Errors before its logger starts (e.g. a bad config) go to stderr: keep them together.
  launch "$LOGS/clickhouse-server.err.log" clickhouse-server --config-file="$CH_CONFIG"
  CLICKHOUSE_WATCH="$!"
  printf '%s\n' "$!" >"$RUN/clickhouse.pid"
}

start_kafka() {
  local pid cluster_id
  pid="$(kafka_pid)"
  KAFKA_WATCH="$pid"
  if [[ -n "$pid" ]]; then
    say "Kafka: already running (pid $pid)"
    return
  fi
  ports_free Kafka 9092 9093 || return 0
  mkdir -p "$KAFKA_DATA"
  render "$ROOT/stack/kafka.properties.tmpl" "$KAFKA_PROPS" "data_dir=$KAFKA_DATA"
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    # A cluster id is 16 random bytes in URL-safe base64 without padding.
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    say "Kafka: formatting storage in $KAFKA_DATA (first start, cluster id $cluster_id)"
    kafka_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_PROPS" >>"$LOGS/kafka-format.log" 2>&1 ||
      fail "Cannot format Kafka storage in $KAFKA_DATA: see $LOGS/kafka-format.log"
  fi
  say "Kafka: starting (data in $KAFKA_DATA, log $LOGS/kafka.log)"
  # kafka.out only gets what the JVM says before log4j starts (bad options, crashes).
  launch "$LOGS/kafka.out" java -Xms512m -Xmx512m -XX:+UseG1GC \
    -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$ROOT/stack/kafka-log4j.properties" -Dkafka.logs.dir="$LOGS" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS"
  KAFKA_WATCH="$!"
  printf '%s\n' "$!" >"$RUN/kafka.pid"
}

# start_proxy NAME DIR LISTEN_PORT UPSTREAM_PORT: one stock ch-proxy; sets PROXY_STARTED
# to the pid to watch (empty when it already ran or is reused).
start_proxy() {
  local name="$1" dir="$2" port="$3" upstream="$4" pid conf="$2/nginx.conf" new="$2/nginx.conf.new" check
  local log_base="$LOGS/${name}"
  PROXY_STARTED=""
  [[ "$PROXY_RATE" =~ ^[1-9][0-9]*r/[sm]$ ]] ||
    fail "Cannot start $name as STACK_PROXY_RATE must look like 1r/m or 10r/s: current value is \"$PROXY_RATE\""
  mkdir -p "$dir"
  # A root master runs workers as nobody, and they write body temp files (any
  # body over 16 KiB) in the state folder: without access every such INSERT gets 500.
  if ((EUID == 0)) && ! runuser -u nobody -- test -x "$dir"; then
    say "$name: WARNING: nginx workers (user nobody) cannot enter $dir, so they run as root; give its parent folders o+x to avoid this"
    NGINX_GLOBALS=(-g "user root;")
  fi
  render "$ROOT/stack/nginx.conf.tmpl" "$new" \
    "listen=127.0.0.1:$port" "upstream=127.0.0.1:$upstream" "rate=$PROXY_RATE" \
    "state_dir=$dir" "access_log=$log_base.access.log" \
    "error_log=$log_base.error.log" "client_max_body_size="
  if ! check="$(nginx -t -q "${NGINX_GLOBALS[@]}" -p "$dir" -c "$new" -e "$log_base.error.log" 2>&1)"; then
    fail "Cannot start $name as nginx rejects $new: $check"
  fi
  pid="$(live_pid "$dir/nginx.pid" "$conf")"
  PROXY_STARTED="$pid"
  if [[ -n "$pid" ]]; then
    if cmp -s "$new" "$conf"; then
      rm -f "$new"
      say "$name: already running (pid $pid, rate $PROXY_RATE)"
    else
      mv "$new" "$conf"
      # A reload keeps the ch-limit zone, so the request slot survives it.
      kill -HUP "$pid"
      say "$name: already running (pid $pid); configuration changed, reloaded with rate $PROXY_RATE"
    fi
    return
  fi
  if ! ports_free "$name" "$port"; then
    rm -f "$new"
    return
  fi
  mv "$new" "$conf"
  say "$name: starting nginx on 127.0.0.1:$port -> 127.0.0.1:$upstream (rate $PROXY_RATE, access log $log_base.access.log)"
  # nginx writes its own pid file (pid directive in the template).
  launch "$log_base.out" \
    nginx "${NGINX_GLOBALS[@]}" -p "$dir" -c "$conf" -e "$log_base.error.log"
  PROXY_STARTED="$!"
}

start_modern() {
  local pid
  pid="$(modern_pid)"
  MODERN_WATCH="$pid"
  if [[ -n "$pid" ]]; then
    say "ClickHouse modern: already running (pid $pid)"
    return
  fi
  ports_free "ClickHouse modern" 8125 || return 0
  mkdir -p "$MODERN_DIR"
  say "ClickHouse modern: starting chDB's ClickHouse HTTP server (data in $MODERN_DIR, log $LOGS/clickhouse-modern.log)"
  launch "$LOGS/clickhouse-modern.log" python3 "$ROOT/stack/chdb_server.py" "$MODERN_DIR" 8125
  MODERN_WATCH="$!"
  printf '%s\n' "$!" >"$RUN/clickhouse-modern.pid"
}

# show_logs NAME: the last lines of the logs that tell why NAME did not start.
show_logs() {
  local log
  case "$1" in
    ClickHouse) set -- "$LOGS/clickhouse-server.err.log" ;;
    Kafka) set -- "$LOGS/kafka.out" "$LOGS/kafka.log" ;;
    ch-proxy) set -- "$LOGS/ch-proxy.out" "$LOGS/ch-proxy.error.log" ;;
    ch-proxy-modern) set -- "$LOGS/ch-proxy-modern.out" "$LOGS/ch-proxy-modern.error.log" ;;
    "ClickHouse modern") set -- "$LOGS/clickhouse-modern.log" ;;
  esac
  for log in "$@"; do
    if [[ -s "$log" ]]; then
      printf -- '--- last lines of %s\n' "$log" >&2
      tail -n 30 "$log" >&2
    fi
  done
}

# wait_until NAME PID TIMEOUT CHECK...: polls CHECK each second and fails
# early, showing the logs, if PID (empty for a reused service) exits.
wait_until() {
  local name="$1" pid="$2" timeout="$3" started=$SECONDS
  shift 3
  until "$@"; do
    if [[ -n "$pid" ]] && ! alive "$pid"; then
      show_logs "$name"
      fail "Cannot start $name: process $pid exited; its logs are above"
    fi
    if ((SECONDS - started >= timeout)); then
      show_logs "$name"
      fail "Cannot start $name: not healthy after $timeout s; its logs are above"
    fi
    if (((SECONDS - started) % 5 == 4)); then
      say "$name: still waiting ($((SECONDS - started + 1)) s)"
    fi
    sleep 1
  done
  say "$name: healthy after $((SECONDS - started)) s"
}

clickhouse_healthy() {
  [[ "$(curl -fsS --max-time 2 'http://127.0.0.1:8123/?query=SELECT%201' 2>/dev/null)" == 1 ]]
}

modern_healthy() {
  [[ "$(curl -fsS --max-time 2 'http://127.0.0.1:8125/ping' 2>/dev/null)" == Ok. ]]
}

# A TCP connect only: any HTTP request would use up the proxy's request slot.
proxy_listening() { port_open "$1"; }

# Creating the topic is the metadata round trip that proves Kafka serves clients.
kafka_topic_ready() {
  local out
  port_open 9092 || return 1
  out="$(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 \
    --create --if-not-exists --topic "$TOPIC" --partitions "$TOPIC_PARTITIONS" \
    --replication-factor 1 2>>"$LOGS/kafka-tools.log")" || return 1
  if [[ "$out" == *"Created topic"* ]]; then
    say "Kafka: created topic $TOPIC ($TOPIC_PARTITIONS partitions)"
  else
    say "Kafka: topic $TOPIC already exists"
  fi
}

lock_stack() {
  exec 9>"$RUN/stack.lock"
  if ! flock -n 9; then
    say "waiting for another scripts/stack.sh up/down on $STACK_DIR to finish"
    flock -w 600 9 || fail "Cannot lock $RUN/stack.lock: another scripts/stack.sh held it for 600 s"
  fi
}

cmd_up() {
  local started=$SECONDS
  check_servers
  mkdir -p "$RUN" "$LOGS"
  lock_stack
  STACK_DIR="$STACK_DIR" bash "$ROOT/scripts/install.sh"
  # Everything starts at once; Kafka is the slow one, so it is awaited last.
  if want_legacy; then
    start_clickhouse
    start_proxy ch-proxy "$PROXY_DIR" 8124 8123
    PROXY_WATCH="$PROXY_STARTED"
  fi
  if want_modern; then
    start_modern
    start_proxy ch-proxy-modern "$MODERN_PROXY_DIR" 8126 8125
    MODERN_PROXY_WATCH="$PROXY_STARTED"
  fi
  start_kafka
  if want_legacy; then
    wait_until ClickHouse "$CLICKHOUSE_WATCH" 60 clickhouse_healthy
    wait_until ch-proxy "$PROXY_WATCH" 20 proxy_listening 8124
  fi
  if want_modern; then
    wait_until "ClickHouse modern" "$MODERN_WATCH" 60 modern_healthy
    wait_until ch-proxy-modern "$MODERN_PROXY_WATCH" 20 proxy_listening 8126
  fi
  wait_until Kafka "$KAFKA_WATCH" 120 kafka_topic_ready
  printf '[stack] up in %s s\n' "$((SECONDS - started))"
  printf '  Kafka             127.0.0.1:9092          topic %s (%s partitions)\n' "$TOPIC" "$TOPIC_PARTITIONS"
  if want_legacy; then
    printf '  ClickHouse 18.16  http://127.0.0.1:8123   native protocol on 127.0.0.1:9000\n'
    printf '  ch-proxy          http://127.0.0.1:8124   -> 18.16, limit %s per client, no burst, 1 MiB body limit\n' "$PROXY_RATE"
  fi
  if want_modern; then
    printf '  ClickHouse modern http://127.0.0.1:8125   %s\n' "$(modern_version)"
    printf '  ch-proxy-modern   http://127.0.0.1:8126   -> modern, limit %s per client, no burst, 1 MiB body limit\n' "$PROXY_RATE"
  fi
  printf '  state             %s\n' "$STACK_DIR"
  printf '  logs              %s (access logs: ch-proxy*.access.log)\n' "$LOGS"
  printf '  stop with         bash scripts/stack.sh down\n'
}

check_servers() {
  [[ "$SERVERS" == 18.16 || "$SERVERS" == modern || "$SERVERS" == both ]] ||
    fail "Cannot run as STACK_CLICKHOUSE must be 18.16, modern or both: current value is \"$SERVERS\""
}

modern_version() {
  curl -fsS --max-time 2 'http://127.0.0.1:8125/?query=SELECT%20version()%20FORMAT%20TSV' 2>/dev/null |
    sed 's/^/ClickHouse /' || echo 'version unknown'
}

# stop NAME PID SIGNAL: asks the process to stop; the caller waits.
stop() {
  if [[ -z "$2" ]]; then
    say "$1: not running"
    return
  fi
  say "$1: stopping pid $2"
  kill "-$3" "$2" 2>/dev/null || true
}

# wait_exit NAME PID TIMEOUT: waits for the exit, then kills what lingers,
# along with its process group (nginx workers), which launch made its own.
wait_exit() {
  local started=$SECONDS
  [[ -n "$2" ]] || return 0
  while alive "$2"; do
    if ((SECONDS - started >= $3 + 10)); then
      fail "$1: pid $2 survived SIGKILL for 10 s; check it with: ps -o pid,stat,cmd -p $2"
    elif ((SECONDS - started >= $3)); then
      say "$1: WARNING: pid $2 still running after $3 s, killing its process group"
      kill -KILL -- "-$2" 2>/dev/null || kill -KILL "$2" 2>/dev/null || true
    fi
    sleep 0.2
  done
  say "$1: stopped after $((SECONDS - started)) s"
}

cmd_down() {
  local proxy modern_proxy kafka clickhouse modern
  mkdir -p "$RUN"
  lock_stack
  # down stops every part this STACK_DIR started, whichever STACK_CLICKHOUSE started it.
  proxy="$(proxy_pid)"
  modern_proxy="$(modern_proxy_pid)"
  kafka="$(kafka_pid)"
  clickhouse="$(clickhouse_pid)"
  modern="$(modern_pid)"
  # TERM is a clean shutdown for all of them; nginx's graceful QUIT could wait
  # proxy_read_timeout (300 s) for a slow query.
  stop ch-proxy "$proxy" TERM
  stop ch-proxy-modern "$modern_proxy" TERM
  stop Kafka "$kafka" TERM
  stop ClickHouse "$clickhouse" TERM
  stop "ClickHouse modern" "$modern" TERM
  wait_exit ch-proxy "$proxy" 30
  wait_exit ch-proxy-modern "$modern_proxy" 30
  wait_exit Kafka "$kafka" 60
  wait_exit ClickHouse "$clickhouse" 60
  wait_exit "ClickHouse modern" "$modern" 60
  rm -f "$RUN/kafka.pid" "$RUN/clickhouse.pid" "$RUN/clickhouse-modern.pid" \
    "$PROXY_DIR/nginx.pid" "$MODERN_PROXY_DIR/nginx.pid"
}

# show NAME PID PORT ENDPOINT: one status line; returns 1 when not running.
show() {
  if [[ -n "$2" ]]; then
    printf '  %-17s running  pid %-8s %s\n' "$1" "$2" "$4"
  elif port_open "$3"; then
    printf '  %-17s not started from here; 127.0.0.1:%s is served by %s\n' "$1" "$3" "$(port_holder "$3")"
    return 1
  else
    printf '  %-17s stopped\n' "$1"
    return 1
  fi
}

cmd_status() {
  local rc=0
  check_servers
  say "state in $STACK_DIR, logs in $LOGS, ClickHouse servers: $SERVERS"
  show Kafka "$(kafka_pid)" 9092 "127.0.0.1:9092" || rc=3
  if want_legacy; then
    show "ClickHouse 18.16" "$(clickhouse_pid)" 8123 "http://127.0.0.1:8123" || rc=3
    show ch-proxy "$(proxy_pid)" 8124 \
      "http://127.0.0.1:8124 -> 18.16 ($(grep -o 'rate=[^;]*' "$PROXY_CONF" 2>/dev/null || echo 'rate unknown'))" || rc=3
  fi
  if want_modern; then
    show "ClickHouse modern" "$(modern_pid)" 8125 "http://127.0.0.1:8125 ($(modern_version))" || rc=3
    show ch-proxy-modern "$(modern_proxy_pid)" 8126 \
      "http://127.0.0.1:8126 -> modern ($(grep -o 'rate=[^;]*' "$MODERN_PROXY_CONF" 2>/dev/null || echo 'rate unknown'))" || rc=3
  fi
  return "$rc"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    printf 'Usage: bash scripts/stack.sh up|down|status\n' >&2
    exit 2
    ;;
esac
