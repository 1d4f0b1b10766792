#!/usr/bin/env bash
# Regenerates schema/http_log.ts from schema/http_log.capnp with capnp-es.
#
# capnp-es's own CLI cannot run under Deno as is: its compiler imports
# "typescript", an optional peer dependency that Deno does not install for a
# bin. So `capnp compile -o-` writes the CodeGeneratorRequest to stdout and a
# Deno snippet, which imports typescript itself, hands it to capnp-es's
# compileAll(). The snippet is an argument because stdin carries the request.
# --no-config keeps typescript out of deno.json and deno.lock: only this script
# needs it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v capnp >/dev/null; then
  echo "gen_capnp: capnp not found on PATH; install the Debian package capnproto" >&2
  exit 1
fi

generate=$(cat <<'TS'
import "npm:typescript@5.9.3";
import { compileAll } from "npm:capnp-es@0.0.16/compiler";

const request = new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer());
const { files } = await compileAll(request, { ts: true });
const source = files.get("http_log.ts");
if (source === undefined) {
  throw new Error(`capnp-es produced no http_log.ts: files are ${[...files.keys()].join(", ")}`);
}
// The project compiles with noImplicitOverride, which capnp-es output does not honour.
const patched = source
  .replace(/^(\s+)static readonly _capnp\b/gm, "$1static override readonly _capnp")
  .replace(/^(\s+)toString\(\): string/gm, "$1override toString(): string");
await Deno.writeTextFile(
  "schema/http_log.ts",
  "// Generated from schema/http_log.capnp by scripts/gen_capnp.sh: do not edit.\n" + patched,
);
TS
)
capnp compile -o- --src-prefix=schema schema/http_log.capnp |
  deno eval --no-config --no-lock "$generate"
deno check schema/http_log.ts
echo "gen_capnp: wrote schema/http_log.ts"
