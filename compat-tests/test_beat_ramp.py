"""The migration ramp: a real ``celery beat`` (with ``-S celeriac.beat:Scheduler``) and
``celeriac beat`` processes on one database while ``celeriac schedule ramp`` moves the schedules
back and forth at random moments, including on slot boundaries. Every slot is sent once, by one
side or the other; ramping back to 0 % returns everything to Beat.
"""

from __future__ import annotations

import datetime
import itertools
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tools.celeriac_testkit import LoggedProcess, run_celeriac, stop_all, wait_for

RAMP_APP = """
from celery import Celery
from celery.schedules import crontab

app = Celery("ramp", broker="celeriac+{url}")
app.conf.update(
    broker_connection_retry_on_startup=False,
    timezone="UTC",
    beat_max_loop_interval=1,
    beat_schedule={{
        **{{
            f"every-2s-{{i}}": {{"task": f"ramp.interval{{i}}", "schedule": 2.0}}
            for i in range(6)
        }},
        "minutely": {{"task": "ramp.minutely", "schedule": crontab()}},
    }},
)
"""


class Process(LoggedProcess):
    KIND = "beat"


def _celery_beat(app: str, tmp_path: Path, env: dict[str, str], loglevel: str) -> Process:
    """``celery -A APP beat -S celeriac.beat:Scheduler`` waking at least every second."""
    return Process(
        [
            sys.executable, "-m", "celery", "-A", app, "beat", "-S", "celeriac.beat:Scheduler",
            "-s", str(tmp_path / "celerybeat-schedule"), "--max-interval", "1", "-l", loglevel,
        ],
        tmp_path / "celery-beat.log",
        cwd=tmp_path,
        env=env,
    )  # fmt: skip


def _rows(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def test_ramping_back_and_forth_sends_every_slot_once(celeriac_bin: Path, database_url: str, tmp_path: Path) -> None:
    url = database_url
    (tmp_path / "ramp.py").write_text(RAMP_APP.format(url=url))
    env = {**os.environ, "CELERIAC_PYTHON": sys.executable, "PYTHONPATH": str(tmp_path)}

    def celeriac(*args: str) -> str:
        return run_celeriac(celeriac_bin, "--database-url", url, *args)

    # Imported: owned by Beat until ramped.
    proc = subprocess.run(
        [str(celeriac_bin), "-A", "ramp", "--database-url", url, "schedule", "import"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # The 7 entries, and Beat's own default entry: celery.backend_cleanup (result_expires is set and
    # the app's backend does not expire results).
    assert "8 new (fired by Celery Beat until ramped)" in proc.stdout, proc.stdout
    owners = {r[0] for r in _rows(url, "select owner from celeriac.schedule")}
    assert owners == {"beat"}

    beat = _celery_beat("ramp", tmp_path, env, "info")
    tickers = [
        Process(
            [str(celeriac_bin), "beat", "--database-url", url, "--max-interval", "1", "--lease-seconds", "3"],
            tmp_path / f"celeriac-beat{i}.log",
        )
        for i in range(2)
    ]
    processes = [beat, *tickers]

    def sent(task: str) -> int:
        return _rows(url, "select count(*) from celeriac.message where task_name = %s", task)[0][0]

    beat.wait_for(lambda: sent("ramp.interval0") >= 2, 30, "Beat to send")
    rng = random.Random(os.getpid())
    percents = [50, 100, 0, 100, 30, 0]
    for n, percent in enumerate(percents):
        if n == 3:
            # This move lands on a slot boundary of the minutely schedule.
            wait_for(lambda: datetime.datetime.now(datetime.UTC).second == 59, 70, "the minute to turn")
        else:
            time.sleep(rng.uniform(2, 6))  # a random moment, not a synchronisation
        out = celeriac("schedule", "ramp", "--percent", str(percent), "--margin", "5")
        assert f"below {percent}" in out, out
    for p in processes:
        p.assert_running()
    time.sleep(3)  # the last Beat sends after the final ramp, observed below, not awaited
    stop_all(processes)

    # Intervals: one send per 2 s slot, by either side - Beat's and celeriac's cadences are one. A
    # send may be up to 1 s late (Beat wakes at least every second: --max-interval 1), so two
    # sends of different slots are more than 1 s apart and two of one slot less; and the number
    # of sends is the number of slots between the first and the last (none doubled or lost).
    for i in range(6):
        rows = _rows(
            url,
            "select created_at, position('celeriac-beat@' in convert_from(payload, 'UTF8')) > 0"
            " from celeriac.message where task_name = %s order by 1",
            f"ramp.interval{i}",
        )
        times = [r[0] for r in rows]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        # For a failure's message: each send's offset and who sent it (c: celeriac, b: Beat).
        sends = [f"{(t - times[0]).total_seconds():.2f}{'c' if by_celeriac else 'b'}" for t, by_celeriac in rows]
        assert len(times) >= 10, times
        assert min(gaps) > 1.0, f"ramp.interval{i}: sends {sends}"
        assert len(times) - 1 == round((times[-1] - times[0]).total_seconds() / 2), f"ramp.interval{i}: sends {sends}"
    # The minutely crontab: at most one send per minute, none missing between the first and last.
    minutes = [
        r
        for r in _rows(
            url,
            "select date_trunc('minute', created_at), count(*) from celeriac.message"
            " where task_name = 'ramp.minutely' group by 1 order by 1",
        )
    ]
    assert all(count == 1 for _, count in minutes), minutes
    assert all((b[0] - a[0]).total_seconds() == 60 for a, b in itertools.pairwise(minutes)), minutes
    # 0 % again: Beat owns everything, and celeriac fired some of them meanwhile.
    owners = _rows(url, "select owner, count(*), sum(total_run_count) from celeriac.schedule group by 1")
    assert [(o, n) for o, n, _ in owners] == [("beat", 8)], owners
    assert owners[0][2] > 0, owners
    assert "Sending due task every-2s-0" in beat.log()


PROMISE_APP = """
from celery import Celery

app = Celery("promise", broker="celeriac+{url}")
app.conf.update(
    broker_connection_retry_on_startup=False,
    timezone="UTC",
    beat_max_loop_interval=1,
    beat_schedule={{"every-10s": {{"task": "promise.tick", "schedule": 10.0}}}},
)
"""


def test_a_slot_celeriac_promised_is_sent_by_beat_when_the_schedule_comes_back_first(
    celeriac_bin: Path, database_url: str, tmp_path: Path
) -> None:
    """Beat asks, is told celeriac fires the next slot, and the schedule moves back to Beat
    before celeriac fired it (here no celeriac ticker runs at all): Beat sends that slot itself,
    not only its own next one a whole interval later."""
    url = database_url
    (tmp_path / "promise.py").write_text(PROMISE_APP.format(url=url))
    env = {**os.environ, "CELERIAC_PYTHON": sys.executable, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [str(celeriac_bin), "-A", "promise", "--database-url", url, "schedule", "import"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    def sends() -> list[datetime.datetime]:
        rows = _rows(url, "select created_at from celeriac.message where task_name = 'promise.tick' order by 1")
        return [r[0] for r in rows]

    beat = _celery_beat("promise", tmp_path, env, "debug")
    try:
        beat.wait_for(lambda: len(sends()) >= 1, 30, "Beat's first send")
        # Strict hand-over: celeriac takes the slot after Beat's send.
        run_celeriac(celeriac_bin, "--database-url", url, "schedule", "pin", "every-10s", "--owner", "celeriac",
                     "--margin", "5")  # fmt: skip
        ((owner, promised),) = _rows(url, "select owner, next_run_at from celeriac.schedule where name = 'every-10s'")
        assert owner == "celeriac"
        assert promised is not None
        # Beat falls due, asks, and is told celeriac fires `promised`.
        beat.wait_for(lambda: "every-10s is fired by celeriac" in beat.log(), 30, "Beat to ask and skip")
        run_celeriac(celeriac_bin, "--database-url", url, "schedule", "pin", "every-10s", "--owner", "beat")
        beat.wait_for(lambda: len(sends()) >= 2, 30, "Beat's send of the promised slot")
    finally:
        stop_all([beat])
    first, second, *_ = sends()
    # The promised slot, sent late by Beat (it looks again within a second), not skipped for
    # Beat's own next slot (`promised` + 10 s); and never before it (no double of the first).
    assert (second - first).total_seconds() > 5, (first, second)
    assert (second - promised).total_seconds() < 5, (promised, second)
