"""The measurements: each takes a system and a fresh ``Ctx`` and returns one result row (a dict).

- ``burn_down``: N tasks enqueued before the worker starts; the worker drains them.
- ``steady``: a producer sends at a fixed rate for a fixed time to a running worker;
  end-to-end latency per task (send to record).
- ``steady_max``: the highest rate of a ladder the system sustains, and its latency there.
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
    Producer,
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


def _percentile(values: list[float], p: float) -> float:
    return (
        values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")
    )


#: The producer's tick: each tick it sends, in one call, every task that fell due since the last.
TICK = 0.01


def _produce(
    producer: Producer,
    rate: int,
    seconds: float,
    first: int,
    sent_at: dict[int, int],
    send_ms: list[float] | None = None,
) -> tuple[int, float]:
    """Sends ``rate`` tasks/s (numbers from ``first`` on) for ``seconds``: every ``TICK`` the
    tasks due by then, in one call, each noted with the time just before that call. A producer
    that falls behind sends larger batches (and the row's rate shows it); returns (tasks sent,
    seconds it took)."""
    total = int(rate * seconds)
    next_i = 0
    start = time.monotonic()
    tick = 0
    while next_i < total:
        tick += 1
        wait = start + tick * TICK - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        due = min(total, int((time.monotonic() - start) * rate))
        if due > next_i:
            batch = range(first + next_i, first + due)
            now = time.time_ns()
            producer.send(batch)
            if send_ms is not None:
                send_ms.append((time.time_ns() - now) / 1e6)
            for n in batch:
                sent_at[n] = now
            next_i = due
    return total, time.monotonic() - start


def _warm_up(system: System, producer: Producer, records: Records) -> range:
    """100 tasks before the clock starts: the worker is up and running tasks."""
    warm = range(-100, 0)
    producer.send(warm)
    _settle(records, len(warm), 120.0, f"{system.name}: warm-up records")
    return warm


def steady(
    system: System, ctx: Ctx, rate: int, seconds: float, drain_seconds: float = 30.0
) -> dict[str, Any]:
    """Sends ``rate`` tasks/s in batches every 10 ms for ``seconds`` to a running worker. A
    system that has not run them all ``drain_seconds`` after the last send did not keep up: its
    row says how many it ran, and no latency (what it would show is the backlog's age)."""
    system.prepare(ctx)
    producer = system.producer(ctx)
    records = Records(ctx.record_dir)
    procs = system.start_worker(ctx)
    sent_at: dict[int, int] = {}
    send_ms: list[float] = []
    try:
        warm = _warm_up(system, producer, records)
        with Watch(
            ctx, system, [p.pid for p in procs], server_pids_of(ctx, system)
        ) as watch:
            total, produced = _produce(producer, rate, seconds, 0, sent_at, send_ms)
            try:
                _settle(
                    records,
                    len(warm) + total,
                    drain_seconds,
                    f"{system.name}: steady-state records",
                )
                kept_up = True
            except TimeoutError:
                kept_up = False
        time.sleep(0.5)
    finally:
        producer.close()
        system.stop_worker(ctx, procs)
    records.poll()
    missing, extra = records.check(list(warm) + list(range(total)))
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
    nan = float("nan")
    return {
        "rate": rate,
        "seconds": seconds,
        "sent_per_s": total / produced,
        "kept_up": "yes" if kept_up else "no",
        # How long the producer's calls took (the enqueue's commit): part of every latency.
        "send_p50_ms": _percentile(sorted(send_ms), 0.50),
        "send_p99_ms": _percentile(sorted(send_ms), 0.99),
        "ran": total - missing,
        "p50_ms": _percentile(latencies, 0.50) if kept_up else nan,
        "p99_ms": _percentile(latencies, 0.99) if kept_up else nan,
        "max_ms": latencies[-1] if latencies and kept_up else nan,
        "mean_ms": statistics.fmean(latencies) if latencies and kept_up else nan,
        "worker_cpu_ms_per_1k": watch.worker_cpu.total() * 1e6 / max(total, 1),
        "server_cpu_ms_per_1k": watch.server_cpu.total() * 1e6 / max(total, 1),
        "peak_rss_mib": watch.peak_rss / 2**20,
        # A system that did not keep up has tasks still queued: not lost, not counted missing.
        "missing": missing if kept_up else 0,
        "extra": extra,
        **figures,
    }


#: The rates ``steady_max`` climbs, in order (steps of 1.5× and 1.33×), until one is not sustained.
LADDER = (
    250,
    500,
    1000,
    1500,
    2000,
    3000,
    4000,
    6000,
    8000,
    12000,
    16000,
    24000,
    32000,
    48000,
    64000,
)


def steady_max(
    system: System, ctx: Ctx, step_seconds: float, drain_seconds: float = 1.0
) -> dict[str, Any]:
    """The highest rate of ``LADDER`` the system sustains: one running worker, each rate for
    ``step_seconds``; a rate is sustained when the producer reached it and every task of the step
    ran within ``drain_seconds`` of the step's last send. A rate that fails is tried once more
    (after what is queued has run): one hiccup of a shared machine does not end the climb. The
    row says why the climb stopped."""
    system.prepare(ctx)
    producer = system.producer(ctx)
    records = Records(ctx.record_dir)
    procs = system.start_worker(ctx)
    sent_at: dict[int, int] = {}
    best: dict[str, Any] = {
        "max_rate": 0,
        "p50_ms": float("nan"),
        "p99_ms": float("nan"),
    }
    first = 0
    tried: list[str] = []
    stopped = f"top of the ladder ({LADDER[-1]:,}/s)"
    drained = True
    try:
        warm = _warm_up(system, producer, records)
        expected = len(warm)
        for rate in LADDER:
            failures: list[str] = []
            while drained and len(failures) < 2:
                total, produced = _produce(producer, rate, step_seconds, first, sent_at)
                expected += total
                step = range(first, first + total)
                first += total
                why = ""
                if total / produced < 0.95 * rate:
                    why = f"the producer reached {total / produced:,.0f}/s"
                try:
                    _settle(
                        records, expected, drain_seconds, f"{system.name}: {rate}/s"
                    )
                except TimeoutError:
                    left = expected - records.poll()
                    why = (
                        why
                        or f"{left:,} of {total:,} not run {drain_seconds:g} s after the step"
                    )
                if not why:
                    break
                failures.append(why)
                tried.append(f"{rate}✗")
                # What is queued runs before the next try, or the end.
                try:
                    _settle(
                        records,
                        expected,
                        120.0,
                        f"{system.name}: the tasks of {rate}/s",
                    )
                except TimeoutError:
                    drained = False
            if failures and (len(failures) == 2 or not drained):
                stopped = f"{rate:,}/s: {'; then '.join(failures)}"
                break
            tried.append(str(rate))
            latencies = sorted((records.times[n] - sent_at[n]) / 1e6 for n in step)
            best = {
                "max_rate": rate,
                "p50_ms": _percentile(latencies, 0.5),
                "p99_ms": _percentile(latencies, 0.99),
            }
        time.sleep(0.5)
    finally:
        producer.close()
        system.stop_worker(ctx, procs)
    records.poll()
    missing, extra = records.check(list(warm) + sorted(sent_at))
    if not drained:
        # Still queued 120 s after the last send (the system fell far behind): not counted lost.
        missing = 0
    return {
        "step_seconds": step_seconds,
        "rates_tried": " ".join(tried),
        "stopped": stopped,
        "drained": "yes" if drained else "no",
        **best,
        "missing": missing,
        "extra": extra,
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
    queue's tables at once and after ``vacuum_wait`` seconds (no manual VACUUM: autovacuum and
    the system's own upkeep). A system too slow to run them all in ``most_seconds`` stops being
    sent more then: the row says how many it ran."""
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
