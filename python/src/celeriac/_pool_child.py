"""One pool child of ``celeriac worker -A proj``.

Started by the worker (never by hand) with the app's own interpreter, as ``python -c
<bootstrap> --protocol … --index …`` (the bootstrap, ``celeriac_pool::CHILD_BOOTSTRAP``, drops
the working directory from ``sys.path`` and calls :func:`run`), a Unix socket to the worker as
standard input, and the options below. The task loop is Rust, in
``celeriac._native.run_pool_child``; it imports the app through ``celeriac._worker`` and runs
the jobs the worker sends until the worker says to stop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="celeriac pool child")
    parser.add_argument("--protocol", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--pool", choices=("prefork", "threads", "solo"), required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--loglevel", required=True)
    args = parser.parse_args(argv)

    from celeriac import _native

    return _native.run_pool_child(
        protocol=args.protocol,
        index=args.index,
        pool=args.pool,
        threads=args.threads,
        hostname=args.hostname,
        app=args.app,
        loglevel=args.loglevel,
    )


def run() -> None:
    """Runs the child and leaves as billiard's children do: with ``os._exit``, no interpreter
    shutdown (atexit handlers, joining the threads a task left behind), whatever happened."""
    # The worker stops its children with frames (and SIGKILL as a last resort); SIGINT and
    # SIGTERM sent to the whole group by a terminal or a service manager must not. Set here, so
    # Python's own table says so too (asyncio.run and libraries that save and restore handlers
    # read it), as it did when the child embedded CPython without Python's handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
