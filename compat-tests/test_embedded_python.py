"""``celeriac worker -A proj``: a real Celery project's tasks, run by the real binary's pool of
Python children, observed through Celery's own ``AsyncResult`` (``db+postgresql+psycopg://`` backend),
signal receivers writing to a log file, and child PIDs.

The sample project is ``compat-tests/sample_proj/proj``; the client app here only publishes
(through the celeriac kombu transport) and reads results.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from celery import chain, chord, group
from celery.result import AsyncResult

from tools.celeriac_testkit import wait_for
from tools.sample_proj import RESULT_TIMEOUT, SAMPLE_PROJ, Proj, ProjWorker, child_pids

# --- loading ----------------------------------------------------------------------------------


@pytest.mark.wheel
@pytest.mark.parametrize(
    ("spec", "app_first"),
    [("proj", False), ("proj.celery", False), ("proj.celery:app", False), ("proj", True)],
)
def test_app_is_found_the_way_celery_finds_it(
    proj: Proj, proj_worker: Callable[..., ProjWorker], spec: str, app_first: bool
) -> None:
    proj_worker(pool="solo", app=spec, app_first=app_first)
    assert proj.get(proj.send("add", 2, 3)) == 5


def worker_that_exits(celeriac_bin: Path, proj: Proj, *args: str) -> subprocess.CompletedProcess[str]:
    """``celeriac worker --database-url … ARGS`` in the sample project, run until it exits."""
    return subprocess.run(
        [str(celeriac_bin), "worker", "--database-url", proj.database_url, *args],
        cwd=SAMPLE_PROJ,
        env=proj.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.wheel
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nosuchmodule", "The module nosuchmodule was not found."),
        ("proj.celery:nope", "Unable to load celery application.\nThe module proj.celery:nope was not found."),
        ("proj.tasks.add", "is a PromiseProxy, not a Celery application"),
    ],
)
def test_bad_app_spec_fails_with_celerys_message(celeriac_bin: Path, proj: Proj, spec: str, expected: str) -> None:
    out = worker_that_exits(celeriac_bin, proj, "-A", spec, "-P", "solo")
    assert out.returncode == 1, out.stderr
    assert expected in out.stderr, out.stderr


def test_app_settings_apply_without_flags(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    # No -Q and no -c: like celery worker, consume the app's queues with its worker_concurrency.
    worker = proj_worker(concurrency=None, env={"PROJ_DEFAULT_QUEUE": "proj_q", "PROJ_CONCURRENCY": "3"})
    assert len(child_pids(worker)) == 3
    assert "queues=proj_q" in worker.log()
    assert proj.get(proj.send("add", 20, 22, queue="proj_q")) == 42
    # ... and publishes to it: the app's own subtasks go to its default queue.
    ids = proj.get(proj.send("fan_out", 1, queue="proj_q"))
    assert proj.get(AsyncResult(ids[0], app=proj.app)) == 0


def test_pickle_bodies_reach_python_when_the_app_accepts_them(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    accepting = proj_worker(pool="solo", env={"PROJ_ACCEPT": "json,pickle"})
    # A tuple stays a tuple only in a pickle body (JSON turns it into a list).
    r = proj.app.send_task("proj.tasks.describe", args=((3, 1, 2),), serializer="pickle")
    assert proj.get(r) == "tuple:[1, 2, 3]"
    accepting.stop()
    proj_worker(pool="solo")  # the app's default accept_content: JSON only, as in Celery
    refused = proj.app.send_task("proj.tasks.describe", args=((1,),), serializer="pickle")
    wait_for(lambda: [d for d in proj.dead_letters() if d[0] == refused.id], 30, "the refused pickle message")
    assert [d[1] for d in proj.dead_letters() if d[0] == refused.id] == ["content_disallowed"]


def test_rust_handlers_take_precedence(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    worker = proj_worker(pool="solo", extra_args=["--example-handlers"])
    task_id = proj.app.send_task("examples.add", args=(2, 2)).id
    worker.wait_for(lambda: f"Task examples.add[{task_id}] succeeded" in worker.log(), 30, "the Rust handler")
    assert f"examples.add[{task_id}] succeeded in" in worker.log()
    assert "python" not in [line.rsplit(": ", 1)[-1] for line in worker.log_lines() if task_id in line]


# --- task semantics (prefork) -----------------------------------------------------------------


def test_arguments_arrive_as_kombu_decodes_them(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    # Plain JSON bodies skip kombu's object hook; bodies with its type markers (datetimes,
    # decimals, UUIDs), or text that merely mentions one, go through kombu as before.
    proj_worker(concurrency=1)
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    typed = proj.send("types_of", when, Decimal("1.5"), uuid.UUID(int=7), kwargs={"at": when})
    plain = proj.send("types_of", 1, "__type__", [1.5], {"a": None}, kwargs={"k": "\u00e9"})
    assert proj.get(typed) == ["datetime", "Decimal", "UUID", "at=datetime"]
    assert proj.get(plain) == ["int", "str", "list", "dict", "k=str"]


def test_plain_json_is_decoded_as_kombu_decodes_it() -> None:
    from celeriac import _worker
    from kombu.utils.json import dumps, loads

    samples = [
        dumps([[1, "two", 3.5, None, True], {"k": [{"x": -1}]}, {"callbacks": None}]),
        dumps(["\u00e9t\u00e9", {"nested": {"deep": [[]]}}]),
        '{"\\u005f_type__": "datetime", "__value__": "2030-01-02T03:04:05"}',
        dumps({"at": datetime(2030, 1, 2)}),
    ]
    for text in samples:
        for data in (text, text.encode()):
            decoded = _worker._plain_json(data)
            if decoded is not _worker._KOMBU:
                assert decoded == loads(data), text
            assert _worker._json_loads(text.encode()) == loads(text), text
    # Marked types, even spelled with escapes, are left to kombu.
    assert _worker._plain_json(samples[2]) is _worker._KOMBU
    assert _worker._plain_json(samples[3]) is _worker._KOMBU
    assert isinstance(_worker._json_loads(samples[2].encode()), datetime)
    # So is what the C decoder cannot read, so kombu's errors stay its own.
    for bad in (b"", b"{", b"\xff\xfe", b"[" * 100_000):
        assert _worker._plain_json(bad) is _worker._KOMBU


@pytest.mark.wheel
def test_results_request_context_and_signals(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    worker = proj_worker()
    ok = proj.send("add", 2, 3)
    bad = proj.send("fail", "boom")
    info = proj.send(
        "request_info", 1, "two", kwargs={"k": 3}, headers={"custom_header": "hdr"}, time_limit=30, soft_time_limit=20
    )
    assert proj.get(ok) == 5
    assert ok.state == "SUCCESS"
    proj.get(bad)
    assert bad.state == "FAILURE"
    assert isinstance(bad.result, ValueError)
    assert str(bad.result) == "boom"
    req = proj.get(info)
    assert req["id"] == info.id
    assert req["root_id"] == info.id
    assert req["parent_id"] is None
    assert req["args"] == [1, "two"]
    assert req["kwargs"] == {"k": 3}
    assert req["delivery_info"]["routing_key"] == "celery"
    assert req["delivery_info"]["redelivered"] is False
    assert req["hostname"].startswith("proj1@")
    assert req["timelimit"] == [30, 20]
    assert req["custom_header"] == "hdr"
    assert req["is_eager"] is False
    assert req["pid"] in child_pids(worker)
    # Signals: per task, in Celery's order; per child, worker_process_init; once, worker_ready.
    for r, outcome in ((ok, "task_success"), (bad, "task_failure")):
        events = [e["event"] for e in proj.events() if e.get("task_id") == r.id]
        assert events == ["signal:task_prerun", f"signal:{outcome}", "signal:task_postrun"], events
    inits = {e["pid"] for e in proj.events("signal:worker_process_init")}
    assert inits == child_pids(worker)
    assert len(proj.events("signal:worker_ready")) == 1
    worker.stop()
    assert len(proj.events("signal:worker_shutdown")) == 1
    assert {e["pid"] for e in proj.events("signal:worker_process_shutdown")} == inits


@pytest.mark.wheel
def test_retry_autoretry_progress_and_hooks(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    proj_worker()
    retried = proj.send("retry_until", 2)
    forever = proj.send("retry_forever")
    auto = proj.send("autoretry")
    progress = proj.send("progress", 3)
    hooked_ok, hooked_fail, hooked_retry = (proj.send("hooked", m) for m in ("ok", "fail", "retry"))

    assert proj.get(retried) == {"retries": 2, "id": retried.id}
    assert [e["retries"] for e in proj.events("retry_until")] == [0, 1, 2]
    assert {e["task_id"] for e in proj.events("retry_until")} == {retried.id}
    assert [e["event"] for e in proj.events() if e.get("task_id") == retried.id].count("signal:task_retry") == 2

    proj.get(forever)
    assert forever.state == "FAILURE"
    assert type(forever.result).__name__ == "MaxRetriesExceededError"

    proj.get(auto)
    assert auto.state == "FAILURE"
    assert isinstance(auto.result, KeyError)
    runs = proj.events("autoretry")
    assert [e["retries"] for e in runs] == [0, 1, 2]
    # retry_backoff=1, no jitter: countdowns 1 s then 2 s.
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.95, gaps
    assert gaps[1] >= 1.95, gaps

    assert proj.get(progress) == 3
    seen = [(e["state"], e["info"]) for e in proj.events("progress")]
    assert seen == [("PROGRESS", {"current": i, "total": 3}) for i in (1, 2, 3)]
    meta = proj.query("select status from celery_taskmeta where task_id = %s", progress.id)
    assert meta == [("SUCCESS",)]

    assert proj.get(hooked_ok) == "ok"
    proj.get(hooked_fail)
    assert proj.get(hooked_retry) == "retry"
    hooks = {
        r.id: [e["event"] for e in proj.events() if e.get("task_id") == r.id and not e["event"].startswith("signal")]
        for r in (hooked_ok, hooked_fail, hooked_retry)
    }
    assert hooks[hooked_ok.id] == ["before_start", "on_success", "after_return"]
    assert hooks[hooked_fail.id] == ["before_start", "on_failure", "after_return"]
    # Celery's tracer calls after_return for a final state only, not after a retry.
    assert hooks[hooked_retry.id] == [
        "before_start",
        "on_retry",
        "before_start",
        "on_success",
        "after_return",
    ]


@pytest.mark.wheel
def test_subtasks_chains_groups_and_chords(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    proj_worker()
    fan = proj.send("fan_out", 3)
    ids = proj.get(fan)
    assert [proj.get(AsyncResult(i, app=proj.app)) for i in ids[:3]] == [0, 2, 4]
    assert proj.get(AsyncResult(ids[3], app=proj.app)) == 12  # chain add(1, 1) | add(10)

    sig = proj.app.signature
    c = chain(sig("proj.tasks.add", (1, 2)), sig("proj.tasks.add", (3,)), sig("proj.tasks.add", (4,))).apply_async()
    assert proj.get(c) == 10
    g = group(sig("proj.tasks.add", (i, i)) for i in range(4)).apply_async()
    assert g.get(timeout=RESULT_TIMEOUT, interval=0.05) == [0, 2, 4, 6]
    ch = chord([sig("proj.tasks.add", (i, 1)) for i in range(3)], sig("proj.tasks.pid", ()).set(immutable=True))
    r = ch.apply_async()
    assert isinstance(proj.get(r), int)


def test_reject_ignore_and_expiry(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    proj_worker(extra_args=["--max-redeliveries", "2"])
    early = proj.send("reject_it", False)
    late = proj.send("reject_late", False)
    late_requeue = proj.send("reject_late", True)
    ignored = proj.send("ignore_it")
    not_acked = proj.send("fail_late_no_ack")
    expired = proj.send("add", 1, 1, expires=-1)

    proj.get(early)
    assert early.state == "FAILURE"  # acked at accept; FAILURE stored (Celery #4222)
    proj.get(late)
    assert late.state == "FAILURE"

    def dead(task_id: str) -> list[tuple[str, str, str]]:
        return [d for d in proj.dead_letters() if d[0] == task_id]

    wait_for(lambda: dead(late.id), 30, "the late Reject in dead_letter")
    assert dead(late.id)[0][1] == "rejected"
    # Reject(requeue=True): back in the queue, counted; past --max-redeliveries, dead-lettered.
    wait_for(lambda: dead(late_requeue.id), 30, "the requeued task to exhaust its redeliveries")
    assert dead(late_requeue.id)[0][1] == "redeliveries_exhausted"
    assert late_requeue.state == "PENDING"
    # Ignore: acked, nothing stored.
    wait_for(lambda: any(e.get("task_id") == ignored.id for e in proj.events("signal:task_postrun")), 30, "ignore")
    assert ignored.state == "PENDING"
    # acks_late + acks_on_failure_or_timeout=False: FAILURE stored, message rejected to dead_letter.
    proj.get(not_acked)
    assert not_acked.state == "FAILURE"
    wait_for(lambda: dead(not_acked.id), 30, "the failed late task in dead_letter")
    # Expired before it was taken: REVOKED, as Celery marks it.
    proj.get(expired)
    assert expired.state == "REVOKED"
    assert [e for e in proj.events("signal:task_revoked")]
    assert early.id not in {d[0] for d in proj.dead_letters()}
    assert ignored.id not in {d[0] for d in proj.dead_letters()}


# --- pools ------------------------------------------------------------------------------------


@pytest.mark.wheel
@pytest.mark.parametrize("task", ["segfault", "exit_now"])
def test_crashed_child_fails_the_task_and_is_replaced(
    proj: Proj, proj_worker: Callable[..., ProjWorker], task: str
) -> None:
    worker = proj_worker(concurrency=1)
    before = child_pids(worker)
    args = (3,) if task == "exit_now" else ()
    r = proj.send(task, *args)
    # Sent right behind it, so queued in the same child: it was not started when the child
    # died, and runs in another one instead of failing.
    behind = proj.send("add", 2, 3)
    proj.get(r)
    assert proj.get(behind) == 5
    assert r.state == "FAILURE"
    assert type(r.result).__name__ == "WorkerLostError"
    expected = "signal 11 (SIGSEGV)" if task == "segfault" else "exitcode 3"
    assert f"Worker exited prematurely: {expected}" in str(r.result)
    after = worker.wait_for(lambda: child_pids(worker) - before, 30, "a replacement child")
    assert proj.get(proj.send("pid")) in after
    assert "exited with" in worker.log()


def test_worker_lost_with_reject_on_worker_lost_requeues_up_to_the_cap(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    proj_worker(concurrency=1, extra_args=["--max-redeliveries", "1"])
    r = proj.send("exit_late", 1)
    wait_for(lambda: [d for d in proj.dead_letters() if d[0] == r.id], 60, "the requeued task to hit the cap")
    assert len(proj.events("exit_late")) == 2  # first run + one redelivery
    assert [d[1] for d in proj.dead_letters() if d[0] == r.id] == ["redeliveries_exhausted"]


def test_max_tasks_and_max_memory_per_child_recycle(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    worker = proj_worker(concurrency=1, extra_args=["--max-tasks-per-child", "2"])
    pids = [proj.get(proj.send("pid")) for _ in range(4)]
    assert pids[0] == pids[1], pids
    assert pids[2] == pids[3], pids
    assert pids[1] != pids[2], pids
    worker.stop()

    worker = proj_worker(concurrency=1, extra_args=["--max-memory-per-child", "150000"])
    first = proj.get(proj.send("leak", 200))
    second = proj.get(proj.send("pid"))
    assert first != second
    assert "exceeded the memory limit" in worker.log()


def test_solo_pool_ignores_max_tasks_per_child(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    # As in Celery, only prefork children are recycled; the solo child used to stop taking jobs
    # after the limit, with nothing to replace it, and the worker stalled.
    proj_worker(pool="solo", extra_args=["--max-tasks-per-child", "2"])
    pids = [proj.get(proj.send("pid")) for _ in range(5)]
    assert len(set(pids)) == 1, pids


def test_recycled_children_never_lose_a_job_handed_to_them(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    # Every task retires its child; jobs keep arriving while children shut down and are replaced.
    proj_worker(concurrency=2, extra_args=["--max-tasks-per-child", "1"])
    rs = [proj.send("pid") for _ in range(30)]
    pids = [proj.get(r, timeout=120) for r in rs]
    assert [r.state for r in rs] == ["SUCCESS"] * 30, [r.result for r in rs if r.state != "SUCCESS"]
    assert len(set(pids)) == 30, "a child ran more than its one task"


def test_jobs_do_not_wait_behind_a_long_task_while_another_child_frees_up(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    proj_worker(concurrency=2)
    long = proj.send("hold", 30)
    short = proj.send("hold", 1)
    wait_for(lambda: len(proj.events("hold")) == 2, 30, "both children to be busy")
    # The scenario: the adds arrive once the long task has been running a while. (A job may
    # queue behind one that started under 20 ms ago, QUEUE_BEHIND_AT_MOST in the pool; adds that
    # arrive within that window may wait behind the long task, as the design accepts.)
    time.sleep(0.1)
    # Both children are busy; neither add may be queued behind the 30 s task.
    adds = [proj.send("add", 1, 1), proj.send("add", 2, 2)]
    assert [proj.get(r) for r in adds] == [2, 4]
    assert proj.get(short) == 1
    assert not long.ready(), "the adds ran only after the long task"


def test_a_time_limit_too_large_to_represent_is_no_limit(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    # timelimit = [1e19, None] on the wire: more seconds than an instant can hold.
    worker = proj_worker(concurrency=1)
    rs = [proj.send("add", i, 1, time_limit=1e19, soft_time_limit=1e19) for i in range(3)]
    assert [proj.get(r) for r in rs] == [1, 2, 3]
    assert proj.get(proj.send("add", 20, 22)) == 42, "the worker stalled"
    assert "panic" not in worker.log()


@pytest.mark.wheel
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_children_are_the_interpreter_and_look_like_celerys(
    proj: Proj, proj_worker: Callable[..., ProjWorker], pool: str
) -> None:
    worker = proj_worker(pool=pool, concurrency=1)
    state = proj.get(proj.send("process_state"))
    loaded = next(line for line in worker.log().splitlines() if "app loaded" in line)
    assert f" executable={state['executable']} " in loaded, (state, loaded)
    # Stopped by their worker, not by a SIGINT/SIGTERM to the group; Python's table says so too.
    assert state["sigint_ignored"], state
    assert state["sigterm_ignored"], state
    # As `celery worker`: the app is imported from the working directory by find_app, which is
    # not left on sys.path (a `celeriac` directory there must not shadow the package).
    assert not state["cwd_on_sys_path"], state


def test_an_interpreter_without_the_package_is_refused_with_the_install_line(
    celeriac_bin: Path, proj: Proj, tmp_path: Path
) -> None:
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    out = worker_that_exits(celeriac_bin, proj, "-A", "proj", "--python", str(bare / "bin/python"))
    assert out.returncode == 1, out.stderr
    assert f"the celeriac package is not installed for {bare / 'bin/python'}" in out.stderr, out.stderr
    assert "-m pip install celeriac==" in out.stderr, out.stderr


@pytest.mark.wheel
def test_the_database_password_stays_out_of_tasks_environments(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    password = psycopg.conninfo.conninfo_to_dict(proj.database_url).get("password")
    if not password:
        pytest.skip("the test server's URL has no password")
    # The worker's environment: the app's own result backend URL (which has the password), and
    # none of the test run's variables.
    app_setting = "PROJ_RESULT_BACKEND"
    env = {k: v for k, v in proj.env.items() if password not in v or k == app_setting}
    proj_worker(concurrency=1, base_env=env)
    envs = proj.get(proj.send("environments"))
    for where in ("task", "at_exec", "subprocess"):
        environment = json.loads(envs[where])
        assert environment["CELERY_BROKER_URL"].startswith("celeriac+postgresql://")
        leaked = sorted(k for k, v in environment.items() if password in v and k != app_setting)
        assert leaked == [], f"the password is in the {where}'s environment: {leaked}"
    # Publishing from tasks still reaches the database with the password.
    assert len(proj.get(proj.send("fan_out", 2))) == 3


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_system_exit_in_a_threads_or_solo_task_fails_it_and_the_pool_goes_on(
    proj: Proj, proj_worker: Callable[..., ProjWorker], pool: str
) -> None:
    worker = proj_worker(pool=pool, concurrency=2)
    before = child_pids(worker)
    r = proj.send("system_exit", 3)
    proj.get(r)
    assert r.state == "FAILURE"
    assert type(r.result).__name__ == "WorkerLostError"
    assert str(r.result) == "SystemExit(3)"
    assert proj.get(proj.send("add", 1, 2)) == 3
    assert child_pids(worker) == before, "as in Celery, the pool process goes on"


@pytest.mark.wheel
def test_threads_pool_runs_tasks_concurrently_in_one_process(
    proj: Proj, proj_worker: Callable[..., ProjWorker], tmp_path: Path
) -> None:
    worker = proj_worker(pool="threads", concurrency=3)
    assert len(child_pids(worker)) == 1
    meet_dir = str(tmp_path / "meet")
    rs = [proj.send("meet", meet_dir, f"t{i}", 3, 20) for i in range(3)]
    pids = {proj.get(r) for r in rs}
    assert all(r.state == "SUCCESS" for r in rs), [r.result for r in rs]
    assert pids == child_pids(worker)
    infos = [proj.get(proj.send("request_info")) for _ in range(2)]
    assert all(i["thread"] != "MainThread" for i in infos)


def test_solo_pool_runs_one_task_at_a_time(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    worker = proj_worker(pool="solo", concurrency=4)
    assert len(child_pids(worker)) == 1
    assert "concurrency=1" in worker.log()
    assert proj.get(proj.send("add", 40, 2)) == 42


# --- time limits ------------------------------------------------------------------------------


@pytest.mark.wheel
@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_soft_and_hard_time_limits(proj: Proj, proj_worker: Callable[..., ProjWorker], pool: str) -> None:
    worker = proj_worker(pool=pool, concurrency=1, extra_args=["--soft-time-limit", "0.5"])
    soft = proj.send("soft", 10)
    assert proj.get(soft) == "soft limit caught"
    assert "Soft time limit (0.5s) exceeded for proj.tasks.soft" in worker.log()
    # --soft-time-limit applies to a task without its own limit; the header beats it.
    from_flag = proj.send("sleep", 10)
    proj.get(from_flag)
    assert type(from_flag.result).__name__ == "SoftTimeLimitExceeded"
    from_header = proj.send("sleep", 1.5, soft_time_limit=5)
    assert proj.get(from_header) == 1.5

    before = child_pids(worker)
    hard = proj.send("hard", 10)
    proj.get(hard)
    assert hard.state == "FAILURE"
    assert type(hard.result).__name__ == "TimeLimitExceeded"
    assert "Hard time limit (0.5s) exceeded for proj.tasks.hard" in worker.log()

    def failure_signals() -> list[dict[str, object]]:
        return [e for e in proj.events("signal:task_failure") if e["task_id"] == hard.id]

    # Celery 5.7 stores the result before it sends the signal: wait for it, then make sure,
    # once the next task has run, that it came once.
    worker.wait_for(failure_signals, 10, "task_failure for the hard time limit")
    after = worker.wait_for(lambda: child_pids(worker) - before, 30, "a replacement child")
    assert proj.get(proj.send("pid")) in after
    assert len(failure_signals()) == 1


def test_threads_pool_warns_that_it_does_not_enforce_limits(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    worker = proj_worker(pool="threads", concurrency=2, extra_args=["--time-limit", "1"])
    assert "does not enforce time limits" in worker.log()
    assert proj.get(proj.send("add", 1, 2)) == 3


# --- logging and shutdown ---------------------------------------------------------------------


@pytest.mark.wheel
def test_task_logging_carries_task_name_and_id(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    worker = proj_worker(concurrency=1)
    r = proj.send("logs", "celeriac")
    assert proj.get(r) == "celeriac"
    tag = f"proj.tasks.logs[{r.id}]"
    worker.wait_for(lambda: "print says celeriac" in worker.log(), 10, "the print line")
    lines = worker.log_lines()
    for text in ("task logger says celeriac", "plain logger says celeriac", "print says celeriac"):
        matching = [line for line in lines if text in line]
        assert matching, text
        assert all(tag in line for line in matching), (text, matching)


@pytest.mark.wheel
def test_warm_shutdown_lets_the_running_task_finish(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    worker = proj_worker(concurrency=1)
    r = proj.send("sleep", 1.0)
    wait_for(lambda: any(e.get("task_id") == r.id for e in proj.events("signal:task_prerun")), 30, "the task")
    assert worker.stop() == 0  # one SIGTERM: a warm shutdown
    assert proj.get(r) == 1.0
    assert proj.query("select count(*) from celeriac.message") == [(0,)]


def test_warm_shutdown_gives_back_tasks_waiting_for_a_child(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    # As Celery gives back the requests it reserved and did not start: the adds hold the
    # worker's run slots, waiting for its one busy child, when the warm shutdown begins.
    worker = proj_worker(concurrency=1)
    r = proj.send("sleep", 2.0)
    wait_for(lambda: any(e.get("task_id") == r.id for e in proj.events("signal:task_prerun")), 30, "the task")
    time.sleep(0.1)  # past the 20 ms in which a job may still queue behind the running one
    adds = [proj.send("add", i, 1) for i in range(3)]
    unleased = "select count(*) from celeriac.message where leased_by is null"
    wait_for(lambda: proj.query(unleased) == [(0,)], 30, "the adds to be claimed")
    assert worker.stop() == 0  # one SIGTERM: a warm shutdown
    assert proj.get(r) == 2.0
    assert [a.state for a in adds] == ["PENDING"] * 3, "a task started after the warm shutdown began"
    assert proj.query(unleased) == [(3,)]
    proj_worker(concurrency=1)
    assert [proj.get(a) for a in adds] == [1, 2, 3]


def test_killed_worker_takes_its_children_and_the_task_runs_again(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    worker = proj_worker(concurrency=1, extra_args=["--lease-seconds", "2", "--heartbeat-interval", "0.5"])
    children = child_pids(worker)
    r = proj.send("sleep", 30)
    wait_for(lambda: any(e.get("task_id") == r.id for e in proj.events("signal:task_prerun")), 30, "the task")
    worker.kill()

    def gone() -> bool:
        return all(not Path(f"/proc/{p}").exists() for p in children)

    wait_for(gone, 10, "the pool children to die with their worker")
    second = proj_worker(concurrency=1, extra_args=["--soft-time-limit", "1"])
    proj.get(r, timeout=60)
    assert type(r.result).__name__ == "SoftTimeLimitExceeded"  # ran again, in the new worker
    assert second.proc.poll() is None
