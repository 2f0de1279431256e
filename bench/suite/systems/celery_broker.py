"""Celery 5.7's own worker (``celery worker --pool prefork``) on RabbitMQ and on Redis, with
Celery's defaults; the producer is ``apply_async`` (one publish per task: Celery has no batch
publish) over one connection."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from ..common import Ctx, Producer, System, pip_version


class CeleryProducer(Producer):
    def __init__(self, ctx: Ctx, broker: str) -> None:
        os.environ["BENCH_BROKER_URL"] = broker
        os.environ["BENCH_QUEUE"] = ctx.queue
        import importlib

        from suite.apps import celery_app

        importlib.reload(celery_app)
        self.app = celery_app.app
        self.task = self.app.tasks["bench.record"]
        self.conn = self.app.connection_for_write()
        self.conn.ensure_connection(max_retries=3)
        self.queue = ctx.queue

    def send(self, numbers: Sequence[int]) -> None:
        with self.app.producer_or_acquire() as producer:
            for n in numbers:
                self.task.apply_async((n,), queue=self.queue, producer=producer)

    def close(self) -> None:
        self.conn.release()
        self.app.close()


class CeleryOnBroker(System):
    language = "python"

    def __init__(self, name: str, server: str) -> None:
        self.name = name
        self.server = server
        self.settings = "celery worker --pool prefork -c C"

    def url(self, ctx: Ctx) -> str:
        return ctx.amqp_url if self.server == "rabbitmq" else ctx.redis_url

    def unavailable(self, ctx: Ctx) -> str | None:
        return None if self.url(ctx) else f"no {self.server} URL given"

    def versions(self, ctx: Ctx) -> dict[str, str]:
        return {
            "celery": pip_version(ctx.python, "celery"),
            "kombu": pip_version(ctx.python, "kombu"),
        }

    def prepare(self, ctx: Ctx) -> None:
        # A fresh, empty queue: purge what an earlier measurement may have left.
        producer = CeleryProducer(ctx, self.url(ctx))
        try:
            with producer.app.connection_for_write() as conn:
                from kombu import Queue

                Queue(ctx.queue, channel=conn.default_channel).declare()
                conn.default_channel.queue_purge(ctx.queue)
        finally:
            producer.close()

    def producer(self, ctx: Ctx) -> Producer:
        return CeleryProducer(ctx, self.url(ctx))

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        cmd = [
            ctx.python,
            "-m",
            "celery",
            "-A",
            "suite.apps.celery_app",
            "worker",
            "--pool",
            "prefork",
            "-c",
            str(ctx.concurrency),
            "-Q",
            ctx.queue,
            "-l",
            "WARNING",
            "-n",
            f"{self.name}@%h",
        ]
        log = ctx.log(self.name)
        env = ctx.env(BENCH_BROKER_URL=self.url(ctx))
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


SYSTEMS = [
    CeleryOnBroker("celery-rabbitmq", "rabbitmq"),
    CeleryOnBroker("celery-redis", "redis"),
]
