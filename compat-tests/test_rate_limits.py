"""Rate limits: Celery's ``rate_limit`` per worker, celeriac's fleet-wide limits, and operators'
``celeriac rate-limit`` changes, with the sample project's ``limited`` (``rate_limit="2/s"``),
``limited_globally`` (``global_rate_limit="2/s"``) and ``stamp`` (no limit) tasks, which return
the time they started. Limits are checked on those start times; the bounds are Celery's (8 tasks
at 2/s start over at least 3.5 s) with room for the slower side only.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from celery.result import AsyncResult

from tools.celeriac_testkit import run_celeriac, wait_for
from tools.sample_proj import SAMPLE_PROJ, Proj, ProjWorker

PARKED = "00000000-0000-0000-0000-000000000000"


def starts(proj: Proj, results: list[AsyncResult], timeout: float = 60) -> list[float]:
    """The tasks' start times, sorted (each must succeed)."""
    values = [proj.get(r, timeout=timeout) for r in results]
    assert all(r.state == "SUCCESS" for r in results), [(r.id, r.state, r.result) for r in results]
    return sorted(values)


def span(times: list[float]) -> float:
    return times[-1] - times[0]


def warm_up(proj: Proj, workers: int = 1) -> None:
    """Runs a few tasks first, so every pool child has its result backend connection and the
    first limited task does not start late."""
    starts(proj, [proj.send("stamp", "warm") for _ in range(4 * workers)])


def waiting(proj: Proj, task: str) -> tuple[int, int]:
    """(parked, held by a worker) messages of ``task``."""
    parked, held = proj.query(
        "select count(*) filter (where leased_by = %s), count(*) filter (where leased_by <> %s)"
        " from celeriac.message where task_name = %s",
        PARKED,
        PARKED,
        task,
    )[0]
    return parked, held


def test_celery_rate_limit_spaces_a_workers_tasks_and_others_keep_flowing(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    proj_worker(concurrency=2)
    warm_up(proj)
    limited = [proj.send("limited", str(i)) for i in range(8)]
    # Waiting messages stay in the database: the worker holds the ones it runs within a second.
    parked, held = wait_for(
        lambda: (w := waiting(proj, "proj.tasks.limited"))[0] > 0 and w, 10, "limited messages to be parked"
    )
    assert held <= 3, (parked, held)
    others = [proj.send("stamp", str(i)) for i in range(8)]
    limited_starts = starts(proj, limited)
    other_starts = starts(proj, others)
    assert span(limited_starts) >= 3.5, limited_starts
    gaps = [b - a for a, b in itertools.pairwise(limited_starts)]
    assert min(gaps) >= 0.45, gaps
    # The unlimited tasks did not wait behind the throttled ones.
    assert other_starts[-1] < limited_starts[-3], (other_starts, limited_starts)
    assert waiting(proj, "proj.tasks.limited") == (0, 0)


def test_two_workers_each_enforce_their_own_celery_limit(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    workers = [proj_worker(concurrency=1), proj_worker(concurrency=1)]
    warm_up(proj, 2)
    limited_starts = starts(proj, [proj.send("limited", str(i)) for i in range(8)])
    # Two buckets of 2/s: about half the span of one (the second worker finds the parked
    # messages within its one-second poll).
    assert 1.4 <= span(limited_starts) < 3.4, limited_starts
    ran = [sum("Task proj.tasks.limited[" in line and "succeeded" in line for line in w.log_lines()) for w in workers]
    assert min(ran) >= 1, ran
    assert sum(ran) == 8, ran


def test_a_global_limit_holds_across_two_workers(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    proj_worker(concurrency=2)
    proj_worker(concurrency=2)
    warm_up(proj, 2)
    limited_starts = starts(proj, [proj.send("limited_globally", str(i)) for i in range(8)])
    assert span(limited_starts) >= 3.5, limited_starts
    out = run_celeriac_cli(proj, "rate-limit", "show", "proj.tasks.limited_globally")
    row = next(line.split() for line in out.splitlines() if line.startswith("proj.tasks.limited_globally "))
    assert row[1:5] == ["global", "2/s", "-", "2/s"], out


def run_celeriac_cli(proj: Proj, *args: str) -> str:
    return run_celeriac(celeriac_binary(), "--database-url", proj.database_url, *args)


def celeriac_binary() -> Path:
    return Path(os.environ.get("CELERIAC_BIN") or Path(__file__).resolve().parents[1] / "target/debug/celeriac")


def test_an_operators_limit_applies_within_a_second_and_clears(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    worker = proj_worker(concurrency=2)
    warm_up(proj)
    changed = time.monotonic()
    out = run_celeriac_cli(proj, "rate-limit", "set", "proj.tasks.stamp", "2/s")
    assert out.splitlines()[1].split()[:5] == ["proj.tasks.stamp", "global", "-", "2/s", "2/s"], out
    worker.wait_for(lambda: "rate limit of proj.tasks.stamp: 2/s fleet-wide" in worker.log(), 5, "the new limit")
    assert time.monotonic() - changed < 1.5
    stamps = starts(proj, [proj.send("stamp", str(i)) for i in range(6)])
    assert span(stamps) >= 2.5, stamps

    # Per worker, it beats the app's own limit; cleared, the app's applies again.
    run_celeriac_cli(proj, "rate-limit", "set", "proj.tasks.limited", "20/s", "--per-worker")
    worker.wait_for(lambda: "rate limit of proj.tasks.limited is now 20/s per worker" in worker.log(), 5, "20/s")
    assert span(starts(proj, [proj.send("limited", str(i)) for i in range(8)])) < 2.0
    run_celeriac_cli(proj, "rate-limit", "clear", "proj.tasks.stamp")
    run_celeriac_cli(proj, "rate-limit", "clear", "proj.tasks.limited", "--per-worker")
    worker.wait_for(lambda: "rate limit of proj.tasks.limited is now 2/s per worker" in worker.log(), 5, "2/s")
    assert span(starts(proj, [proj.send("stamp", str(i)) for i in range(6)])) < 1.5
    out = run_celeriac_cli(proj, "rate-limit", "show", "proj.tasks.stamp")
    assert "no rate limits for proj.tasks.stamp" in out, out


def test_rate_limited_messages_survive_a_killed_worker(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    first = proj_worker(concurrency=1, extra_args=["--lease-seconds", "2", "--heartbeat-interval", "0.5"])
    warm_up(proj)
    limited = [proj.send("limited", str(i)) for i in range(12)]
    wait_for(lambda: waiting(proj, "proj.tasks.limited")[0] >= 5, 10, "parked messages")
    first.kill()
    killed_at = time.time()
    second = proj_worker(concurrency=1)
    limited_starts = starts(proj, limited, timeout=90)
    assert len(limited_starts) == 12
    after = [t for t in limited_starts if t > killed_at]
    # The new worker's first task starts late (its pool child connects to the result backend
    # first) and holds up the one queued behind it; from then on the starts keep the limit.
    gaps = [b - a for a, b in itertools.pairwise(after[2:])]
    assert len(after) >= 7, after
    assert min(gaps) >= 0.45, gaps
    assert span(after) >= 0.5 * (len(after) - 1) - 0.5, after
    # A task the killed worker finished but had not yet deleted comes round again (at least
    # once): its result is already there, so wait for the redelivery to run and go too.
    wait_for(lambda: waiting(proj, "proj.tasks.limited") == (0, 0), 30, "every limited message to be done")
    assert second.proc.poll() is None


def test_app_settings_give_limits_and_can_disable_them(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    settings = {
        "task_annotations": {"proj.tasks.stamp": {"rate_limit": "2/s"}},
        "celeriac_global_rate_limits": {"proj.tasks.add": "100/m"},
    }
    worker = proj_worker(concurrency=2, env={"PROJ_RATE_SETTINGS": json.dumps(settings)})
    worker.wait_for(lambda: "rate limit of proj.tasks.stamp: 2/s per worker" in worker.log(), 5, "stamp's limit")
    assert "rate limit of proj.tasks.add: 1.6667/s fleet-wide" in worker.log()
    out = run_celeriac_cli(proj, "rate-limit", "show")
    assert any(line.split()[:4] == ["proj.tasks.add", "global", "100/m", "-"] for line in out.splitlines()), out
    stamps = starts(proj, [proj.send("stamp", str(i)) for i in range(6)])
    assert span(stamps) >= 2.5, stamps
    worker.stop()

    disabled = proj_worker(concurrency=2, env={"PROJ_RATE_SETTINGS": json.dumps({"worker_disable_rate_limits": True})})
    disabled.wait_for(
        lambda: "rate limit of proj.tasks.limited_globally: 2/s fleet-wide" in disabled.log(), 5, "the global limit"
    )
    warm_up(proj)
    assert "rate limit of proj.tasks.limited:" not in disabled.log()
    assert span(starts(proj, [proj.send("limited", str(i)) for i in range(8)])) < 2.0


def test_a_bad_rate_limit_stops_the_worker_with_a_clear_error(proj: Proj) -> None:
    env = {**proj.env, "PROJ_RATE_SETTINGS": json.dumps({"task_default_rate_limit": "10/min"})}
    done = subprocess.run(
        [str(celeriac_binary()), "worker", "-A", "proj", "--database-url", proj.database_url, "-c", "1"],
        cwd=SAMPLE_PROJ,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert '"10/min" is not a rate limit: the unit must be s, m or h' in done.stderr, done.stderr


def test_the_rate_limit_command_refuses_bad_rates(proj: Proj) -> None:
    done = subprocess.run(
        [str(celeriac_binary()), "--database-url", proj.database_url, "rate-limit", "set", "proj.tasks.add", "10/min"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "is not a rate limit" in done.stderr, done.stderr
    assert "no rate limits" in run_celeriac_cli(proj, "rate-limit", "show", "proj.tasks.add")


def test_inspect_shows_waiting_messages(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    proj_worker(concurrency=1)
    limited = [proj.send("limited", str(i)) for i in range(10)]
    wait_for(lambda: waiting(proj, "proj.tasks.limited")[0] >= 3, 10, "parked messages")
    queues = run_celeriac_cli(proj, "inspect", "queues")
    header, *rows = queues.splitlines()
    assert header.split() == ["queue", "ready", "delayed", "leased", "rate_limited", "dead_lettered"]
    celery = next(r.split() for r in rows if r.split()[0] == "celery")
    assert int(celery[4]) >= 1, queues
    limits = run_celeriac_cli(proj, "inspect", "rate-limits")
    row = next(r.split() for r in limits.splitlines() if r.startswith("proj.tasks.limited "))
    assert row[1:5] == ["worker", "2/s", "-", "2/s"], limits
    assert int(row[5]) >= 1, limits
    starts(proj, limited)
