"""celeriac: Rust handlers, and the Celery app's Python task in celeriac's prefork and threads
pools, all on the ``celeriac`` schema; the producer is ``celeriac.Client.send_many``."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ..common import Ctx, Producer, System, pip_version


class CeleriacProducer(Producer):
    def __init__(self, ctx: Ctx, task: str) -> None:
        import celeriac

        self.client = celeriac.Client(ctx.db_url)
        self.task = task
        self.queue = ctx.queue

    def send(self, numbers: Sequence[int]) -> None:
        if len(numbers) == 1:
            self.client.send_task(
                self.task, (numbers[0],), queue=self.queue, ignore_result=True
            )
        else:
            self.client.send_many(
                {
                    "name": self.task,
                    "args": (n,),
                    "queue": self.queue,
                    "ignore_result": True,
                }
                for n in numbers
            )


class Celeriac(System):
    server = "postgres"

    def __init__(self, name: str, language: str, pool: str | None) -> None:
        self.name = name
        self.language = language
        self.pool = pool
        self.settings = f"-P {pool} -c C" if pool else "Rust handler, -c C"

    def versions(self, ctx: Ctx) -> dict[str, str]:
        out = subprocess.run(
            [ctx.celeriac_bin, "--version"], check=False, capture_output=True, text=True
        )
        return {
            "celeriac": out.stdout.strip().rpartition(" ")[2],
            "celery": pip_version(ctx.python, "celery"),
        }

    def prepare(self, ctx: Ctx) -> None:
        subprocess.run(
            [ctx.celeriac_bin, "migrate", "--database-url", ctx.db_url],
            check=True,
            capture_output=True,
        )

    def producer(self, ctx: Ctx) -> Producer:
        return CeleriacProducer(
            ctx, "examples.record" if self.pool is None else "bench.record"
        )

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        cmd = [
            ctx.celeriac_bin,
            "worker",
            "--database-url",
            ctx.db_url,
            "-Q",
            ctx.queue,
            "-c",
            str(ctx.concurrency),
            "-l",
            "WARNING",
            "-n",
            f"{self.name}@%h",
        ]
        env = ctx.env(CELERIAC_RECORD_FILE=str(ctx.record_dir / "rust.log"))
        if self.pool is None:
            cmd.append("--example-handlers")
        else:
            cmd += [
                "-A",
                "suite.apps.celery_app",
                "-P",
                self.pool,
                "--python",
                ctx.python,
            ]
            env["BENCH_BROKER_URL"] = "celeriac+" + ctx.db_url
        log = ctx.log(self.name)
        return [
            subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=ctx.work_dir,
            )
        ]

    def queue_tables(self, ctx: Ctx) -> list[str]:
        return ["celeriac.message"]


SYSTEMS = [
    Celeriac("celeriac-rust", "rust", None),
    Celeriac("celeriac-prefork", "python", "prefork"),
    Celeriac("celeriac-threads", "python", "threads"),
]
