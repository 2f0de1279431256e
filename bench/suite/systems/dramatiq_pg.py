"""Dramatiq 2 on PostgreSQL with ``dramatiq-postgres`` (``PostgresBroker``; the older
``dramatiq-pg`` requires dramatiq < 2): ``dramatiq`` worker, one process with C threads; the
producer is ``actor.send`` (one INSERT + NOTIFY per message: the broker has no batch enqueue)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..common import Ctx, Producer, System, pip_version


class DramatiqProducer(Producer):
    def __init__(self, ctx: Ctx) -> None:
        os.environ["BENCH_DATABASE_URL"] = ctx.db_url
        os.environ["BENCH_QUEUE"] = ctx.queue
        import importlib

        from suite.apps import dramatiq_app

        importlib.reload(dramatiq_app)
        self.broker = dramatiq_app.broker
        self.actor = dramatiq_app.bench_record

    def send(self, numbers: Sequence[int]) -> None:
        for n in numbers:
            self.actor.send(n)

    def close(self) -> None:
        self.broker.close()


class DramatiqPostgres(System):
    name = "dramatiq-postgres"
    language = "python"
    server = "postgres"
    settings = "dramatiq --processes 1 --threads C, LISTEN/NOTIFY + 1 s poll"

    def unavailable(self, ctx: Ctx) -> str | None:
        if pip_version(ctx.python, "dramatiq-postgres") == "-":
            return "dramatiq-postgres is not installed in the suite's environment"
        return None

    def versions(self, ctx: Ctx) -> dict[str, str]:
        return {
            "dramatiq": pip_version(ctx.python, "dramatiq"),
            "dramatiq-postgres": pip_version(ctx.python, "dramatiq-postgres"),
        }

    def prepare(self, ctx: Ctx) -> None:
        # The broker's documented schema command (creates the ``dramatiq`` schema).
        cli = str(Path(ctx.python).parent / "dramatiq-postgres")
        subprocess.run(
            [cli, "--dsn", ctx.db_url, "init"],
            check=True,
            capture_output=True,
            env=ctx.env(),
        )

    def producer(self, ctx: Ctx) -> Producer:
        return DramatiqProducer(ctx)

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        cmd = [
            ctx.python,
            "-m",
            "dramatiq",
            "suite.apps.dramatiq_app",
            "--processes",
            "1",
            "--threads",
            str(ctx.concurrency),
            "--queues",
            ctx.queue,
        ]
        log = ctx.log(self.name)
        return [
            subprocess.Popen(
                cmd,
                env=ctx.env(),
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=ctx.work_dir,
            )
        ]

    def queue_tables(self, ctx: Ctx) -> list[str]:
        return ["dramatiq.queue"]


SYSTEMS = [DramatiqPostgres()]
