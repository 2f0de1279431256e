"""``python -m celeriac._pool_child``: one pool child of ``celeriac worker -A proj``.

Started by the worker (never by hand) with the app's own interpreter, a Unix socket to the
worker as standard input, and the options below. The task loop is Rust, in
``celeriac._native.run_pool_child``; it imports the app through ``celeriac._worker`` and runs
the jobs the worker sends until the worker says to stop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


def main(argv: list[str] | None = None) -> int:
    # `-m` put the working directory first on sys.path. `celery worker` runs without it (the app
    # is imported from the working directory by Celery's find_app itself), and a `celeriac`
    # directory there must not shadow this package.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.getcwd():
        del sys.path[0]
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


if __name__ == "__main__":
    code = main()
    # As billiard's children do: no interpreter shutdown (atexit handlers, joining the threads
    # a task left behind) once the worker is done with this process.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
