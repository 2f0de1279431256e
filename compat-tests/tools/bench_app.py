"""The app of the worker benchmark: one no-op task, results disabled. The broker comes from
``BENCH_BROKER`` (celeriac's worker replaces it with its own database anyway)."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench_app", broker=os.environ.get("BENCH_BROKER", "amqp://guest@localhost//"))
app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True)


@app.task(name="bench_app.noop")
def noop() -> None:
    return None
