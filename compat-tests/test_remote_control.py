"""Celery's remote control and durable revoke over PostgreSQL: ``celery inspect``/``celery
control`` (the real Celery 5.7 CLI) against a mixed fleet of two ``celeriac worker -A proj`` and
one Python Celery worker on the celeriac transport; ``app.control.revoke``, ``celeriac revoke``
and ``terminate=True`` against real workers, with the states Celery's ``AsyncResult`` reads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from celeriac_testkit import LoggedProcess, stop_all, wait_for
from tools.sample_proj import RESULT_TIMEOUT, SAMPLE_PROJ, Proj, ProjWorker


class PythonWorker(LoggedProcess):
    KIND = "celery worker"


@pytest.fixture
def python_worker(proj: Proj, tmp_path: Path) -> Iterator[Callable[[], PythonWorker]]:
    """Factory: a Python Celery worker of the sample project on the celeriac transport."""
    workers: list[PythonWorker] = []

    def start() -> PythonWorker:
        argv = [sys.executable, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", "-c", "2"]
        argv += ["-n", f"py{len(workers) + 1}@%h", "-l", "info"]
        worker = PythonWorker(argv, tmp_path / "py-worker.log", cwd=SAMPLE_PROJ, env=_env(proj))
        workers.append(worker)
        worker.wait_for(lambda: "ready." in worker.log(), 60, "the Celery worker to start")
        return worker

    yield start
    for w in workers:
        w.proc.terminate()
    stop_all(workers)


def _env(proj: Proj) -> dict[str, str]:
    return {**proj.env, "PROJ_BROKER_URL": f"celeriac+{proj.database_url}", "PYTHONPATH": str(SAMPLE_PROJ)}


def celery_cli(proj: Proj, *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A proj ARGS`` in the sample project, on this test's database."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", *args],
        cwd=SAMPLE_PROJ,
        env=_env(proj),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def replies(proj: Proj, kind: str, command: str, *args: str) -> dict[str, Any]:
    """The replies to ``celery inspect|control COMMAND ARGS --json``, by node name."""
    done = celery_cli(proj, kind, command, *args, "--json", "--timeout", "3")
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    if isinstance(parsed, list):  # `control` prints a list of one-node dicts
        merged: dict[str, Any] = {}
        for one in parsed:
            merged.update(one)
        return merged
    assert isinstance(parsed, dict), parsed
    return parsed


@pytest.fixture
def fleet(proj_worker: Callable[..., ProjWorker], python_worker: Callable[[], PythonWorker]) -> list[str]:
    """Two celeriac workers and one Python Celery worker; their node names."""
    host = os.uname().nodename
    proj_worker()
    proj_worker()
    python_worker()
    return [f"proj1@{host}", f"proj2@{host}", f"py1@{host}"]


def test_inspect_and_control_reach_every_worker_of_a_mixed_fleet(proj: Proj, fleet: list[str]) -> None:
    # The CLI's own rendering, as on RabbitMQ.
    ping = celery_cli(proj, "inspect", "ping", "--timeout", "3")
    assert ping.returncode == 0, ping.stderr
    for node in fleet:
        assert f"->  {node}: OK\n        pong" in ping.stdout, ping.stdout
    assert "3 nodes online." in ping.stdout

    running = proj.send("sleep", 300)
    wait_for(
        lambda: any(t["id"] == running.id for ts in replies(proj, "inspect", "active").values() for t in ts),
        RESULT_TIMEOUT,
        "the sleeping task to show in inspect active",
    )
    active = replies(proj, "inspect", "active")
    assert sorted(active) == sorted(fleet)
    [(holder, task)] = [(n, t) for n, ts in active.items() for t in ts if t["id"] == running.id]
    assert task["name"] == "proj.tasks.sleep"
    assert task["args"] == [300]
    assert task["acknowledged"] is True
    assert isinstance(task["worker_pid"], int)
    assert task["delivery_info"]["routing_key"] == "celery"

    query = replies(proj, "inspect", "query_task", running.id)
    assert sorted(query) == sorted(fleet)
    assert query[holder][running.id][0] == "active"
    assert all(query[n] == {} for n in fleet if n != holder)

    for command in ("reserved", "scheduled", "revoked"):
        got = replies(proj, "inspect", command)
        assert sorted(got) == sorted(fleet), command
        assert all(isinstance(v, list) for v in got.values()), (command, got)

    # An ETA task waits in the database. One celeriac worker lists it (the oldest live one of
    # its queue), as the one worker holding it in its timer does on RabbitMQ; the Celery worker
    # on the transport never holds it, and lists nothing.
    later = proj.send("add", 40, 2, countdown=600)
    scheduled = replies(proj, "inspect", "scheduled")
    listed = {n: [e for e in es if e["request"]["id"] == later.id] for n, es in scheduled.items()}
    [(lister, [entry])] = [(n, es) for n, es in listed.items() if es]
    assert lister in fleet[:2], scheduled
    assert entry["priority"] == 6, entry
    assert datetime.fromisoformat(entry["eta"]) > datetime.now(UTC) + timedelta(seconds=500), entry
    request = entry["request"]
    assert (request["name"], request["args"], request["kwargs"]) == ("proj.tasks.add", [40, 2], {}), request
    assert (request["hostname"], request["acknowledged"], request["time_start"]) == (lister, False, None), request
    assert request["delivery_info"]["routing_key"] == "celery", request
    later.revoke()
    registered = replies(proj, "inspect", "registered")
    assert sorted(registered) == sorted(fleet)
    for node in fleet:
        assert "proj.tasks.add" in registered[node]
        assert "proj.tasks.limited [rate_limit=2/s]" in registered[node], (node, registered[node])
    stats = replies(proj, "inspect", "stats")
    assert sorted(stats) == sorted(fleet)
    for node in fleet:
        assert stats[node]["pool"]["max-concurrency"] == 2, stats[node]
        assert len(stats[node]["pool"]["processes"]) == 2, stats[node]
        assert {"total", "pid", "clock", "uptime", "rusage", "broker", "prefetch_count"} <= set(stats[node])
    queues = replies(proj, "inspect", "active_queues")
    assert {n: [q["name"] for q in qs] for n, qs in queues.items()} == {n: ["celery"] for n in fleet}
    conf = replies(proj, "inspect", "conf")
    assert sorted(conf) == sorted(fleet)
    assert all(conf[n]["task_default_queue"] == "celery" for n in fleet), conf

    ok = {"ok": "new rate limit set successfully"}
    assert replies(proj, "control", "rate_limit", "proj.tasks.add", "100/m") == {n: ok for n in fleet}
    ok = {"ok": "time limits set successfully"}
    assert replies(proj, "control", "time_limit", "proj.tasks.add", "30", "60") == {n: ok for n in fleet}

    # Every prefork pool grows by a process and shrinks back; tasks run meanwhile.
    def processes() -> dict[str, int]:
        return {n: len(s["pool"]["processes"]) for n, s in replies(proj, "inspect", "stats").items()}

    def prefetch_counts() -> dict[str, int]:
        return {n: s["prefetch_count"] for n, s in replies(proj, "inspect", "stats").items()}

    assert prefetch_counts() == {n: 8 for n in fleet}
    assert replies(proj, "control", "pool_grow", "1") == {n: {"ok": "pool will grow"} for n in fleet}
    wait_for(lambda: processes() == {n: 3 for n in fleet}, RESULT_TIMEOUT, "every pool to grow to 3 processes")
    # Each worker reserves for the new process too (4 messages a process, Celery's default).
    assert prefetch_counts() == {n: 12 for n in fleet}
    assert [proj.get(proj.send("add", i, 1)) for i in range(6)] == [1, 2, 3, 4, 5, 6]
    assert replies(proj, "control", "pool_shrink", "1") == {n: {"ok": "pool will shrink"} for n in fleet}
    wait_for(lambda: processes() == {n: 2 for n in fleet}, RESULT_TIMEOUT, "every pool to shrink to 2 processes")
    assert prefetch_counts() == {n: 8 for n in fleet}
    assert proj.get(proj.send("add", 2, 2)) == 4
    unknown = replies(proj, "control", "rate_limit", "proj.tasks.nope", "1/s")
    assert unknown == {n: {"error": "unknown task"} for n in fleet}

    # Consumers: every worker starts and stops consuming a queue.
    assert replies(proj, "control", "add_consumer", "extra") == {n: {"ok": "add consumer extra"} for n in fleet}
    queues = replies(proj, "inspect", "active_queues")
    assert {n: sorted(q["name"] for q in qs) for n, qs in queues.items()} == {n: ["celery", "extra"] for n in fleet}
    # The worker table (`celeriac inspect workers`) says so too.
    wait_for(
        lambda: (
            sorted(r[0] for r in proj.query("select queues from celeriac.worker where hostname like %s", "proj_@%"))
            == [["celery", "extra"]] * 2
        ),
        RESULT_TIMEOUT,
        "the celeriac workers' rows to list the queue",
    )
    assert proj.get(proj.app.send_task("proj.tasks.add", args=(2, 3), queue="extra")) == 5
    cancelled = replies(proj, "control", "cancel_consumer", "extra")
    assert cancelled == {n: {"ok": "no longer consuming from extra"} for n in fleet}
    queues = replies(proj, "inspect", "active_queues")
    assert {n: [q["name"] for q in qs] for n, qs in queues.items()} == {n: ["celery"] for n in fleet}

    for command, reply in (("enable_events", "task events enabled"), ("disable_events", "task events disabled")):
        assert replies(proj, "control", command) == {n: {"ok": reply} for n in fleet}, command

    # terminate reaches the worker running it, and the others say they do not know it.
    done = replies(proj, "control", "terminate", "SIGKILL", running.id)
    assert done[holder] == {"ok": f"terminate: {running.id}"}
    assert all(done[n] == {"ok": "terminate: tasks unknown"} for n in fleet if n != holder)
    assert proj.get(running) is not None
    assert running.state == "REVOKED"
    assert "terminated" in str(running.result)


def pool_children(pid: int) -> set[int]:
    """The worker's live child processes (its pool), from /proc."""
    children: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            children.add(int(entry.name))
    return children


def test_a_grow_shrink_grow_while_a_child_starts_leaves_one_child_per_place(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    worker = proj_worker(extra_args=["-l", "INFO"], env={"PROJ_CHILD_START_DELAY": "1"})
    node = f"proj1@{os.uname().nodename}"
    # Three commands at once: the second removes the place the first is still starting a child
    # for (children take a second to start here), the third adds it again and starts another.
    # One of the two children takes the place.
    for command in ("pool_grow", "pool_shrink", "pool_grow"):
        proj.app.control.broadcast(command, arguments={"n": 1}, destination=[node])
    worker.wait_for(
        lambda: "started for a place no longer free; shutting it down" in worker.log(),
        RESULT_TIMEOUT,
        "the second child to be turned away",
    )

    def listed() -> set[int]:
        return set(replies(proj, "inspect", "stats")[node]["pool"]["processes"])

    # The one turned away exits; the pool's three are all the worker's children.
    wait_for(
        lambda: len(listed()) == 3 and pool_children(worker.proc.pid) == listed(),
        RESULT_TIMEOUT,
        "three children, each in the pool",
    )
    assert [proj.get(proj.send("add", i, 1)) for i in range(6)] == [1, 2, 3, 4, 5, 6]


def test_revoked_tasks_never_start_queued_ahead_or_before_any_worker_runs(
    proj: Proj, celeriac_bin: Path, proj_worker: Callable[..., ProjWorker]
) -> None:
    # Revoked while no worker runs at all: with the CLI and with Celery's own API.
    by_cli = proj.send("add", 1, 2)
    by_app = proj.send("add", 3, 4)
    ahead = proj.send("add", 5, 6, countdown=86_400)
    cli = subprocess.run(
        [str(celeriac_bin), "revoke", by_cli.id, "--database-url", proj.database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    proj.app.control.revoke([by_app.id, ahead.id])
    expires = dict(
        proj.query("select task_id, expires_at > now() + interval '1 day' from celeriac.revoked order by task_id")
    )
    assert expires == {by_cli.id: False, by_app.id: False, ahead.id: True}, "outlives the ETA"
    kept = proj.send("add", 7, 8)

    proj_worker()
    assert proj.get(kept) == 15
    for revoked in (by_cli, by_app):
        proj.get(revoked)
        assert revoked.state == "REVOKED", revoked.id
    # When the ETA task's time comes (moved forward here), it is discarded, not run.
    assert proj.query("select 1 from celeriac.message where task_id = %s", ahead.id)
    proj.query("update celeriac.message set eta = now() where task_id = %s returning id", ahead.id)
    wait_for(
        lambda: not proj.query("select 1 from celeriac.message where task_id = %s", ahead.id),
        RESULT_TIMEOUT,
        "the revoked ETA task's message to be discarded",
    )
    assert ahead.state == "REVOKED"
    assert proj.dead_letters() == []


def test_revoke_holds_across_a_worker_restart(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    first = proj_worker()
    assert proj.get(proj.send("add", 1, 1)) == 2
    # A running worker that hears a revoke stores REVOKED at once for a task with no result yet
    # (as Celery 5.7 does), so a client does not wait for an ETA a day ahead.
    ahead = proj.send("add", 9, 9, countdown=86_400)
    proj.app.control.revoke(ahead.id)
    wait_for(lambda: ahead.state == "REVOKED", RESULT_TIMEOUT, "the ETA task's REVOKED state")
    first.proc.terminate()
    first.proc.wait(timeout=30)
    pending = proj.send("add", 2, 2)
    proj.app.control.revoke(pending.id)  # nobody listens now
    proj_worker()
    proj.get(pending)
    assert pending.state == "REVOKED"
    assert proj.get(proj.send("add", 3, 3)) == 6


class Monitor(LoggedProcess):
    KIND = "monitor"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_celery_events_dump_sees_one_task_in_order(
    proj: Proj, proj_worker: Callable[..., ProjWorker], tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "celery", "-A", "proj", "events", "--dump"]
    dump = Monitor(argv, tmp_path / "events.log", cwd=SAMPLE_PROJ, env=_env(proj))
    try:
        worker = proj_worker(extra_args=["-E"])
        dump.wait_for(lambda: "heartbeat" in dump.log(), RESULT_TIMEOUT, "a worker heartbeat")
        result = proj.send("add", 20, 22)
        assert proj.get(result) == 42
        dump.wait_for(lambda: f"task succeeded: proj.tasks.add({result.id})" in dump.log(), 30, "the task's events")
        lines = [line for line in dump.log().splitlines() if result.id in line]
        kinds = [line.split("] ", 1)[1].split(":", 1)[0] for line in lines]
        assert kinds == ["task received", "task started", "task succeeded"], lines
        # As billiard's: the pid of the pool child that ran it, not the worker's own.
        pid = int(lines[1].rsplit("pid=", 1)[1].split(",")[0].split()[0])
        assert pid != worker.proc.pid, lines[1]
        stat = Path(f"/proc/{pid}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[1]) == worker.proc.pid, (lines[1], stat)
        assert "result=42" in lines[-1]
        assert "runtime=" in lines[-1]
    finally:
        dump.kill()


def test_flower_shows_and_controls_celeriac_workers(
    proj: Proj, proj_worker: Callable[..., ProjWorker], tmp_path: Path
) -> None:
    host = os.uname().nodename
    port = _free_port()
    argv = [sys.executable, "-m", "celery", "-A", "proj", "flower", f"--port={port}", "--address=127.0.0.1"]
    flower = Monitor(
        argv, tmp_path / "flower.log", cwd=SAMPLE_PROJ, env={**_env(proj), "FLOWER_UNAUTHENTICATED_API": "1"}
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> Any:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return json.loads(response.read())

    try:
        flower.wait_for(lambda: "Visit me at" in flower.log(), 60, "Flower to listen")
        proj_worker(extra_args=["-E"])
        node = f"proj1@{host}"
        done = proj.send("add", 1, 41)
        assert proj.get(done) == 42
        tasks = wait_for(
            lambda: (t := get("/api/tasks")).get(done.id, {}).get("state") == "SUCCESS" and t,
            RESULT_TIMEOUT,
            "Flower to see the task succeed",
        )
        seen = tasks[done.id]
        assert (seen["name"], seen["worker"], seen["result"]) == ("proj.tasks.add", node, "42")
        assert seen["runtime"] > 0
        workers = wait_for(
            lambda: node in (w := get("/api/workers?refresh=1")) and w, RESULT_TIMEOUT, "Flower's worker list"
        )
        assert "proj.tasks.add" in workers[node]["registered"]

        # Flower's revoke button: terminate a running task.
        running = proj.send("sleep", 300)
        wait_for(
            lambda: get("/api/tasks").get(running.id, {}).get("state") == "STARTED",
            RESULT_TIMEOUT,
            "the long task to start",
        )
        request = urllib.request.Request(f"{base}/api/task/revoke/{running.id}?terminate=true", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read()) == {"message": f"Revoked '{running.id}'"}
        proj.get(running)
        assert running.state == "REVOKED"

        # One page as a browser renders it (kept with the test's files, not committed).
        shot = tmp_path / "flower-task.png"
        chromium = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=5000",
                "--window-size=1400,900",
                f"--screenshot={shot}",
                f"{base}/task/{done.id}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert chromium.returncode == 0, chromium.stderr
        assert shot.stat().st_size > 10_000
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"{base}/task/{done.id}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ).stdout
        assert node in dom
        assert "SUCCESS" in dom
        print(f"Flower screenshot: {shot}")
    finally:
        flower.kill()


def test_shutdown_command_stops_a_celeriac_worker_warmly(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    worker = proj_worker()
    assert proj.get(proj.send("add", 1, 2)) == 3
    done = celery_cli(proj, "control", "shutdown", "--timeout", "3")
    # As on RabbitMQ: a worker does not reply to shutdown, so the CLI says nobody did.
    assert "No nodes replied" in done.stderr, (done.returncode, done.stdout, done.stderr)
    assert worker.proc.wait(timeout=60) == 0
    assert "Got shutdown from remote" in worker.log()
