#!/usr/bin/env python3
"""Python task throughput of worker processes, side by side in one run:

- ``celery-prefork``: ``celery -A bench_app worker --pool prefork -c C`` on RabbitMQ;
- ``celeriac-prefork``: ``celeriac worker -A bench_app -P prefork -c C`` on PostgreSQL;
- ``celeriac-threads``: ``celeriac worker -A bench_app -P threads -c C``;
- on request (``--systems``): ``celeriac-prefork-events``, ``celeriac-threads-events``, the same
  with task events on (``-E``).

    bench_worker.py --database-url postgresql://postgres@127.0.0.1:5432/postgres \\
        --amqp-url amqp://guest:guest@127.0.0.1:5672// --celeriac-bin target/release/celeriac \\
        [--tasks 20000] [--rounds 3] [--concurrency 2] [--json] \\
        [--baseline-bin OLD/celeriac --baseline-python OLD/.venv/bin/python]

With ``--baseline-bin`` (another build of celeriac, e.g. before a change, with the interpreter
whose celeriac package matches it), ``baseline-prefork`` and ``baseline-threads`` run in the same
rounds, for a before/after comparison in one run.

Every task is ``bench_app.noop`` (``bench_app.py``: no arguments, ``task_ignore_result``,
prefetch multiplier 4), ``-l WARNING``. Each round runs every system once, round-robin, starting
one later each round. A measurement:

1. empties the queue and pre-publishes N messages: ``apply_async`` to RabbitMQ, or
   ``celeriac.Client.send_many`` (the same envelope) to a fresh celeriac database;
2. starts the worker, and times from the first message taken to the last task done, polling
   every 20 ms. celeriac: from the first claim (fewer unleased rows in ``celeriac.message``) to
   no rows left (a row is deleted when its task is done). Celery: from the first delivery (the
   queue's ready count, ``queue_declare(passive=True)``, drops) to an empty queue; at that point
   up to the prefetch window (``-c`` times 4 messages) plus the running tasks are not done yet, so
   Celery's time is slightly short (Celery 5.7's own ``CELERY_BENCH`` counter crashes its
   pool callbacks: ``task_ready() got an unexpected keyword argument 'successful'``);
3. samples the resident memory of the worker and all its children every 100 ms (``VmRSS``
   summed over the process tree; for forked Celery children this counts shared pages twice,
   so the PSS sum from ``smaps_rollup`` is reported too) and keeps the peaks;
4. stops the worker with SIGTERM.

Output (stdout): one line per measurement, then per system the median tasks/s, peak RSS and PSS,
and the ratio of each celeriac system to Celery per round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent


def tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def memory_kib(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return rss, pss


class MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = self.peak_pss = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            rss, pss = memory_kib(tree(self.pid))
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.stop_event.wait(0.1)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_celery(args: argparse.Namespace, n: int) -> tuple[float, int, int]:
    env = {**os.environ, "BENCH_BROKER": args.amqp_url}
    sys.path.insert(0, str(HERE))
    os.environ["BENCH_BROKER"] = args.amqp_url
    from bench_app import app, noop

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_declare("celery", durable=True, auto_delete=False)
        channel.queue_purge("celery")
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                noop.apply_async(producer=producer)
    celery = str(Path(sys.executable).with_name("celery"))
    log_path = Path(args.log_dir) / "celery-worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [celery, "-A", "bench_app", "worker", "--pool", "prefork", "-c", str(args.concurrency), "-l", "WARNING"],
            cwd=HERE,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sampler = MemorySampler(proc.pid)
    sampler.start()
    first = last = None
    deadline = time.monotonic() + args.timeout
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        while time.monotonic() < deadline and proc.poll() is None:
            ready = channel.queue_declare("celery", passive=True).message_count
            now = time.monotonic()
            if first is None and ready < n:
                first = now
            if ready == 0:
                last = now
                break
            time.sleep(0.02)
    sampler.stop()
    stop(proc)
    if first is None or last is None:
        raise SystemExit(f"celery did not finish the tasks; its log:\n{log_path.read_text()}")
    return last - first, sampler.peak_rss, sampler.peak_pss


def run_celeriac(
    args: argparse.Namespace, n: int, pool: str, baseline: bool = False, events: bool = False
) -> tuple[float, int, int]:
    import celeriac

    dbname = f"bench_worker_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    url = args.database_url.rsplit("/", 1)[0] + "/" + dbname
    try:
        with celeriac.Client(url) as client:
            client.migrate()
            for start in range(0, n, 5000):
                client.send_many([("bench_app.noop", (), {})] * min(5000, n - start))
        binary, python = (args.baseline_bin, args.baseline_python) if baseline else (args.celeriac_bin, sys.executable)
        argv = [binary, "worker", "-A", "bench_app", "-P", pool, "-c", str(args.concurrency)]
        argv += ["-l", "WARNING", "--database-url", url, "--python", python]
        if events:
            argv += ["-E"]
        label = f"{'baseline' if baseline else 'celeriac'}-{pool}{'-events' if events else ''}"
        with (Path(args.log_dir) / f"{label}.log").open("wb") as log:
            proc = subprocess.Popen(argv, cwd=HERE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        first = last = None
        deadline = time.monotonic() + args.timeout
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "select count(*), count(*) filter (where leased_by is null) from celeriac.message"
                ).fetchone()
                left, ready = row if row else (n, n)
                now = time.monotonic()
                if first is None and ready < n:
                    first = now
                if left == 0:
                    last = now
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
        sampler.stop()
        stop(proc)
        if first is None or last is None:
            log = (Path(args.log_dir) / f"{label}.log").read_text(errors="replace")
            raise SystemExit(f"{label} did not finish the tasks; its log:\n{log}")
        return last - first, sampler.peak_rss, sampler.peak_pss
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", required=True)
    p.add_argument("--amqp-url", required=True)
    p.add_argument("--celeriac-bin", required=True)
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", action="store_true")
    p.add_argument("--log-dir", default=".", help="where the workers' logs go")
    p.add_argument("--baseline-bin", help="another celeriac binary, run side by side as baseline-*")
    p.add_argument("--baseline-python", help="the interpreter for --baseline-bin's pool children")
    p.add_argument("--systems", help="comma-separated subset of the systems to run (default: all)")
    args = p.parse_args()
    if bool(args.baseline_bin) != bool(args.baseline_python):
        p.error("--baseline-bin and --baseline-python go together")

    systems = ["celery-prefork", "celeriac-prefork", "celeriac-threads"]
    # Task events on (-E): only when asked for with --systems.
    optional = ["celeriac-prefork-events", "celeriac-threads-events"]
    if args.baseline_bin:
        systems += ["baseline-prefork", "baseline-threads"]
    if args.systems:
        wanted = args.systems.split(",")
        unknown = set(wanted) - set(systems) - set(optional)
        if unknown:
            p.error(f"unknown systems {sorted(unknown)}; these run: {systems}")
        systems = wanted
    results: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    n = args.tasks
    for r in range(args.rounds):
        order = systems[r % len(systems) :] + systems[: r % len(systems)]
        for system in order:
            if system == "celery-prefork":
                secs, rss, pss = run_celery(args, n)
            else:
                kind, pool = system.split("-", 1)
                events = pool.endswith("-events")
                pool = pool.removesuffix("-events")
                secs, rss, pss = run_celeriac(args, n, pool, baseline=kind == "baseline", events=events)
            rate = n / secs if secs > 0 else float("inf")
            results[system].append({"seconds": secs, "rate": rate, "rss_kib": rss, "pss_kib": pss, "round": r})
            print(
                f"round {r + 1}/{args.rounds} {system:<17} {n} tasks in {secs:.2f} s = {rate:,.0f} tasks/s; "
                f"peak RSS {rss / 1024:.0f} MiB, PSS {pss / 1024:.0f} MiB",
                flush=True,
            )
    celery_by_round = {m["round"]: m["rate"] for m in results.get("celery-prefork", [])}
    summary = {}
    for system in systems:
        ms = results[system]
        med = statistics.median(m["rate"] for m in ms)
        ratios = [m["rate"] / celery_by_round[m["round"]] for m in ms if m["round"] in celery_by_round]
        summary[system] = {
            "median_rate": med,
            "peak_rss_mib": max(m["rss_kib"] for m in ms) / 1024,
            "peak_pss_mib": max(m["pss_kib"] for m in ms) / 1024,
            "ratios_to_celery": ratios,
        }
        print(
            f"median {system:<17} {med:,.0f} tasks/s, peak RSS {summary[system]['peak_rss_mib']:.0f} MiB, "
            f"PSS {summary[system]['peak_pss_mib']:.0f} MiB; vs celery per round: "
            + ", ".join(f"{x:.2f}x" for x in ratios)
        )
    if args.json:
        print(json.dumps({"tasks": n, "concurrency": args.concurrency, "results": results, "summary": summary}))


if __name__ == "__main__":
    main()
