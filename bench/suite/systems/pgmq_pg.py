"""pgmq (the pgmq schema, SQL-only install, with the ``pgmq`` Python client): a Python consumer
loop in C threads (``apps/pgmq_app.py``: ``read_with_poll`` a batch, record, ``delete``); the
producer is ``PGMQueue.send`` for one message and ``PGMQueue.send_batch`` for a batch.

The pgmq SQL comes from the ``pgmq`` PyPI package itself, which bundles a pinned release of the
extension's SQL-only install script (``pgmq/sql/pgmq.sql``; ``pgmq.get_embedded_sql_version()``)
and installs it (``pgmq.install_pgmq_sql(pgmq.get_embedded_install_sql())``, which is what the
documented ``pgmq.install_pgmq_from_sql`` does): no C or Rust extension is built. To use another
pgmq release, point ``BENCH_PGMQ_SQL`` at its ``pgmq.sql`` (SQL-only install script).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..common import Ctx, Producer, System, pip_version


class PgmqProducer(Producer):
    def __init__(self, ctx: Ctx) -> None:
        from pgmq import PGMQueue

        self.queue = PGMQueue(conn_string=ctx.db_url, pool_size=1, init_extension=False)
        self.name = ctx.queue

    def send(self, numbers: Sequence[int]) -> None:
        if len(numbers) == 1:
            self.queue.send(self.name, {"n": numbers[0]})
        else:
            self.queue.send_batch(self.name, [{"n": n} for n in numbers])

    def close(self) -> None:
        self.queue.close()


class Pgmq(System):
    name = "pgmq"
    language = "python"
    server = "postgres"
    settings = (
        "C threads: read_with_poll(vt=30, qty=C, 100 ms poll) + delete per message"
    )

    def sql(self) -> tuple[str, str]:
        """The SQL-only install script and its version: ``BENCH_PGMQ_SQL`` or the client's own."""
        override = os.environ.get("BENCH_PGMQ_SQL")
        if override:
            return Path(override).read_text(), f"file {Path(override).name}"
        import pgmq

        return pgmq.get_embedded_install_sql(), pgmq.get_embedded_sql_version()

    def unavailable(self, ctx: Ctx) -> str | None:
        try:
            import pgmq  # noqa: F401
        except ImportError:
            return "the pgmq Python client is not installed in the suite's environment"
        try:
            self.sql()
        except Exception as e:  # noqa: BLE001 - any failure to find the SQL is the reason
            return f"no pgmq SQL: {e} (set BENCH_PGMQ_SQL to a pgmq.sql SQL-only install script)"
        return None

    def versions(self, ctx: Ctx) -> dict[str, str]:
        return {
            "pgmq (python)": pip_version(ctx.python, "pgmq"),
            "pgmq (sql)": self.sql()[1],
        }

    def prepare(self, ctx: Ctx) -> None:
        import pgmq

        pgmq.install_pgmq_sql(self.sql()[0], dsn=ctx.db_url)
        queue = pgmq.PGMQueue(conn_string=ctx.db_url, pool_size=1, init_extension=False)
        try:
            queue.create_queue(ctx.queue)
        finally:
            queue.close()

    def producer(self, ctx: Ctx) -> Producer:
        return PgmqProducer(ctx)

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        log = ctx.log(self.name)
        return [
            subprocess.Popen(
                [ctx.python, "-m", "suite.apps.pgmq_app"],
                env=ctx.env(),
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=ctx.work_dir,
            )
        ]

    def queue_tables(self, ctx: Ctx) -> list[str]:
        # The queue table and its archive (empty here: finished messages are deleted).
        return [f"pgmq.q_{ctx.queue}", f"pgmq.a_{ctx.queue}"]


SYSTEMS = [Pgmq()]
