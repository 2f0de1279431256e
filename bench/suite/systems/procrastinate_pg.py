"""procrastinate 3: its own worker (``procrastinate worker``, one asyncio process running up to
C jobs at once) on procrastinate's schema; the producer is the task's ``defer`` and
``batch_defer`` over the app's synchronous psycopg pool."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ..common import Ctx, Producer, System, pip_version

APP = "suite.apps.procrastinate_app.app"


class ProcrastinateProducer(Producer):
    def __init__(self, ctx: Ctx) -> None:
        from suite.apps.procrastinate_app import TASK, make_app

        # Opened synchronously, the PsycopgConnector runs on a psycopg (sync) connection pool.
        self.app = make_app(ctx.db_url, ctx.queue).open()
        self.task = self.app.tasks[TASK]

    def send(self, numbers: Sequence[int]) -> None:
        if len(numbers) == 1:
            self.task.defer(n=numbers[0])
        else:
            self.task.batch_defer(*({"n": n} for n in numbers))

    def close(self) -> None:
        self.app.close()


class Procrastinate(System):
    name = "procrastinate"
    language = "python"
    server = "postgres"
    settings = (
        "procrastinate worker --concurrency C (asyncio, async def task); LISTEN/NOTIFY, polling every 5 s; "
        "finished jobs kept (status succeeded, --delete-jobs never)"
    )

    def unavailable(self, ctx: Ctx) -> str | None:
        if pip_version(ctx.python, "procrastinate") == "-":
            return f"procrastinate is not installed in {ctx.python}'s environment"
        return None

    def versions(self, ctx: Ctx) -> dict[str, str]:
        return {
            "procrastinate": pip_version(ctx.python, "procrastinate"),
            "psycopg": pip_version(ctx.python, "psycopg"),
        }

    def cli(self, ctx: Ctx, *args: str) -> list[str]:
        return [ctx.python, "-m", "procrastinate", f"--app={APP}", *args]

    def prepare(self, ctx: Ctx) -> None:
        out = subprocess.run(
            self.cli(ctx, "schema", "--apply"),
            check=False,
            env=ctx.env(),
            capture_output=True,
            text=True,
            cwd=ctx.work_dir,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"procrastinate schema --apply failed: {out.stderr.strip()[-500:]}"
            )

    def producer(self, ctx: Ctx) -> Producer:
        return ProcrastinateProducer(ctx)

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        cmd = self.cli(
            ctx,
            "--log-level=warning",
            "worker",
            f"--queues={ctx.queue}",
            f"--concurrency={ctx.concurrency}",
            f"--name={self.name}",
        )
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
        return ["public.procrastinate_jobs", "public.procrastinate_events"]


SYSTEMS = [Procrastinate()]
