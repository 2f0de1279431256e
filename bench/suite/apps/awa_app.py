"""The awa worker of the benchmark (awa-pg, the Python SDK of the Rust awa engine): one async
handler for the ``Record`` job kind that records its number, run the way awa's quick start shows
(``AsyncClient.task`` + ``AsyncClient.start([(queue, C)])``).

    python -m suite.apps.awa_app   # BENCH_DATABASE_URL, BENCH_QUEUE, BENCH_CONCURRENCY

Everything else is awa's default: a 200 ms poll interval backed by LISTEN/NOTIFY wake-ups,
heartbeat leases, 25 attempts, the queue-storage engine a fresh ``migrate`` installs. SIGTERM or
SIGINT stops it gracefully (``shutdown`` drains the jobs in flight).
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from typing import Any

import awa

from suite.record import record


@dataclass
class Record:
    """The job's arguments: the number to record (awa derives the kind ``record``)."""

    n: int


async def main() -> None:
    url = os.environ["BENCH_DATABASE_URL"]
    queue = os.environ.get("BENCH_QUEUE", "bench")
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "2"))
    client = awa.AsyncClient(url)

    @client.task(Record, queue=queue)
    async def handle(job: Any) -> None:
        record(job.args.n)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.start([(queue, concurrency)])
    try:
        await stop.wait()
    finally:
        await client.shutdown(timeout_ms=10_000)
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
