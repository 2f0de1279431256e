"""awa (awa-pg, Python SDK over the Rust awa engine): an async Python handler in awa's worker
runtime (``AsyncClient.start([(queue, C)])``); the producer is the synchronous ``awa.Client``:
``insert`` for one job, ``enqueue_many_copy`` (COPY into queue storage) for a batch."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ..common import Ctx, Producer, System, connect, pip_version


class AwaProducer(Producer):
    def __init__(self, ctx: Ctx) -> None:
        import awa

        from suite.apps.awa_app import Record

        self.record = Record
        self.client = awa.Client(ctx.db_url)
        self.queue = ctx.queue

    def send(self, numbers: Sequence[int]) -> None:
        if len(numbers) == 1:
            self.client.insert(self.record(n=numbers[0]), queue=self.queue)
        else:
            self.client.enqueue_many_copy(
                [self.record(n=n) for n in numbers], queue=self.queue
            )

    def close(self) -> None:
        self.client.close()


class Awa(System):
    name = "awa"
    language = "python"
    server = "postgres"
    settings = "async handler, queue max_workers C, 200 ms poll + LISTEN/NOTIFY"

    def unavailable(self, ctx: Ctx) -> str | None:
        if pip_version(ctx.python, "awa-pg") == "-":
            return "awa-pg is not installed in the suite's environment"
        return None

    def versions(self, ctx: Ctx) -> dict[str, str]:
        return {"awa-pg": pip_version(ctx.python, "awa-pg")}

    def prepare(self, ctx: Ctx) -> None:
        subprocess.run(
            [ctx.python, "-m", "awa", "--database-url", ctx.db_url, "migrate"],
            check=True,
            capture_output=True,
            env=ctx.env(),
        )
        # A fresh install runs on awa 0.6's queue-storage engine, but ``migrate`` leaves the
        # routing on "canonical" until the first worker starts and auto-finalizes it (only while
        # no job was ever enqueued). The burn-down enqueues before any worker runs, so activate
        # queue storage here with the SDK's call for queue-storage-only setups.
        import awa

        client = awa.Client(ctx.db_url)
        try:
            client.install_queue_storage()
        finally:
            client.close()

    def producer(self, ctx: Ctx) -> Producer:
        return AwaProducer(ctx)

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        log = ctx.log(self.name)
        return [
            subprocess.Popen(
                [ctx.python, "-m", "suite.apps.awa_app"],
                env=ctx.env(),
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=ctx.work_dir,
            )
        ]

    def queue_tables(self, ctx: Ctx) -> list[str]:
        # awa's queue storage is many tables (ready/done/lease rings as partitions, counters,
        # catalogs): every ordinary table of the ``awa`` schema (partitions are their own tables).
        with connect(ctx.db_url) as conn:
            rows = conn.execute(
                """select format('%I.%I', n.nspname, c.relname) from pg_class c
                   join pg_namespace n on n.oid = c.relnamespace
                   where n.nspname = 'awa' and c.relkind = 'r' order by 1"""
            ).fetchall()
        return [r[0] for r in rows]


SYSTEMS = [Awa()]
