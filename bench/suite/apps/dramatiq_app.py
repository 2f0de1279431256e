"""The Dramatiq app of the benchmark on PostgreSQL (``dramatiq-postgres``' ``PostgresBroker``):
one actor, ``bench_record``, that records its number.

The database comes from ``BENCH_DATABASE_URL``, the queue from ``BENCH_QUEUE``. Everything else
is the broker's and Dramatiq's default: LISTEN/NOTIFY wake-ups with a 1 s poll as the safety net,
a message deleted from ``dramatiq.queue`` when acknowledged (after the actor ran), the results
middleware present (this actor stores none), Dramatiq's Retries and other default middleware.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq_postgres import PostgresBroker

from suite.record import record

broker = PostgresBroker(url=os.environ.get("BENCH_DATABASE_URL", ""))
dramatiq.set_broker(broker)


@dramatiq.actor(
    actor_name="bench_record", queue_name=os.environ.get("BENCH_QUEUE", "bench")
)
def bench_record(n: int) -> None:
    record(n)
