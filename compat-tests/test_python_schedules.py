"""``celeriac.schedules``: the ``celeriac schedule`` operations from Python (the installed
package's own binary), on a real database."""

from __future__ import annotations

import psycopg
import pytest
from celeriac import schedules


def test_schedules_can_be_managed_from_python(database_url: str) -> None:
    url = database_url
    added = schedules.add(
        url, "nightly", task="proj.tasks.report", crontab="30 2 * * mon-fri", tz="Europe/London",
        args=[1, "x"], kwargs={"full": True}, queue="reports", priority=7, catchup="all", catchup_max=3,
    )  # fmt: skip
    assert added["schedule"] == {
        "kind": "crontab",
        "minute": "30",
        "hour": "2",
        "day_of_week": "mon-fri",
        "day_of_month": "*",
        "month_of_year": "*",
    }
    assert (added["args"], added["kwargs"], added["options"]) == (
        [1, "x"],
        {"full": True},
        {"queue": "reports", "priority": 7},
    )
    assert (added["tz"], added["catchup"], added["catchup_max"], added["owner"]) == (
        "Europe/London",
        "all",
        3,
        "celeriac",
    )
    edited = schedules.edit(url, "nightly", every=60, relative=True, queue="other")
    assert edited["schedule"] == {"kind": "interval", "seconds": 60.0, "relative": True}
    assert edited["options"]["queue"] == "other"
    assert edited["args"] == [1, "x"]

    schedules.pause(url, "nightly", reason="maintenance")
    assert (schedules.show(url, "nightly")["paused_reason"]) == "maintenance"
    schedules.resume(url, "nightly")
    schedules.disable(url, "nightly", reason="not needed")
    assert schedules.show(url, "nightly")["disabled_reason"] == "not needed"
    schedules.enable(url, "nightly")
    assert schedules.show(url, "nightly")["enabled"] is True

    task_id = schedules.run_now(url, "nightly")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select queue, task_name, convert_from(payload, 'UTF8')::jsonb -> 'headers' ->> 'periodic_task_name'"
            " from celeriac.message where task_id = %s",
            (task_id,),
        ).fetchone()
    assert row == ("other", "proj.tasks.report", "nightly")
    assert schedules.show(url, "nightly")["total_run_count"] == 1
    assert [s["name"] for s in schedules.list(url)] == ["nightly"]
    schedules.remove(url, "nightly")
    assert schedules.list(url) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crontab": "0 0 * * 7"}, "Invalid end range: 7 > 6"),
        ({"crontab": "0 0 30 2 *"}, "never occurs"),
        ({"crontab": "* * * * *", "tz": "Mars/Olympus_Mons"}, "Mars/Olympus_Mons"),
        ({"every": -1}, "--every must be a positive number of seconds"),
    ],
)
def test_bad_schedules_are_refused_with_celerys_reason(database_url: str, options: dict, message: str) -> None:
    with pytest.raises(schedules.ScheduleError, match=message):
        schedules.add(database_url, "bad", task="t", **options)
    assert schedules.list(database_url) == []
    with pytest.raises(schedules.ScheduleError, match='no such schedule "missing"'):
        schedules.pause(database_url, "missing")
