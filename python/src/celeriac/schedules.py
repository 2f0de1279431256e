"""Periodic schedules from Python: the same operations as ``celeriac schedule …``.

Each function runs the ``celeriac`` binary this package carries, on the database ``url``
(``postgresql://…``), and returns what it printed, parsed::

    from celeriac import schedules

    schedules.add(url, "nightly", task="proj.tasks.report", crontab="0 3 * * *", tz="Europe/London")
    schedules.pause(url, "nightly", reason="migration")
    [s["name"] for s in schedules.list(url)]

A failure raises :class:`ScheduleError` with the command's message (an unknown name, a crontab
Celery would refuse, an unknown time zone). See ``docs/beat.md`` for what each field means.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from celeriac.__main__ import BINARY

__all__ = [
    "ScheduleError",
    "add",
    "disable",
    "edit",
    "enable",
    "list",
    "pause",
    "pin",
    "ramp",
    "remove",
    "resume",
    "run_now",
    "show",
]


class ScheduleError(RuntimeError):
    """A ``celeriac schedule`` command failed; the message is the command's."""


def _run(url: str, *args: str) -> str:
    env = {**os.environ, "CELERIAC_PYTHON": os.environ.get("CELERIAC_PYTHON", sys.executable)}
    proc = subprocess.run(
        [str(BINARY), "schedule", *args, "--database-url", url],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise ScheduleError(proc.stderr.strip().removeprefix("celeriac: "))
    return proc.stdout


def list(url: str) -> builtins.list[dict[str, Any]]:
    """Every schedule, by name, as ``celeriac schedule list --json`` prints them."""
    return [json.loads(line) for line in _run(url, "list", "--json").splitlines() if line]


def show(url: str, name: str) -> dict[str, Any]:
    """One schedule."""
    return dict(json.loads(_run(url, "show", name, "--json")))


def _spec_args(
    task: str | None,
    crontab: str | None,
    every: float | None,
    relative: bool,
    clocked: str | None,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    queue: str | None,
    priority: int | None,
    expires: float | None,
    headers: Mapping[str, Any] | None,
    tz: str | None,
    start: str | None,
    end: str | None,
    one_off: bool,
    catchup: str | None,
    catchup_window: float | None,
    catchup_max: int | None,
    overlap: str | None,
) -> builtins.list[str]:
    out: builtins.list[str] = []
    flags: Sequence[tuple[str, Any]] = (
        ("--task", task),
        ("--crontab", crontab),
        ("--every", every),
        ("--clocked", clocked),
        ("--args", None if args is None else json.dumps(builtins.list(args))),
        ("--kwargs", None if kwargs is None else json.dumps(dict(kwargs))),
        ("--queue", queue),
        ("--priority", priority),
        ("--expires", expires),
        ("--headers", None if headers is None else json.dumps(dict(headers))),
        ("--tz", tz),
        ("--start", start),
        ("--end", end),
        ("--catchup", catchup),
        ("--catchup-window", catchup_window),
        ("--catchup-max", catchup_max),
        ("--overlap", overlap),
    )
    for flag, value in flags:
        if value is not None:
            out.append(f"{flag}={value}")  # "=": values may start with "-"
    if relative:
        out.append("--relative")
    if one_off:
        out.append("--one-off")
    return out


def add(
    url: str,
    name: str,
    *,
    task: str,
    crontab: str | None = None,
    every: float | None = None,
    relative: bool = False,
    clocked: str | None = None,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    expires: float | None = None,
    headers: Mapping[str, Any] | None = None,
    tz: str | None = None,
    start: str | None = None,
    end: str | None = None,
    one_off: bool = False,
    catchup: str | None = None,
    catchup_window: float | None = None,
    catchup_max: int | None = None,
    overlap: str | None = None,
    owner: str = "celeriac",
) -> dict[str, Any]:
    """Adds a schedule: ``crontab`` (``"m h dom mon dow"``, Celery's rules), ``every`` seconds,
    or ``clocked`` (ISO 8601); returns it."""
    spec = _spec_args(
        task, crontab, every, relative, clocked, args, kwargs, queue, priority, expires, headers,
        tz, start, end, one_off, catchup, catchup_window, catchup_max, overlap,
    )  # fmt: skip
    _run(url, "add", name, *spec, "--owner", owner)
    return show(url, name)


def edit(url: str, name: str, **changes: Any) -> dict[str, Any]:
    """Changes a schedule (the keywords of :func:`add` except ``owner``); returns it."""
    allowed = [
        "task",
        "crontab",
        "every",
        "relative",
        "clocked",
        "args",
        "kwargs",
        "queue",
        "priority",
        "expires",
        "headers",
        "tz",
        "start",
        "end",
        "one_off",
        "catchup",
        "catchup_window",
        "catchup_max",
        "overlap",
    ]
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise TypeError(f"edit() got unexpected keyword arguments: {', '.join(unknown)}")
    values = {key: changes.get(key) for key in allowed}
    values["relative"] = bool(values["relative"])
    values["one_off"] = bool(values["one_off"])
    _run(url, "edit", name, *_spec_args(**values))
    return show(url, name)


def enable(url: str, name: str) -> None:
    """Enables a schedule (it fires from its next slot on)."""
    _run(url, "enable", name)


def disable(url: str, name: str, reason: str = "disabled by an operator") -> None:
    """Disables a schedule."""
    _run(url, "disable", name, f"--reason={reason}")


def pause(url: str, name: str, reason: str = "paused by an operator") -> None:
    """Pauses a schedule (kept across syncs from the app's code)."""
    _run(url, "pause", name, f"--reason={reason}")


def resume(url: str, name: str) -> None:
    """Resumes a paused schedule (from its next slot on)."""
    _run(url, "resume", name)


def remove(url: str, name: str) -> None:
    """Deletes a schedule."""
    _run(url, "remove", name)


def run_now(url: str, name: str) -> str:
    """Fires a schedule once now; returns the task id."""
    return _run(url, "run-now", name).strip()


def ramp(url: str, percent: int, *, margin: float = 30.0, wait: bool = True) -> str:
    """Moves schedules between Celery Beat and celeriac (``celeriac schedule ramp``); returns
    the command's report."""
    extra = [] if wait else ["--no-wait"]
    return _run(url, "ramp", "--percent", str(percent), "--margin", str(margin), *extra)


def pin(url: str, name: str, owner: str | None, *, margin: float = 30.0, wait: bool = True) -> str:
    """Pins a schedule to ``"beat"`` or ``"celeriac"`` (``None`` unpins); returns the report."""
    extra = [] if wait else ["--no-wait"]
    return _run(url, "pin", name, "--owner", owner or "none", "--margin", str(margin), *extra)
