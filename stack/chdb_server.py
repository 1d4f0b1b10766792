"""A modern ClickHouse server for the local stack and the tests: chDB's embedded
ClickHouse (clickhouse-local) with its real HTTP interface switched on.

Usage: python3 stack/chdb_server.py DATA_DIR HTTP_PORT [--setting NAME=VALUE ...]

Listens on 127.0.0.1 only, since the embedded server has no passwords.
--setting changes a default of the server's default profile, e.g.
async_insert=1, so tests can prove anonymizer does not rely on defaults.
Stops cleanly on SIGTERM or SIGINT: the serving query is killed, and tables and
rows stay in DATA_DIR for the next start.
"""

import os
import signal
import sys
import threading
import time
import urllib.request
import uuid

CONFIG = """<clickhouse>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    {users_config}
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <flush_interval_milliseconds>1000</flush_interval_milliseconds>
    </query_log>
</clickhouse>
"""

# Written only for --setting: one passwordless user on loopback, whose profile holds them.
USERS = """<clickhouse>
    <profiles><default>{settings}</default></profiles>
    <users><default>
        <password></password>
        <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile>
        <quota>default</quota>
    </default></users>
    <quotas><default></default></quotas>
</clickhouse>
"""

# A marker in the text of the query that keeps the server up; killing that query stops it.
SERVE_ID = "anonymizer-chdb-serve"


def prepare(data_dir: str, http_port: int, settings: dict) -> None:
    os.makedirs(os.path.join(data_dir, "metadata"), exist_ok=True)
    # clickhouse-local keeps `system` in memory unless a database of that name is
    # attached from disk; query_log must survive restarts for the token tests.
    system_sql = os.path.join(data_dir, "metadata", "system.sql")
    if not os.path.exists(system_sql):
        with open(system_sql, "w", encoding="utf-8") as f:
            f.write(f"ATTACH DATABASE _ UUID '{uuid.uuid4()}' ENGINE = Atomic\n")
    users_config = ""
    if settings:
        users = os.path.join(data_dir, "users.xml")
        with open(users, "w", encoding="utf-8") as f:
            f.write(USERS.format(settings="".join(f"<{k}>{v}</{k}>" for k, v in settings.items())))
        users_config = f"<users_config>{users}</users_config>"
    # LocalServer reads ./config.xml, and _chdb.query takes no command-line flags.
    with open(os.path.join(data_dir, "config.xml"), "w", encoding="utf-8") as f:
        f.write(CONFIG.format(http_port=http_port, users_config=users_config))
    os.chdir(data_dir)


def main() -> int:
    usage = "Usage: python3 stack/chdb_server.py DATA_DIR HTTP_PORT [--setting NAME=VALUE ...]\n"
    args = sys.argv[1:]
    if len(args) < 2 or not args[1].isdigit():
        sys.stderr.write(usage)
        return 2
    data_dir = os.path.abspath(args[0])
    http_port = int(args[1])
    settings = {}
    rest = args[2:]
    while rest:
        if len(rest) < 2 or rest[0] != "--setting" or "=" not in rest[1]:
            sys.stderr.write(usage)
            return 2
        name, value = rest[1].split("=", 1)
        if not name.replace("_", "").isalnum() or not value.replace("_", "").isalnum():
            sys.stderr.write(f"chdb_server: --setting must be NAME=VALUE in letters, digits and _: {rest[1]!r}\n")
            return 2
        settings[name] = value
        rest = rest[2:]
    prepare(data_dir, http_port, settings)

    from chdb import _chdb  # imported late: it reads ./config.xml from the cwd

    failure: list = []

    def serve() -> None:
        try:
            _chdb.query(
                "SYSTEM START LISTEN HTTP; "
                f"SELECT sleepEachRow(1), '{SERVE_ID}' FROM system.numbers FORMAT Null "
                "SETTINGS max_block_size = 1",
                "TabSeparated",
                path=data_dir,
            )
        except Exception as err:  # the engine reports every failure as a plain Exception
            if not stopping.is_set():
                failure.append(err)

    stopping = threading.Event()
    server = threading.Thread(target=serve, daemon=True)
    server.start()

    def stop(_signum, _frame) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    ping = f"http://127.0.0.1:{http_port}/ping"
    ready = False
    while not stopping.is_set() and server.is_alive():
        if not ready:
            try:
                with urllib.request.urlopen(ping, timeout=1) as res:
                    ready = res.read() == b"Ok.\n"
                if ready:
                    print(f"chdb_server: ready on 127.0.0.1:{http_port} (data {data_dir})", flush=True)
            except OSError:
                pass
        stopping.wait(0.2)

    if failure:
        sys.stderr.write(f"chdb_server: the server query failed: {failure[0]}\n")
        return 1
    try:
        kill = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/",
            data=(
                f"KILL QUERY WHERE query LIKE '%{SERVE_ID}%' AND query NOT LIKE 'KILL%' SYNC"
            ).encode(),
        )
        urllib.request.urlopen(kill, timeout=30).read()
    except OSError as err:
        sys.stderr.write(f"chdb_server: KILL QUERY failed ({err}); exiting anyway\n")
        return 0
    server.join(timeout=30)
    print("chdb_server: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
