"""PgQueuer 1: its own worker (``pgq run``, one asyncio process on one psycopg async
connection) on the schema of ``pgq install``; the producer is ``SyncQueries.enqueue`` over one
psycopg connection (scalar arguments for one job, lists for a batch).

PgQueuer 1.6.0's ``pgq run`` needs typer < 0.29 (with 0.29 its ``--log-level`` option reaches
the code as a string and the command fails with ``AttributeError: 'str' object has no attribute
'name'``); ``unavailable`` says so."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ..common import Ctx, Producer, System, pip_version

FACTORY = "suite.apps.pgqueuer_app:create_pgqueuer"


class PgQueuerProducer(Producer):
    def __init__(self, ctx: Ctx) -> None:
        import psycopg
        from pgqueuer.db import SyncPsycopgDriver
        from pgqueuer.queries import SyncQueries

        from suite.apps.pgqueuer_app import ENTRYPOINT

        self.entrypoint = ENTRYPOINT
        self.conn = psycopg.connect(ctx.db_url, autocommit=True)
        self.queries = SyncQueries(SyncPsycopgDriver(self.conn))

    def send(self, numbers: Sequence[int]) -> None:
        if len(numbers) == 1:
            self.queries.enqueue(self.entrypoint, str(numbers[0]).encode())
        else:
            # The batch form: one list per column (entrypoints, payloads, priorities).
            self.queries.enqueue(
                [self.entrypoint] * len(numbers),
                [str(n).encode() for n in numbers],
                [0] * len(numbers),
            )

    def close(self) -> None:
        self.conn.close()


class PgQueuerSystem(System):
    name = "pgqueuer"
    language = "python"
    server = "postgres"
    settings = (
        "pgq run (asyncio, psycopg) --max-concurrent-tasks max(C,2) --batch-size C//2; LISTEN/NOTIFY, "
        "dequeue timeout 30 s; finished jobs deleted from the queue, logged in pgqueuer_log (kept)"
    )

    def unavailable(self, ctx: Ctx) -> str | None:
        version = pip_version(ctx.python, "pgqueuer")
        if version == "-":
            return f"pgqueuer is not installed in {ctx.python}'s environment"
        typer = pip_version(ctx.python, "typer")
        if (
            version == "1.6.0"
            and typer != "-"
            and tuple(int(x) for x in typer.split(".")[:2]) >= (0, 29)
        ):
            return f"pgqueuer 1.6.0's `pgq run` fails with typer {typer}: install typer<0.29"
        return None

    def versions(self, ctx: Ctx) -> dict[str, str]:
        return {
            name: pip_version(ctx.python, name)
            for name in ("pgqueuer", "psycopg", "typer")
        }

    def prepare(self, ctx: Ctx) -> None:
        # The CLI connects with PGDSN (asyncpg if installed, else psycopg).
        out = subprocess.run(
            [ctx.python, "-m", "pgqueuer", "install"],
            check=False,
            env=ctx.env(PGDSN=ctx.db_url),
            capture_output=True,
            text=True,
            cwd=ctx.work_dir,
        )
        if out.returncode != 0:
            raise RuntimeError(f"pgq install failed: {out.stderr.strip()[-500:]}")

    @staticmethod
    def knobs(ctx: Ctx) -> list[str]:
        """C jobs at once: ``--max-concurrent-tasks C`` (this worker's hard cap on picked jobs,
        enforced by its dequeue query), which PgQueuer requires to be at least twice the batch
        size: the batch is C // 2 (at most the default 10), and the cap at least 2."""
        cap = max(2, ctx.concurrency)
        return [
            "--max-concurrent-tasks",
            str(cap),
            "--batch-size",
            str(min(10, max(1, cap // 2))),
        ]

    def producer(self, ctx: Ctx) -> Producer:
        return PgQueuerProducer(ctx)

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        cmd = [
            ctx.python,
            "-m",
            "pgqueuer",
            "run",
            FACTORY,
            "--log-level",
            "WARNING",
            *self.knobs(ctx),
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
        return ["public.pgqueuer", "public.pgqueuer_log"]


SYSTEMS = [PgQueuerSystem()]
