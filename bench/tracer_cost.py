"""What Celery's tracer costs a no-op task, in one process: the bound on a lean path around it.

A celeriac pool child hands each protocol-2 message to Celery's ``fast_trace_task`` (the same
call a Celery prefork child makes), which builds the task's ``Context``, pushes and pops the
request, runs the task, computes the result's repr for the success log, and calls
``task_ready``. This times that call for the benchmark's task shape (``task_ignore_result``, no
signal receivers, no events) against calling the task's ``run`` directly, round-robin over a
few rounds, and prints where the tracer's own time goes (cProfile, by own time)::

    .venv/bin/python bench/tracer_cost.py [--tasks 200000] [--rounds 3] [--top 10]

Output: one line per round, ``round R: fast_trace_task X us/task, direct call Y us/task,
difference D``, then the median difference and the profile. A lean path could save at most
the difference per task; compare it with a task's whole cost in a drain (README, "Performance").
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
import uuid
from typing import Any

from celery import Celery
from celery.app import trace

HOSTNAME = "tracer-cost@localhost"


def make_app() -> Celery:
    app = Celery("bench", broker="memory://")
    app.conf.update(task_ignore_result=True, worker_send_task_events=False)

    @app.task(name="bench.noop")
    def noop(n: int) -> None:
        return None

    app.finalize()
    trace.setup_worker_optimizations(app, hostname=HOSTNAME)
    task = app.tasks["bench.noop"]
    task.__trace__ = trace.build_tracer(
        "bench.noop", task, app.loader, HOSTNAME, app=app
    )
    return app


def requests(n: int) -> list[tuple[str, dict[str, Any]]]:
    """Request dicts as celeriac's child builds them from a protocol-2 message's headers."""
    out = []
    for _ in range(n):
        task_id = str(uuid.uuid4())
        out.append(
            (
                task_id,
                {
                    "lang": "py",
                    "task": "bench.noop",
                    "id": task_id,
                    "root_id": task_id,
                    "parent_id": None,
                    "group": None,
                    "retries": 0,
                    "timelimit": [None, None],
                    "argsrepr": "(1,)",
                    "kwargsrepr": "{}",
                    "origin": "producer@localhost",
                    "ignore_result": False,
                    "properties": {
                        "correlation_id": task_id,
                        "delivery_mode": 2,
                        "priority": 0,
                    },
                    "reply_to": None,
                    "correlation_id": task_id,
                    "hostname": HOSTNAME,
                    "delivery_info": {
                        "exchange": "",
                        "routing_key": "bench",
                        "priority": 0,
                        "redelivered": False,
                    },
                },
            )
        )
    return out


BODY = ((1,), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def traced(batch: list[tuple[str, dict[str, Any]]]) -> float:
    """µs per task through ``fast_trace_task``."""
    started = time.perf_counter()
    for task_id, request in batch:
        trace.fast_trace_task("bench.noop", task_id, request, BODY, None, None)
    return (time.perf_counter() - started) / len(batch) * 1e6


def direct(app: Celery, batch: list[tuple[str, dict[str, Any]]]) -> float:
    """µs per task calling the task's ``run``."""
    run = app.tasks["bench.noop"].run
    started = time.perf_counter()
    for _ in batch:
        args, kwargs, _embed = BODY
        run(*args, **kwargs)
    return (time.perf_counter() - started) / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--top", type=int, default=10, help="profile rows to print (0: none)"
    )
    options = parser.parse_args()
    app = make_app()
    batch = requests(options.tasks)
    differences = []
    for r in range(options.rounds):
        a, b = traced(batch), direct(app, batch)
        differences.append(a - b)
        print(
            f"round {r + 1}: fast_trace_task {a:.2f} us/task, direct call {b:.2f} us/task, difference {a - b:.2f}"
        )
    print(f"median difference {statistics.median(differences):.2f} us/task")
    if options.top:
        profile = cProfile.Profile()
        profile.runcall(traced, batch[: min(len(batch), 50_000)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(options.top)


if __name__ == "__main__":
    main()
