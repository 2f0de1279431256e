"""The Beat replacement end to end: ``celeriac worker -B`` runs a real Celery app's
``beat_schedule`` and ``add_periodic_task`` entries, several ``-B`` workers fire each slot once,
and ``celeriac beat`` processes killed (SIGKILL), frozen past their lease (SIGSTOP) or cut off
(``pg_terminate_backend``) neither double nor lose a slot. Crontab arithmetic is checked against
real Celery in ``runtime/schedule/tests``.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from tools.celeriac_testkit import LoggedProcess, run_celeriac, stop_all, wait_for
from tools.sample_proj import Proj, ProjWorker

BEAT_APP = '''
import os

import psycopg
from celery import Celery
from celery.schedules import crontab, schedule



class custom_schedule(schedule):
    """A schedule class of the app's own: Beat runs it, celeriac cannot."""


app = Celery("beatapp", broker="amqp://guest@localhost//")
app.conf.update(
    broker_connection_retry_on_startup=False,
    task_ignore_result=True,
    timezone="UTC",
    task_routes={"beatapp.routed": {"queue": "periodic"}},
    beat_schedule={
        "every-second": {"task": "beatapp.record", "schedule": 1.0, "args": ("every-second",)},
        "routed": {
            "task": "beatapp.routed",
            "schedule": 1.0,
            "options": {"priority": 5, "headers": {"x-extra": "yes"}},
        },
        "custom": {"task": "beatapp.record", "schedule": custom_schedule(5.0), "args": ("custom",)},
    },
    celeriac_schedule_policies={"every-second": {"catchup": "all"}},
)
if not os.environ.get("BEAT_DROP_MINUTELY"):
    app.conf.beat_schedule["minutely"] = {
        "task": "beatapp.record", "schedule": crontab(minute="*"), "args": ("minutely",),
    }


@app.on_after_finalize.connect
def add_entries(sender, **kwargs):
    sender.add_periodic_task(2.0, record.s("added"), name="added-every-2s")


def _log(request, label):
    with psycopg.connect(os.environ["BEAT_DB"], autocommit=True) as conn:
        conn.execute(
            "insert into beat_log (label, name, slot, task_id, queue, priority, extra)"
            " values (%s, %s, %s, %s, %s, %s, %s)",
            (
                label,
                getattr(request, "periodic_task_name", None),
                getattr(request, "periodic_task_slot", None),
                request.id,
                (request.delivery_info or {}).get("routing_key"),
                (request.delivery_info or {}).get("priority"),
                getattr(request, "x-extra", None) or (request.headers or {}).get("x-extra"),
            ),
        )


@app.task(bind=True)
def record(self, label):
    _log(self.request, label)


@app.task(bind=True)
def routed(self):
    _log(self.request, "routed")
'''


def _log_table(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "create table beat_log (label text, name text, slot text, task_id text, queue text,"
            " priority int, extra text)"
        )


def _rows(database_url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def _count(database_url: str, label: str) -> int:
    return _rows(database_url, "select count(*) from beat_log where label = %s", label)[0][0]


def test_workers_with_minus_b_fire_the_apps_schedule_once_per_slot(
    proj: Proj, proj_worker: Callable[..., ProjWorker], celeriac_bin: Path, tmp_path: Path
) -> None:
    (tmp_path / "beatapp.py").write_text(BEAT_APP)
    _log_table(proj.database_url)
    env = {"BEAT_DB": proj.database_url}
    args = ["-B", "--workdir", str(tmp_path), "-Q", "celery,periodic"]
    workers = [proj_worker(app="beatapp", extra_args=args, env=env) for _ in range(2)]
    for worker in workers:
        assert "beat_schedule synced" in worker.log(), worker.log()
    url = proj.database_url
    workers[0].wait_for(
        lambda: _count(url, "every-second") >= 6 and _count(url, "added") >= 3 and _count(url, "routed") >= 4,
        60,
        "the periodic tasks to run",
    )
    stop_all(workers)

    # Each (schedule, slot) ran exactly once, with the schedule's name and slot in its headers.
    dupes = _rows(url, "select name, slot, count(*) from beat_log group by 1, 2 having count(*) > 1")
    assert dupes == [], dupes
    names = {r[0] for r in _rows(url, "select distinct name from beat_log")}
    assert {"every-second", "added-every-2s", "routed"} <= names, names
    # Intervals are anchored: the every-second slots are one second apart, none missing.
    slots = [r[0] for r in _rows(url, "select slot from beat_log where name = 'every-second' order by slot")]
    epochs = [time.mktime(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")) for s in slots]
    assert all(b - a == 1 for a, b in itertools.pairwise(epochs)), slots
    # Routed as apply_async routes: the app's task_routes, the entry's priority and headers.
    routed = _rows(url, "select distinct queue, priority, extra from beat_log where label = 'routed'")
    assert routed == [("periodic", 5, "yes")], routed
    # The database says the same: one fire per slot, counted on the rows.
    fires = _rows(
        url,
        "select s.name, s.total_run_count, count(f.*) from celeriac.schedule s"
        " left join celeriac.schedule_fire f on f.schedule_id = s.id group by 1, 2 order by 1",
    )
    by_name = {name: (total, ledger) for name, total, ledger in fires}
    assert by_name["every-second"][0] == by_name["every-second"][1] >= 6, by_name
    # A schedule class celeriac cannot evaluate stays with Beat, and the log says so.
    assert "custom is not fired by celeriac: schedule type beatapp.custom_schedule is not supported" in workers[0].log()
    assert _count(url, "custom") == 0
    policy = json.loads(run_celeriac(celeriac_bin, "schedule", "show", "every-second", "--json", "--database-url", url))
    assert (policy["catchup"], policy["source"], policy["owner"]) == ("all", "app:beatapp", "celeriac"), policy

    # An entry removed from the code is disabled (not deleted) at the next start.
    worker = proj_worker(app="beatapp", extra_args=args, env={**env, "BEAT_DROP_MINUTELY": "1"})
    minutely = json.loads(run_celeriac(celeriac_bin, "schedule", "show", "minutely", "--json", "--database-url", url))
    assert (minutely["enabled"], minutely["disabled_reason"]) == (False, "removed from the app's beat_schedule")
    worker.stop()


def _chaos_suite() -> Any:
    """The chaos suite's module (for its PgBouncer helper), loaded from its file: the directory
    is not a package, and ``chaos`` may name another module on ``sys.path``."""
    name = "celeriac_chaos_suite"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "chaos" / "chaos.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Beat(LoggedProcess):
    KIND = "celeriac beat"


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_beat_processes_killed_frozen_or_cut_off_never_double_or_lose_a_slot(
    celeriac_bin: Path, database_url: str, tmp_path: Path, through: str
) -> None:
    """Four ``celeriac beat``, with PostgreSQL directly or through PgBouncer in transaction mode
    (no session state: the lease is a row, statements are unnamed, no LISTEN)."""
    url = database_url
    beat_url = url
    bouncer = None
    if through == "pgbouncer":
        PgBouncer, url_with = _chaos_suite().PgBouncer, _chaos_suite().url_with
        # PgBouncer runs as postgres when the tests run as root: a directory it can reach.
        directory = Path(tempfile.mkdtemp(prefix="celeriac-beat-pgbouncer-"))
        directory.chmod(0o755)
        bouncer = PgBouncer(directory, SimpleNamespace(url=url, port=urlsplit(url).port))
        beat_url = url_with(url, host="127.0.0.1", port=bouncer.port) + "?pooler=transaction"
    run_celeriac(
        celeriac_bin, "schedule", "add", "tick", "--task", "proj.tick", "--every", "1", "--catchup", "all",
        "--database-url", url,
    )  # fmt: skip
    run_celeriac(
        celeriac_bin, "schedule", "add", "minutely", "--task", "proj.tick", "--crontab", "* * * * *",
        "--database-url", url,
    )  # fmt: skip
    n = 0
    beats: list[Beat] = []

    def start() -> Beat:
        nonlocal n
        n += 1
        argv = [str(celeriac_bin), "beat", "--database-url", beat_url, "--lease-seconds", "3", "--max-interval", "1"]
        beat = Beat(argv, tmp_path / f"beat{n}.log")
        beats.append(beat)
        return beat

    def fires() -> int:
        return _rows(url, "select count(*) from celeriac.schedule_fire")[0][0]

    def leader() -> Beat | None:
        rows = _rows(url, "select holder_name from celeriac.lease where expires_at > now()")
        pid = int(rows[0][0].rsplit(" ", 1)[1]) if rows else None
        return next((b for b in beats if b.proc.pid == pid and b.proc.poll() is None), None)

    for _ in range(4):
        start()
    rng = random.Random(os.getpid())
    faults = ["kill", "stop", "terminate", "kill", "stop", "terminate"]
    for fault in faults:
        before = fires()
        wait_for(lambda b=before: fires() >= b + 2, 30, f"fires before {fault}")
        current = wait_for(leader, 30, "a leader")
        time.sleep(rng.random())  # the fault lands at a random point of the second, not to synchronise
        if fault == "kill":
            current.kill()
            start()
        elif fault == "stop":
            # Frozen past its lease: another takes over; when it wakes up its term is stale.
            os.kill(current.proc.pid, signal.SIGSTOP)
            wait_for(lambda c=current: leader() not in (None, c), 30, "a new leader while one is frozen")
            os.kill(current.proc.pid, signal.SIGCONT)
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = current_database() and pid <> pg_backend_pid()"
                )
        after = fires()
        wait_for(lambda a=after: fires() >= a + 3, 30, f"fires after {fault}")
    stop_all(beats)
    if bouncer is not None:
        bouncer.stop()

    dupes = _rows(
        url,
        "select h ->> 'periodic_task_name', h ->> 'periodic_task_slot', count(*) from"
        " (select convert_from(payload, 'UTF8')::jsonb -> 'headers' as h from celeriac.message) m"
        " group by 1, 2 having count(*) > 1",
    )
    assert dupes == [], dupes
    # Every second from the first slot to the last fired exactly once (catch-up `all`).
    slots = [r[0] for r in _rows(url, "select f.slot_at from celeriac.schedule_fire f join celeriac.schedule s"
                                      " on s.id = f.schedule_id where s.name = 'tick' order by 1")]  # fmt: skip
    gaps = [(a, b) for a, b in itertools.pairwise(slots) if (b - a).total_seconds() != 1]
    assert gaps == [], gaps
    assert len(slots) >= 20, slots
    messages = _rows(url, "select count(*) from celeriac.message")[0][0]
    assert messages == fires(), (messages, fires())
    logs = "\n".join(b.log() for b in beats)
    assert "this process is the leader" in logs
    assert "panicked" not in logs, logs
