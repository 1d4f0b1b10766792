#!/usr/bin/env bash
# Installs what the local stack and the tests need, from the package registries
# only: Debian packages, Deno (npm), the Kafka jars (Maven Central) and chdb
# (PyPI). Idempotent: whatever is already there is reported and left alone.
#
# Usage: bash scripts/install.sh
# Env:   STACK_DIR  state folder for tools and jars. Default: <repo>/.stack
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
DENO_VERSION=2.9.6
CHDB_VERSION=4.4.0
KAFKA_VERSION=3.9.1
KAFKA4_VERSION=4.1.1
# chromium: the headless browser of the status page test (tests/status_test.ts).
DEB_PACKAGES=(clickhouse-server clickhouse-client nginx-light capnproto docker-compose curl chromium)
# Commands a machine of this kind normally has; installed from Debian only when absent.
DEB_FOR_COMMAND=(java:openjdk-17-jre-headless mvn:maven npm:npm)

say() { printf '[install] %s\n' "$*"; }
fail() {
  printf '[install] ERROR: %s\n' "$*" >&2
  exit 1
}

install_debian_packages() {
  local missing=() pkg pair
  for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  for pair in "${DEB_FOR_COMMAND[@]}"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if ((${#missing[@]} == 0)); then
    say "Debian packages: already installed (${DEB_PACKAGES[*]})"
    return
  fi
  ((EUID == 0)) || fail "Cannot install Debian packages ${missing[*]} as this is not root: run as root or install them first"
  say "Debian packages: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

deno_version_of() {
  { "$1" --version 2>/dev/null || true; } | awk 'NR == 1 { print $2 }'
}

install_deno() {
  local tools_deno="$STACK_DIR/tools/node_modules/.bin/deno" path_deno version=""
  if [[ -x "$tools_deno" && "$(deno_version_of "$tools_deno")" == "$DENO_VERSION" ]]; then
    say "Deno: already installed ($DENO_VERSION at $tools_deno)"
    return
  fi
  path_deno="$(command -v deno || true)"
  if [[ -n "$path_deno" ]]; then
    version="$(deno_version_of "$path_deno")"
  fi
  if [[ "$version" == 2.9.* ]]; then
    say "Deno: already installed ($version at $path_deno)"
    return
  fi
  command -v npm >/dev/null || fail "Cannot install Deno as npm is not on PATH: install Node.js and npm"
  say "Deno: installing deno@$DENO_VERSION from npm into $STACK_DIR/tools"
  mkdir -p "$STACK_DIR/tools"
  npm install --prefix "$STACK_DIR/tools" --no-audit --no-fund --loglevel=error "deno@$DENO_VERSION"
  [[ "$(deno_version_of "$tools_deno")" == "$DENO_VERSION" ]] ||
    fail "Cannot install Deno: $tools_deno does not report version $DENO_VERSION after npm install"
}

# install_kafka_jars VERSION DIR: the broker and tool jars of Kafka VERSION into DIR.
install_kafka_jars() {
  local version="$1" libs="$2" log="$STACK_DIR/logs/install-maven-$1.log" want
  # The jars match the pom and version they came from; a change fetches them anew.
  want="$(sha256sum "$ROOT/stack/pom.xml" | cut -d' ' -f1) $version"
  if [[ -f "$libs/.pom.sha256" && "$(<"$libs/.pom.sha256")" == "$want" ]]; then
    say "Kafka $version jars: already installed ($(find "$libs" -name '*.jar' | wc -l) jars in $libs)"
    return
  fi
  command -v mvn >/dev/null || fail "Cannot fetch the Kafka jars as mvn is not on PATH: apt-get install maven"
  say "Kafka $version jars: fetching with Maven from stack/pom.xml into $libs (log: $log)"
  rm -rf "$libs"
  mkdir -p "$libs" "$STACK_DIR/logs"
  if ! mvn -q -B -f "$ROOT/stack/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$version" -DoutputDirectory="$libs" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    fail "Cannot fetch the Kafka $version jars: mvn failed, full log in $log"
  fi
  printf '%s\n' "$want" >"$libs/.pom.sha256"
  say "Kafka $version jars: installed $(find "$libs" -name '*.jar' | wc -l) jars"
}

install_chdb() {
  local version
  command -v python3 >/dev/null || fail "Cannot install chdb as python3 is not on PATH: install Python 3.11 with pip"
  version="$(python3 -c 'import importlib.metadata as m; print(m.version("chdb"))' 2>/dev/null || true)"
  if [[ "$version" == "$CHDB_VERSION" ]]; then
    say "chdb: already installed ($CHDB_VERSION for $(command -v python3))"
    return
  fi
  say "chdb: installing chdb==$CHDB_VERSION with pip${version:+ (found $version)}"
  python3 -m pip install --quiet --disable-pip-version-check "chdb==$CHDB_VERSION" ||
    fail "Cannot install chdb==$CHDB_VERSION with pip for $(command -v python3): put a Python 3.11 that pip may install into (e.g. pyenv's) first on PATH"
}

started=$SECONDS
install_debian_packages
install_deno
install_kafka_jars "$KAFKA_VERSION" "$STACK_DIR/kafka/libs"
# Only tests/kafka4_test.ts runs it: a private broker proving Kafka 4.x serves anonymizer.
install_kafka_jars "$KAFKA4_VERSION" "$STACK_DIR/kafka4/libs"
install_chdb
say "done in $((SECONDS - started)) s"
