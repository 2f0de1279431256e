#!/usr/bin/env python3
"""Print N real Celery 5.7 task envelopes, one JSON text a line, for the demo and load tests.

    celery_producer.py --count N [--task NAME] [--queue Q] [--seed S] [--serializer json]

Messages are published with a real Celery app's ``send_task`` (see ``celery_capture``); each line
is exactly what kombu's SQLAlchemy transport would INSERT into ``kombu_message.payload``.

Default mix (``--task`` not given): ``examples.add`` with two random ints, about
``--noop-fraction`` (15 %) ``examples.noop`` without arguments, and about ``--countdown-fraction``
(2 %) of all messages with ``countdown`` 1 or 2 seconds. ``--task NAME`` sends every message to
NAME (two random ints when NAME is ``examples.add``, else no arguments, or ``--args`` JSON).

stdout carries only envelopes; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from celery_capture import capturing, make_app

ADD = "examples.add"
NOOP = "examples.noop"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be within [0, 1]")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=_positive_int, required=True, help="number of envelopes")
    parser.add_argument("--task", help=f"send every message to this task (default: mix of {ADD} and {NOOP})")
    parser.add_argument("--args", help="JSON list of positional args for every message (with or without --task)")
    parser.add_argument("--queue", help="queue / routing key (default: Celery's default queue, 'celery')")
    parser.add_argument("--seed", type=int, help="random seed (default: nondeterministic)")
    parser.add_argument("--noop-fraction", type=_fraction, default=0.15, help="share of examples.noop in the mix")
    parser.add_argument("--countdown-fraction", type=_fraction, default=0.02, help="share with countdown 1-2 s")
    parser.add_argument(
        "--serializer",
        default="json",
        choices=["json", "pickle", "msgpack"],
        help="task_serializer (default json)",
    )
    parser.add_argument("--protocol", type=int, default=2, choices=[1, 2], help="task_protocol (default 2)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    fixed_args: list[Any] | None = None
    if opts.args is not None:
        fixed_args = json.loads(opts.args)
        if not isinstance(fixed_args, list):
            print("celery_producer: --args must be a JSON list", file=sys.stderr)
            return 2

    rng = random.Random(opts.seed)
    app = make_app(opts.protocol, task_serializer=opts.serializer)
    out = sys.stdout
    write = out.write
    started = time.perf_counter()

    def emit(text: str) -> None:
        write(text)
        write("\n")

    with (
        capturing(app, on_envelope=emit) as sink,
        app.producer_or_acquire() as producer,
    ):
        for _ in range(opts.count):
            name = opts.task or (NOOP if rng.random() < opts.noop_fraction else ADD)
            if fixed_args is not None:
                args: list[Any] = fixed_args
            elif name == ADD:
                args = [rng.randint(-1000, 1000), rng.randint(-1000, 1000)]
            else:
                args = []
            options: dict[str, Any] = {}
            if opts.queue:
                options["queue"] = opts.queue
            if opts.countdown_fraction and rng.random() < opts.countdown_fraction:
                options["countdown"] = rng.choice((1, 2))
            app.send_task(name, args=args, producer=producer, **options)
    out.flush()
    elapsed = time.perf_counter() - started
    print(f"celery_producer: {sink.count} envelopes in {elapsed:.2f}s", file=sys.stderr)
    if sink.count != opts.count:
        print(f"celery_producer: expected {opts.count} envelopes, captured {sink.count}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # e.g. `| head`: stop quietly, like other line-oriented tools.
        sys.stderr.close()
        sys.exit(141)
