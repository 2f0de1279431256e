"""Prints a Celery app's periodic schedule as JSON, for the worker to write into the database.

Run by ``celeriac worker -B``, ``celeriac beat -A`` and ``celeriac schedule import -A`` (never by
hand) with the app's own interpreter, as ``python -c <bootstrap> --app SPEC``. The schedule is
what Celery Beat would run: ``beat_schedule`` and the entries ``add_periodic_task`` added
(including those added by ``on_after_configure``/``on_after_finalize`` receivers), with each
entry's options routed as ``apply_async`` would route them (the app's ``task_routes``, the
task's own queue, priority, expiry and time limits).

Output: one JSON object, ``{"app": <app.main>, "timezone": …, "entries": [...],
"warnings": [...]}``; each entry
``{"name", "task", "args_json", "kwargs_json", "options_json", "schedule": {...}}`` with
``schedule`` one of ``{"kind": "crontab", "fields": [minute, hour, day_of_week, day_of_month,
month_of_year]}``, ``{"kind": "interval", "seconds", "relative"}``, ``{"kind": "clocked", "at"}``,
``{"kind": "solar", "event", "lat", "lon"}`` or ``{"kind": "unsupported", "reason"}``, plus
the celeriac policies of ``celeriac_schedule_policies`` (catch-up and overlap).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

#: ``apply_async`` options a fire carries; others are reported and ignored.
_KEPT_OPTIONS = (
    "queue",
    "priority",
    "expires",
    "headers",
    "time_limit",
    "soft_time_limit",
    "countdown",
    "ignore_result",
    "shadow",
    "exchange",
    "routing_key",
)
_POLICY_KEYS = ("catchup", "catchup_window", "catchup_max", "overlap")


def _field(value: Any) -> str:
    """A crontab field as Celery was given it, as text its parser reads the same way."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return ",".join(str(v) for v in sorted(value))


def _zone_name(tz: Any) -> str | None:
    key = getattr(tz, "key", None) or getattr(tz, "zone", None)
    return str(key) if key else None


def _schedule(schedule: Any, app: Any) -> dict[str, Any]:
    from celery import schedules

    if isinstance(schedule, schedules.crontab):
        fields = [
            schedule._orig_minute,
            schedule._orig_hour,
            schedule._orig_day_of_week,
            schedule._orig_day_of_month,
            schedule._orig_month_of_year,
        ]
        return {"kind": "crontab", "fields": [_field(f) for f in fields]}
    if isinstance(schedule, schedules.solar):
        return {"kind": "solar", "event": schedule.event, "lat": schedule.lat, "lon": schedule.lon}
    if isinstance(schedule, schedules.schedule) and type(schedule) is schedules.schedule:
        seconds = schedule.run_every.total_seconds()
        return {"kind": "interval", "seconds": seconds, "relative": bool(schedule.relative)}
    clocked_time = getattr(schedule, "clocked_time", None)
    if isinstance(clocked_time, datetime.datetime):
        if clocked_time.tzinfo is None:
            clocked_time = clocked_time.replace(tzinfo=app.timezone)
        return {"kind": "clocked", "at": clocked_time.isoformat()}
    return {
        "kind": "unsupported",
        "reason": f"schedule type {type(schedule).__module__}.{type(schedule).__qualname__} "
        "is not supported by celeriac (crontab, intervals and clocked one-offs are)",
    }


def _options(app: Any, task_name: str, entry: Any, warnings: list[str]) -> dict[str, Any]:
    """The entry's options as Beat's ``task.apply_async(**entry.options)`` would use them."""
    options = dict(entry.options or {})
    task = app.tasks.get(task_name)
    if task is not None:
        exec_options = {k: v for k, v in task._get_exec_options().items() if v is not None}
        options = {**exec_options, **options}
    routed = app.amqp.router.route(dict(options), task_name, entry.args, entry.kwargs)
    queue = routed.get("queue")
    kept: dict[str, Any] = {}
    name = getattr(queue, "name", queue)
    if name:
        kept["queue"] = str(name)
    for key in _KEPT_OPTIONS[1:]:
        value = options.get(key, routed.get(key) if key in ("priority", "routing_key") else None)
        if key == "exchange":
            value = getattr(value, "name", value)
        if value is None:
            continue
        if isinstance(value, datetime.timedelta):
            value = value.total_seconds()
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=app.timezone)
            value = value.isoformat()
        kept[key] = value
    ignored = sorted(
        k for k in entry.options or {} if k not in _KEPT_OPTIONS and entry.options[k] is not None
    )
    if ignored:
        warnings.append(f"{entry.name}: options not carried by celeriac: {', '.join(ignored)}")
    return kept


def export(app: Any) -> dict[str, Any]:
    """The app's periodic schedule (see the module documentation)."""
    from celery.beat import ScheduleEntry
    from kombu.utils.json import dumps

    app.loader.import_default_modules()
    app.finalize(auto=True)
    conf = app.conf
    beat_schedule = dict(conf.beat_schedule or {})
    zone = _zone_name(app.timezone)
    warnings: list[str] = []
    # Beat's default entry (Scheduler.install_default_entries): the daily result cleanup at 04:00,
    # when results expire and the backend does not expire them itself.
    if conf.result_expires and "celery.backend_cleanup" not in beat_schedule:
        try:
            autoexpire = bool(app.backend.supports_autoexpire)
        except Exception as exc:  # a backend that cannot be set up here: Beat would fail too
            warnings.append(f"result backend: {type(exc).__name__}: {exc}")
            autoexpire = True
        if not autoexpire:
            from celery.schedules import crontab

            beat_schedule["celery.backend_cleanup"] = {
                "task": "celery.backend_cleanup",
                "schedule": crontab("0", "4", "*"),
                "options": {"expires": 12 * 3600},
            }
    if zone is None:
        raise SystemExit(
            "celeriac: the app has no IANA time zone (enable_utc=False without timezone uses "
            "the host's zone); set timezone, e.g. app.conf.timezone = 'Europe/London'"
        )
    deadline = conf.get("beat_cron_starting_deadline")
    policies = dict(conf.get("celeriac_schedule_policies") or {})
    entries = []
    for name, raw in beat_schedule.items():
        out: dict[str, Any] = {"name": name}
        try:
            entry = ScheduleEntry(**dict(raw, name=name, app=app))
            out["task"] = entry.task
            out["args_json"] = dumps(list(entry.args or ()))
            out["kwargs_json"] = dumps(dict(entry.kwargs or {}))
            out["options_json"] = dumps(_options(app, entry.task, entry, warnings))
            out["schedule"] = _schedule(entry.schedule, app)
        except Exception as exc:  # an entry Beat could not build either
            out.setdefault("task", str(raw.get("task", "")) if isinstance(raw, dict) else "")
            out.setdefault("args_json", "[]")
            out.setdefault("kwargs_json", "{}")
            out.setdefault("options_json", "{}")
            out["schedule"] = {"kind": "unsupported", "reason": f"{type(exc).__name__}: {exc}"}
        policy = dict(policies.get(name) or {})
        unknown = sorted(set(policy) - set(_POLICY_KEYS))
        if unknown:
            warnings.append(f"celeriac_schedule_policies[{name!r}]: unknown keys {unknown}")
        if deadline is not None and out["schedule"]["kind"] == "crontab":
            policy.setdefault("catchup_window", float(deadline))
        out["policy"] = {k: policy[k] for k in _POLICY_KEYS if k in policy}
        entries.append(out)
    return {"app": app.main or "", "timezone": zone, "entries": entries, "warnings": warnings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="celeriac schedule export")
    parser.add_argument("--app", required=True)
    args = parser.parse_args(argv)
    # Celery's find_app imports the app from the working directory itself.
    from celeriac._worker import AppLoadError, load_app

    try:
        app = load_app(args.app)
    except AppLoadError as exc:
        print(str(exc), file=sys.stderr)
        return 3
    json.dump(export(app), sys.stdout)
    sys.stdout.write("\n")
    return 0
