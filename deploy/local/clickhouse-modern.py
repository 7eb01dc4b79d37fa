"""Runs ClickHouse 26.x from PyPI's chdb-core wheel as a real server, in this process.

usage: python clickhouse-modern.py DIR

DIR holds a ClickHouse server config (`config.xml`, the same template as Debian's server
gets: deploy/local/clickhouse-config.xml) and the users file it names. chdb's
clickhouse-local reads `./config.xml` from its working directory (ports, listen host,
users, paths), `SYSTEM START LISTEN` opens the HTTP and native listeners, and they live
while the one query runs, so the query ends with one that never returns. The server is
this process: SIGTERM or SIGKILL ends it like a real server (parts written before an
INSERT was answered are on disk), and Ctrl-C does too.

Exit status: 70 if the server stopped by itself (a listener that could not open, say: the
engine printed why on stderr), 64 for a bad DIR.
"""

import os
import signal
import sys
import xml.etree.ElementTree as ElementTree

# One call that never returns: the listeners close when the query ends.
SERVE = (
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    "SELECT sleepEachRow(1) FROM numbers(100000000000) SETTINGS max_block_size = 1 FORMAT Null"
)


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 64
    server_dir = os.path.abspath(sys.argv[1])
    config = os.path.join(server_dir, "config.xml")
    try:
        data = ElementTree.parse(config).getroot().findtext("path")
    except (OSError, ElementTree.ParseError) as e:
        print(f"clickhouse-modern: cannot read {config}: {e}", file=sys.stderr)
        return 64
    if not data:
        print(f"clickhouse-modern: {config} has no <path> (the data directory)", file=sys.stderr)
        return 64
    # The engine's own signal handling is not installed in this embedded form; the default
    # actions end the process at once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Importing chdb opens (and closes) a session in the working directory, which would read
    # our config.xml and take its ports: import it from elsewhere.
    os.chdir("/")
    from chdb import _chdb

    os.chdir(server_dir)
    os.makedirs(data, exist_ok=True)
    print(f"clickhouse-modern: ClickHouse (chdb) serving {data} with {config}", file=sys.stderr, flush=True)
    try:
        _chdb.query(SERVE, "TabSeparated", path=data)
    except Exception as e:  # noqa: BLE001 - any end of the serving query is a failure
        print(f"clickhouse-modern: the server stopped: {e}", file=sys.stderr)
        return 70
    print("clickhouse-modern: the server stopped (see the messages above)", file=sys.stderr)
    return 70


if __name__ == "__main__":
    sys.exit(main())
