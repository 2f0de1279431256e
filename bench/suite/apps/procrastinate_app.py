"""The procrastinate app of the benchmark: one task, ``bench.record``, that records its number.

The worker loads ``app`` (``procrastinate --app=suite.apps.procrastinate_app.app worker …``),
built on ``BENCH_DATABASE_URL``; the producer builds its own app with ``make_app``. The task
is a coroutine (procrastinate is async-first: an ``async def`` task runs on the worker's event
loop, a plain ``def`` one would be sent to a thread each time).
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

from suite.record import record

TASK = "bench.record"


def make_app(conninfo: str, queue: str, concurrency: int = 1) -> App:
    """An app on ``conninfo`` with the benchmark task, deferred to ``queue``.

    The connector's pool is psycopg_pool's default (4 connections) unless the worker's
    concurrency needs more: every running job takes a connection to finish."""
    pool: dict[str, int] = {"max_size": concurrency + 2} if concurrency + 2 > 4 else {}
    app = App(connector=PsycopgConnector(conninfo=conninfo, **pool))

    @app.task(name=TASK, queue=queue)
    async def bench_record(n: int) -> None:
        record(n)

    return app


app = make_app(
    os.environ.get("BENCH_DATABASE_URL", ""),
    os.environ.get("BENCH_QUEUE", "bench"),
    int(os.environ.get("BENCH_CONCURRENCY", "1")),
)
