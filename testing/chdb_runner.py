"""Serves SQL to one persistent chDB session over JSON lines, for the Deno bench and tests.

Usage: python3 testing/chdb_runner.py SESSION_DIR

Each stdin line is {"sql": "...", "format": "TSV"}; each stdout line answers it with
{"ok": true, "data": "...", "elapsed_ms": 1.2} or {"ok": false, "error": "..."}.
elapsed_ms is measured around the engine call alone, so it leaves out the pipe to Deno.
"""

import json
import sys
import time

from chdb import session


def main() -> None:
    sess = session.Session(sys.argv[1])
    try:
        for line in sys.stdin:
            request = json.loads(line)
            started = time.perf_counter()
            try:
                result = sess.query(request["sql"], request.get("format", "TSV"))
                answer = {
                    "ok": True,
                    "data": str(result),
                    "elapsed_ms": (time.perf_counter() - started) * 1000,
                }
            except Exception as err:  # the engine reports every SQL error as a plain Exception
                answer = {"ok": False, "error": str(err)}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        sess.close()


if __name__ == "__main__":
    main()
