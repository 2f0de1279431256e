"""The pgmq consumer of the benchmark. pgmq is a queue, not a worker framework, so this is the
small loop its docs show, with the sync client (``pgmq.PGMQueue``, psycopg pool):

    messages = queue.read_with_poll(name, vt=30, qty=C)   # long-poll, 30 s visibility timeout
    for m in messages: record(m.message["n"]); queue.delete(name, m.msg_id)

run by C threads at once (``BENCH_CONCURRENCY``), each with its own pooled connection: C tasks
run at a time, each thread holding at most C read messages. A message is deleted once its task
has run (at-least-once: a consumer that dies mid-batch leaves its messages to reappear after the
visibility timeout). ``read_with_poll`` keeps pgmq's defaults: it re-checks every 100 ms for up
to 5 s inside PostgreSQL (no LISTEN/NOTIFY).

    python -m suite.apps.pgmq_app   # BENCH_DATABASE_URL, BENCH_QUEUE, BENCH_CONCURRENCY

SIGTERM or SIGINT stops it: each thread finishes the batch in hand, then exits.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from pgmq import PGMQueue

from suite.record import record

#: The visibility timeout (seconds) of a read: pgmq's default (``PGMQueue.vt``).
VT = 30


def consume(queue: PGMQueue, name: str, batch: int, stop: threading.Event) -> None:
    while not stop.is_set():
        for message in queue.read_with_poll(name, vt=VT, qty=batch):
            record(message.message["n"])
            queue.delete(name, message.msg_id)


def main() -> None:
    url = os.environ["BENCH_DATABASE_URL"]
    name = os.environ.get("BENCH_QUEUE", "bench")
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "2"))
    # The schema is installed by the benchmark (``pgmq.install_pgmq_from_sql``), not as an
    # extension: don't run ``CREATE EXTENSION pgmq`` on connect.
    queue = PGMQueue(
        conn_string=url, pool_size=max(10, concurrency), init_extension=False
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            consume(queue, name, concurrency, stop)
        except BaseException as e:
            failed.append(e)
            stop.set()
            raise

    threads = [
        threading.Thread(target=run, name=f"pgmq-consumer-{i}")
        for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        stop.wait(0.5)
        for t in threads:
            t.join(0.01)
    queue.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
