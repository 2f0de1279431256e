"""The PgQueuer app of the benchmark: one entrypoint, ``bench.record``, whose payload is the
task's number (ASCII); the handler records it.

The worker is ``pgq run suite.apps.pgqueuer_app:create_pgqueuer``: the factory opens one
psycopg async connection (autocommit, as PgQueuer requires) on ``BENCH_DATABASE_URL`` and
registers the entrypoint with PgQueuer's defaults (no per-entrypoint ``concurrency_limit``:
the worker's cap is ``pgq run --max-concurrent-tasks``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from pgqueuer import Job, PgQueuer

from suite.record import record

ENTRYPOINT = "bench.record"


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    async with await psycopg.AsyncConnection.connect(
        os.environ["BENCH_DATABASE_URL"], autocommit=True
    ) as conn:
        pgq = PgQueuer.from_psycopg_connection(conn)

        @pgq.entrypoint(ENTRYPOINT)
        async def bench_record(job: Job) -> None:
            assert job.payload is not None
            record(int(job.payload))

        yield pgq
