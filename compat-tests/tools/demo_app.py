#!/usr/bin/env python3
"""The demo's Celery app (``scripts/demo``): an ordinary Celery 5.7 app whose broker is
celeriac's queue, ``celeriac+postgresql://`` + ``$CELERIAC_DATABASE_URL``, with Celery's database
result backend on the same database.

- As a worker app: ``celeriac worker -A demo_app -Q py`` (or ``celery -A demo_app worker -Q py``)
  runs ``demo.word_count`` (Python).
- As a producer: ``demo_app.py produce --count N`` publishes N ``examples.add`` messages for the
  Rust worker, half through Celery itself (``app.send_task``, some with a countdown) and half with
  ``celeriac.Client.send_many``; then it calls ``demo.word_count.delay(...)`` a few times and
  prints each ``AsyncResult.get()`` as the Python worker returns it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence

from celery import Celery

# The app's own setting (a celeriac worker does not pass its CELERIAC_DATABASE_URL, password
# included, on to the app's processes: their broker URL comes without it, and the full one
# in-process). The result backend needs the password, so the demo gives it to the app here.
DATABASE_URL = os.environ.get("DEMO_DATABASE_URL") or os.environ.get(
    "CELERIAC_DATABASE_URL", "postgresql://localhost/celeriac_demo"
)

app = Celery(
    "demo",
    broker="celeriac+" + DATABASE_URL,
    backend="db+postgresql+psycopg://" + DATABASE_URL.split("://", 1)[1],
)
app.conf.update(broker_connection_retry_on_startup=True, result_extended=True)

SENTENCES = (
    "celery workers on a postgres queue",
    "the quick brown fox jumps over the lazy dog",
    "nothing lost nothing run twice",
    "one queue two kinds of workers",
)


@app.task(name="demo.word_count", queue="py")
def word_count(text: str) -> int:
    """Counts the words of ``text`` (runs in the Python Celery worker)."""
    return len(text.split())


def produce(count: int, seed: int | None) -> int:
    import celeriac  # the transport needs no import; the explicit client does

    rng = random.Random(seed)
    through_celery = count // 2
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(through_celery):
            options = {"countdown": 1} if i % 50 == 0 else {}
            app.send_task(
                "examples.add",
                args=(rng.randint(-1000, 1000), rng.randint(-1000, 1000)),
                producer=producer,
                **options,
            )
    celery_s = time.perf_counter() - started
    print(f"  {through_celery} x examples.add with Celery's send_task: {celery_s:.2f} s")

    started = time.perf_counter()
    with celeriac.Client(DATABASE_URL) as client:
        rest = count - through_celery
        for low in range(0, rest, 1000):
            batch = [
                ("examples.add", (rng.randint(-1000, 1000), rng.randint(-1000, 1000)))
                for _ in range(min(1000, rest - low))
            ]
            client.send_many(batch)
    print(f"  {rest} x examples.add with celeriac.Client.send_many: {time.perf_counter() - started:.2f} s")

    print("  demo.word_count for the Python Celery worker (AsyncResult.get):")
    results = [(text, word_count.delay(text)) for text in SENTENCES]
    for text, result in results:
        value = result.get(timeout=60)
        print(f"    word_count({text!r}) = {value}   [{result.id}]")
        if value != len(text.split()):
            print(f"demo_app: wrong result {value!r}", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    produce_cmd = sub.add_parser("produce", help="publish the demo's messages")
    produce_cmd.add_argument("--count", type=int, required=True)
    produce_cmd.add_argument("--seed", type=int)
    opts = parser.parse_args(argv)
    return produce(opts.count, opts.seed)


if __name__ == "__main__":
    sys.exit(main())
