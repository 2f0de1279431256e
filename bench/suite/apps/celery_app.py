"""The Celery app of the benchmark: one task, ``bench.record``, that records its number.

The broker comes from ``BENCH_BROKER_URL`` (``amqp://``, ``redis://`` or
``celeriac+postgresql://``); results are off (``task_ignore_result``), as in a fire-and-forget
workload; everything else is Celery's default (prefetch multiplier 4, early acknowledgement).
"""

from __future__ import annotations

import os

from celery import Celery

from suite.record import record

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "memory://"))
app.conf.update(
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench"),
    worker_send_task_events=False,
)


@app.task(name="bench.record")
def bench_record(n: int) -> None:
    record(n)
