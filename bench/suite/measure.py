"""The measurements: each takes a system and a fresh ``Ctx`` and returns one result row (a dict).

- ``burn_down``: N tasks enqueued before the worker starts; the worker drains them.
- ``steady``: a producer sends at a fixed rate for a fixed time to a running worker;
  end-to-end latency per task (send to record).
- ``enqueue``: N tasks one at a time, then N in batches, into an idle queue (no worker).
- ``bloat``: N tasks through one queue in a rolling window; the queue's tables afterwards, then
  again once autovacuum has had a chance.

Every measurement that runs tasks checks the records: every number sent recorded exactly once.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any, Self

from .common import (
    CpuMeter,
    Ctx,
    Records,
    System,
    postgres_pids,
    process_tree,
    pss_bytes,
    rss_bytes,
    table_figures,
    wait_for,
)

SAMPLE_SECONDS = 0.1


class Watch:
    """Samples a worker's process tree (CPU, peak RSS and PSS) and the queue server's CPU on a
    background thread until stopped."""

    def __init__(
        self, ctx: Ctx, system: System, roots: Sequence[int], server_pids: Any
    ) -> None:
        self.roots = list(roots)
        self.server_pids = server_pids
        self.worker_cpu = CpuMeter()
        self.server_cpu = CpuMeter()
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._samples = 0

    def __enter__(self) -> Self:
        self.worker_cpu.start(process_tree(self.roots))
        self.server_cpu.start(self.server_pids())
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        tree = process_tree(self.roots)
        self.worker_cpu.sample(tree)
        self.server_cpu.sample(self.server_pids())
        self.peak_rss = max(self.peak_rss, rss_bytes(tree))
        # PSS is costly to read (smaps_rollup walks the page tables): every 5th sample.
        if self._samples % 5 == 0:
            self.peak_pss = max(self.peak_pss, pss_bytes(tree))
        self._samples += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def server_pids_of(ctx: Ctx, system: System) -> Any:
    """A function returning the queue server's processes now."""
    if system.server == "postgres":
        return lambda: postgres_pids(ctx.admin_url)
    from .servers import broker_pids

    return lambda: broker_pids(system.server)


def _settle(records: Records, expected: int, timeout: float, what: str) -> float:
    """Waits until ``expected`` records are in; returns the monotonic time they were."""
    wait_for(what, lambda: records.poll() >= expected, timeout)
    return time.monotonic()


def burn_down(
    system: System, ctx: Ctx, tasks: int, timeout: float = 900.0
) -> dict[str, Any]:
    """Enqueues ``tasks`` tasks, then starts the worker and times the drain."""
    system.prepare(ctx)
    numbers = range(tasks)
    producer = system.producer(ctx)
    try:
        started = time.monotonic()
        for first in range(0, tasks, 5000):
            producer.send(numbers[first : first + 5000])
        enqueue_seconds = time.monotonic() - started
    finally:
        producer.close()
    records = Records(ctx.record_dir)
    launched = time.monotonic()
    procs = system.start_worker(ctx)
    try:
        with Watch(
            ctx, system, [p.pid for p in procs], server_pids_of(ctx, system)
        ) as watch:
            done = _settle(records, tasks, timeout, f"{system.name}: {tasks} records")
        # Anything still to come (a redelivery) would be a duplicate: give it a moment.
        time.sleep(0.5)
    finally:
        system.stop_worker(ctx, procs)
    records.poll()
    missing, extra = records.check(numbers)
    times = sorted(records.times.values())
    drain = (times[-1] - times[0]) / 1e9 if len(times) > 1 else float("nan")
    figures = (
        table_figures(ctx.db_url, system.queue_tables(ctx))
        if system.server == "postgres"
        else {}
    )
    return {
        "tasks": tasks,
        "enqueue_per_s": tasks / enqueue_seconds,
        "tasks_per_s": tasks / drain if drain > 0 else float("nan"),
        "wall_s": done - launched,
        "worker_cpu_ms_per_1k": watch.worker_cpu.total() * 1e6 / tasks,
        "server_cpu_ms_per_1k": watch.server_cpu.total() * 1e6 / tasks,
        "peak_rss_mib": watch.peak_rss / 2**20,
        "peak_pss_mib": watch.peak_pss / 2**20,
        "missing": missing,
        "extra": extra,
        **figures,
    }


def steady(
    system: System, ctx: Ctx, rate: int, seconds: float, timeout: float = 120.0
) -> dict[str, Any]:
    """Sends ``rate`` tasks/s in batches every 10 ms for ``seconds`` to a running worker."""
    system.prepare(ctx)
    producer = system.producer(ctx)
    records = Records(ctx.record_dir)
    procs = system.start_worker(ctx)
    sent_at: dict[int, int] = {}
    try:
        # Warm up: the worker is up and running tasks before the clock starts.
        warm = range(-100, 0)
        producer.send(warm)
        _settle(records, len(warm), 120.0, f"{system.name}: warm-up records")
        tick = 0.01
        total = int(rate * seconds)
        next_n = 0
        behind = 0.0
        start = time.monotonic()
        with Watch(
            ctx, system, [p.pid for p in procs], server_pids_of(ctx, system)
        ) as watch:
            while next_n < total:
                due = min(total, int((time.monotonic() - start) * rate) + 1)
                if due > next_n:
                    batch = range(next_n, due)
                    now = time.time_ns()
                    producer.send(batch)
                    for n in batch:
                        sent_at[n] = now
                    next_n = due
                sleep = start + next_n / rate - time.monotonic()
                if sleep > 0:
                    time.sleep(min(sleep, tick))
                else:
                    behind = max(behind, -sleep)
            produced = time.monotonic() - start
            try:
                _settle(
                    records,
                    len(warm) + total,
                    timeout,
                    f"{system.name}: steady-state records",
                )
            except TimeoutError:
                pass
        time.sleep(0.5)
    finally:
        producer.close()
        system.stop_worker(ctx, procs)
    records.poll()
    numbers = list(warm) + list(range(total))
    missing, extra = records.check(numbers)
    latencies = sorted(
        (records.times[n] - sent_at[n]) / 1e6
        for n in range(total)
        if n in records.times
    )
    figures = (
        table_figures(ctx.db_url, system.queue_tables(ctx))
        if system.server == "postgres"
        else {}
    )

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))]
            if latencies
            else float("nan")
        )

    return {
        "rate": rate,
        "seconds": seconds,
        "sent_per_s": total / produced,
        "producer_behind_ms": behind * 1e3,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        "worker_cpu_ms_per_1k": watch.worker_cpu.total() * 1e6 / max(total, 1),
        "server_cpu_ms_per_1k": watch.server_cpu.total() * 1e6 / max(total, 1),
        "peak_rss_mib": watch.peak_rss / 2**20,
        "missing": missing,
        "extra": extra,
        **figures,
    }


def enqueue(
    system: System, ctx: Ctx, one_by_one: int, batched: int, batch: int = 1000
) -> dict[str, Any]:
    """Enqueue rates from Python into an idle queue: one task per call, then ``batch`` per call."""
    system.prepare(ctx)
    producer = system.producer(ctx)
    try:
        start = time.monotonic()
        for n in range(one_by_one):
            producer.send((n,))
        single = time.monotonic() - start
        start = time.monotonic()
        for first in range(one_by_one, one_by_one + batched, batch):
            producer.send(range(first, min(first + batch, one_by_one + batched)))
        many = time.monotonic() - start
    finally:
        producer.close()
    return {
        "one_by_one": one_by_one,
        "one_per_s": one_by_one / single,
        "batched": batched,
        "batch": batch,
        "batched_per_s": batched / many,
    }


def bloat(
    system: System,
    ctx: Ctx,
    tasks: int,
    most_seconds: float,
    window: int = 20000,
    vacuum_wait: float = 75.0,
) -> dict[str, Any]:
    """Runs ``tasks`` tasks through one queue, never more than ``window`` waiting, then reads the
    queue's tables at once and after ``vacuum_wait`` seconds (autovacuum only). A system too
    slow to run them all in ``most_seconds`` stops being sent more then: the row says how many
    it ran."""
    system.prepare(ctx)
    producer = system.producer(ctx)
    records = Records(ctx.record_dir)
    procs = system.start_worker(ctx)
    peak: dict[str, int] = {}
    try:
        start = time.monotonic()
        next_look = start
        sent = 0
        while sent < tasks:
            done = records.poll()
            if time.monotonic() - start > most_seconds:
                tasks = sent
                break
            if sent - done < window // 2:
                batch = min(window - (sent - done), tasks - sent, 5000)
                producer.send(range(sent, sent + batch))
                sent += batch
            else:
                time.sleep(0.02)
            if time.monotonic() >= next_look:
                next_look += 2.0
                figures = table_figures(ctx.db_url, system.queue_tables(ctx))
                peak["total"] = max(
                    peak.get("total", 0),
                    figures["table_bytes"] + figures["index_bytes"],
                )
        _settle(records, tasks, 900.0, f"{system.name}: {tasks} records")
        elapsed = time.monotonic() - start
        after = table_figures(ctx.db_url, system.queue_tables(ctx))
        time.sleep(vacuum_wait)
        later = table_figures(ctx.db_url, system.queue_tables(ctx))
    finally:
        producer.close()
        system.stop_worker(ctx, procs)
    records.poll()
    missing, extra = records.check(range(tasks))
    return {
        "tasks": tasks,
        "tasks_per_s": tasks / elapsed,
        "peak_total_mib": peak.get("total", 0) / 2**20,
        "after_table_mib": after["table_bytes"] / 2**20,
        "after_index_mib": after["index_bytes"] / 2**20,
        "after_dead": after["dead_tuples"],
        "later_table_mib": later["table_bytes"] / 2**20,
        "later_index_mib": later["index_bytes"] / 2**20,
        "later_dead": later["dead_tuples"],
        "later_total_mib": (later["table_bytes"] + later["index_bytes"]) / 2**20,
        "missing": missing,
        "extra": extra,
    }
