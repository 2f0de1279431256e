"""The ramp with django-celery-beat (from PyPI, unmodified): ``celeriac schedule import
--django-celery-beat`` reads its tables; ``celeriac schedule ramp`` disables the rows it moves to
celeriac (and bumps the change tracker), so an unmodified ``celery beat -S django`` stops sending
them, and gives them back enabled, with the last run celeriac made, at 0 %. No slot is sent twice
(the dead-zone hand-over); an interval may wait one period longer at a move.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tools.celeriac_testkit import LoggedProcess, run_celeriac, stop_all

SETTINGS = """
SECRET_KEY = "test"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.postgresql", "NAME": {name!r}, "USER": {user!r},
    "PASSWORD": {password!r}, "HOST": {host!r}, "PORT": {port!r},
}}}}
USE_TZ = True
TIME_ZONE = "UTC"
"""

APP = """
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dcbsettings")
import django

django.setup()
from celery import Celery

app = Celery("dcbapp", broker="celeriac+{url}")
app.conf.update(broker_connection_retry_on_startup=False, timezone="UTC", beat_max_loop_interval=1)
"""

SEED = """
import django

django.setup()
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

every2, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
minutely, _ = CrontabSchedule.objects.get_or_create(minute="*", hour="*", timezone="Europe/London")
for i in range(4):
    PeriodicTask.objects.create(name=f"every-2s-{i}", task=f"dcb.interval{i}", interval=every2,
                                queue="periodic", priority=3, headers='{"x-from": "django"}')
PeriodicTask.objects.create(name="minutely", task="dcb.minutely", crontab=minutely)
PeriodicTask.objects.create(name="off", task="dcb.off", interval=every2, enabled=False)
"""


class Process(LoggedProcess):
    KIND = "beat"


def _rows(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.mark.parametrize("scheduler", ["django", "celeriac.beat:DatabaseScheduler"])
def test_ramp_moves_django_celery_beat_rows_and_back(
    celeriac_bin: Path, database_url: str, tmp_path: Path, scheduler: str
) -> None:
    """With django-celery-beat's own scheduler (the dead-zone hand-over) and with celeriac's
    subclass of it, which asks the database before each send (the strict hand-over)."""
    url = database_url
    parts = urlsplit(url)
    (tmp_path / "dcbsettings.py").write_text(
        SETTINGS.format(
            name=parts.path.lstrip("/"),
            user=parts.username or "",
            password=parts.password or "",
            host=parts.hostname or "",
            port=str(parts.port or 5432),
        )
    )
    (tmp_path / "dcbapp.py").write_text(APP.format(url=url))
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "dcbsettings",
        "CELERIAC_PYTHON": sys.executable,
    }
    for argv in (
        [sys.executable, "-m", "django", "migrate", "-v", "0"],
        [sys.executable, "-c", SEED],
    ):
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr

    def celeriac(*args: str) -> str:
        return run_celeriac(celeriac_bin, "--database-url", url, *args)

    out = celeriac("schedule", "import", "--django-celery-beat")
    assert "6 new (fired by Celery Beat until ramped)" in out, out
    rows = {r[0]: r[1:] for r in _rows(url, "select name, owner, enabled, tz, options::text from celeriac.schedule")}
    assert rows["minutely"][:3] == ("beat", True, "Europe/London"), rows
    assert rows["off"][1] is False, rows
    assert '"queue": "periodic"' in rows["every-2s-0"][3], rows
    assert '"x-from": "django"' in rows["every-2s-0"][3], rows

    beat = Process(
        [sys.executable, "-m", "celery", "-A", "dcbapp", "beat", "-S", scheduler, "--max-interval", "1", "-l", "info"],
        tmp_path / "celery-beat.log",
        cwd=tmp_path,
        env=env,
    )
    ticker = Process(
        [str(celeriac_bin), "beat", "--database-url", url, "--max-interval", "1"], tmp_path / "celeriac-beat.log"
    )

    def sent(task: str) -> int:
        return _rows(url, "select count(*) from celeriac.message where task_name = %s", task)[0][0]

    beat.wait_for(lambda: sent("dcb.interval0") >= 2, 60, "Beat to send")
    rng = random.Random(os.getpid())
    time.sleep(rng.uniform(0, 2))  # a random moment, not a synchronisation
    out = celeriac("schedule", "ramp", "--percent", "100", "--margin", "3")
    moved = _rows(
        url,
        "select t.name, t.enabled from django_celery_beat_periodictask t"
        " join celeriac.schedule s on s.name = t.name where s.owner = 'celeriac'",
    )
    assert moved, out
    assert all(not enabled for _, enabled in moved), (out, moved)
    ticker.wait_for(lambda: sent("dcb.interval0") >= 8, 60, "celeriac to send")
    time.sleep(rng.uniform(0, 2))  # a random moment, not a synchronisation
    out = celeriac("schedule", "ramp", "--percent", "0", "--margin", "3")
    back = _rows(
        url,
        "select t.name, t.enabled, t.last_run_at is not null from django_celery_beat_periodictask t"
        " where starts_with(t.name, 'every-2s-')",
    )
    assert all(enabled and has_last for _, enabled, has_last in back), (out, back)
    before = sent("dcb.interval0")
    beat.wait_for(lambda: sent("dcb.interval0") >= before + 3, 60, "Beat to send again")
    stop_all([beat, ticker])

    for i in range(4):
        times = [
            r[0]
            for r in _rows(
                url, "select created_at from celeriac.message where task_name = %s order by 1", f"dcb.interval{i}"
            )
        ]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 1.5, (i, gaps)
        assert max(gaps) <= 8.0, (i, gaps)
    per_minute = _rows(
        url,
        "select count(*) from celeriac.message where task_name = 'dcb.minutely'"
        " group by date_trunc('minute', created_at) having count(*) > 1",
    )
    assert per_minute == [], per_minute
    assert _rows(url, "select count(*) from celeriac.message where task_name = 'dcb.off'")[0][0] == 0
    # celeriac's fires carried django-celery-beat's options.
    queues = _rows(
        url,
        "select distinct queue, priority from celeriac.message m where task_name = 'dcb.interval1'"
        " and convert_from(payload, 'UTF8')::jsonb -> 'headers' ->> 'x-from' = 'django'",
    )
    assert queues == [("periodic", 3)], queues
    # celeriac's subclass claimed (and recorded) Beat's sends; django-celery-beat's own did not.
    recorded = _rows(url, "select count(*) from celeriac.schedule where last_beat_send_at is not null")[0][0]
    assert (recorded > 0) == (scheduler != "django"), (scheduler, recorded)
