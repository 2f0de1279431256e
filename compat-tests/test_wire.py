"""``celeriac send --dry-run`` builds the same message Celery 5.7's ``apply_async`` builds.

For each option combination in :data:`CASES`:

* ``test_worker_accepts_dry_run_envelope``: the printed envelope goes through the real worker-side
  decode path (``kombu_decode.Decoder``: kombu virtual channel, ``accept_content=['json']``,
  ``celery.worker.request.Request``) and the request carries exactly the args, kwargs, eta,
  expires, time limits, queue, priority and ignore_result that were asked for.
* ``test_dry_run_envelope_equals_celery``: a real Celery app (``celery_capture``) publishes the same
  call (``task.apply_async(tuple(args), kwargs, task_id=..., **options)``, as ``task.delay(*args)``
  would) and the two envelopes are identical -- same body bytes, same header/property/envelope key
  order, same values, same JSON text -- except the values every publish makes anew:
  ``properties.delivery_tag`` (uuid4), ``properties.reply_to`` (Celery: the app's oid),
  ``headers.origin`` (``gen<pid>@<host>``) and the clock-derived ``headers.eta`` (from countdown),
  ``headers.expires`` (from seconds) and ``properties.expiration`` (from an expiry datetime), which
  must agree within 5 s.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, Task
from kombu.utils.json import dumps as kombu_dumps

from celery_capture import capture, envelope_text, make_app, register_task
from kombu_decode import Decoder

TASK = "tasks.add"
TASK_ID = "c0ffee00-0000-4000-8000-00000000c1a5"
#: How far apart clock-derived values (computed at different instants) may be.
CLOCK_TOLERANCE = timedelta(seconds=5)
ENVELOPE_KEYS = ["body", "content-encoding", "content-type", "headers", "properties"]


@dataclass(frozen=True)
class Case:
    """One ``celeriac send`` call and the equivalent ``apply_async`` options.

    ``eta``/``expires`` are the values Celery gets; ``eta_cli``/``expires_cli`` the CLI text for
    them (default: ``eta.isoformat()`` / ``str(expires)``).
    """

    id: str
    args: list[Any] = field(default_factory=lambda: [2, 2])
    kwargs: dict[str, Any] = field(default_factory=dict)
    countdown: float | None = None
    eta: datetime | None = None
    eta_cli: str | None = None
    expires: float | datetime | None = None
    expires_cli: str | None = None
    priority: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    queue: str | None = None
    headers: dict[str, Any] | None = None

    def cli(self) -> list[str]:
        argv = [
            "--args",
            json.dumps(self.args, ensure_ascii=False),
            "--kwargs",
            json.dumps(self.kwargs, ensure_ascii=False),
        ]
        if self.countdown is not None:
            argv += ["--countdown", str(self.countdown)]
        if self.eta is not None:
            argv += ["--eta", self.eta_cli or self.eta.isoformat()]
        if self.expires is not None:
            expires = self.expires.isoformat() if isinstance(self.expires, datetime) else str(self.expires)
            argv += ["--expires", self.expires_cli or expires]
        if self.priority is not None:
            argv += ["--priority", str(self.priority)]
        if self.time_limit is not None:
            argv += ["--time-limit", str(self.time_limit)]
        if self.soft_time_limit is not None:
            argv += ["--soft-time-limit", str(self.soft_time_limit)]
        if self.ignore_result:
            argv.append("--ignore-result")
        if self.queue is not None:
            argv += ["-Q", self.queue]
        if self.headers is not None:
            argv += ["--headers", json.dumps(self.headers, ensure_ascii=False)]
        return argv

    def celery_options(self) -> dict[str, Any]:
        names = ("countdown", "eta", "expires", "priority", "time_limit", "soft_time_limit", "queue", "headers")
        options = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.ignore_result:
            options["ignore_result"] = True
        return options

    @property
    def eta_from_clock(self) -> bool:
        return bool(self.countdown)  # Celery: `if countdown:` -- countdown=0 means no eta

    @property
    def expires_from_clock(self) -> bool:
        return self.expires is not None and not isinstance(self.expires, datetime)

    @property
    def expiration_from_clock(self) -> bool:
        return isinstance(self.expires, datetime)


Y2030 = datetime(2030, 1, 1, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))

CASES = [
    Case("plain-args"),
    Case("no-args", args=[]),
    Case("one-arg", args=[7]),
    Case("kwargs", args=[1], kwargs={"b": 1, "a": {"z": [1, 2], "y": "x"}, "ü": [True, None, 1.5]}),
    Case("kwargs-only", args=[], kwargs={"x": 1, "y": 2}),
    Case("countdown-expires-priority", countdown=3, expires=600, priority=5),
    Case("fractional-countdown-expires", countdown=1.5, expires=90.5),
    Case("countdown-zero", countdown=0),
    Case("expires-zero", expires=0),
    Case("eta-iso-utc", eta=Y2030),
    Case("eta-iso-naive-is-utc", eta=Y2030, eta_cli="2030-01-01T00:00:00"),
    Case("eta-iso-microseconds", eta=datetime(2030, 6, 15, 12, 34, 56, 789012, tzinfo=UTC)),
    Case("eta-iso-non-utc-offset", eta=datetime(2030, 1, 1, 2, 0, 0, 123456, tzinfo=PLUS_TWO)),
    Case("expires-iso", expires=Y2030),
    Case("expires-iso-in-the-past", expires=datetime(2020, 1, 1, tzinfo=UTC)),
    Case("eta-and-expires-iso", eta=Y2030, expires=Y2030 + timedelta(hours=1), priority=9),
    Case("time-limits", time_limit=30, soft_time_limit=20),
    Case("hard-time-limit-float", time_limit=1.5),
    Case("soft-time-limit-only", soft_time_limit=20),
    Case("ignore-result", ignore_result=True),
    Case("queue", queue="hipri"),
    Case("queue-priority-zero", queue="lopri", priority=0),
    Case("custom-headers", headers={"x-custom": "v", "n": [1, {"k": None}], "x-float": 1.5}),
    Case("custom-header-overrides-celery-header", headers={"shadow": "alias", "x-trace": "abc"}),
    Case(
        "unicode-bigint-float-args",
        args=[
            1,
            "ü€😀 ελληνικά 中文",
            12345678901234567890123,
            -98765432109876543210,
            2**63,
            0.1,
            1e100,
            1e-7,
            -0.0,
            2.5e-300,
            5e-324,
            1.7976931348623157e308,
            1.0,
            1e16,
            123456789.123456789,
            True,
            None,
        ],
        kwargs={"ключ": "значение", "big": -(2**70), "f": 3.141592653589793},
    ),
    Case("nested-beyond-repr-maxlevels", args=[[[[[1]]]], {"a": {"b": {"c": {"d": 1}}}}]),
    # argsrepr/kwargsrepr are Celery's saferepr (celery.utils.saferepr), not Python's repr():
    Case("argsrepr-string-quoting", args=["it's", 'a"b', "tab\there", "nl\nx", "\x01", "back\\slash"]),
    Case("argsrepr-truncated-long-string", args=["x" * 2000]),
    Case("argsrepr-truncated-many-args", args=list(range(500))),
    Case("argsrepr-truncated-nested", args=[[i, "ab"] for i in range(200)]),
    Case("kwargsrepr-truncated", args=[], kwargs={f"k{i}": "v" * 50 for i in range(40)}),
]


@dataclass(frozen=True)
class DryRun:
    text: str  # the envelope line, without its newline
    pid: int  # of the `celeriac send` process (headers.origin is gen<pid>@<host>)
    started: datetime
    finished: datetime


def dry_run(celeriac_bin: Path, case: Case) -> DryRun:
    env = {k: v for k, v in os.environ.items() if k not in ("CELERIAC_DATABASE_URL", "DATABASE_URL")}
    argv = [str(celeriac_bin), "send", TASK, "--task-id", TASK_ID, *case.cli(), "--dry-run"]
    started = datetime.now(UTC)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        out, err = proc.communicate(timeout=30)
    finished = datetime.now(UTC)
    assert proc.returncode == 0, f"celeriac send --dry-run failed ({proc.returncode}): {err}"
    assert out.endswith("\n"), f"expected one envelope line, got {out!r}"
    assert out.count("\n") == 1, f"expected one envelope line, got {out!r}"
    return DryRun(out.removesuffix("\n"), proc.pid, started, finished)


@pytest.fixture(scope="module")
def celery_task() -> tuple[Celery, Task]:
    app = make_app()
    return app, register_task(app, TASK)


def parse_iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no UTC offset"
    return parsed


def assert_close(ours: datetime, expected: datetime, what: str) -> None:
    assert abs(ours - expected) <= CLOCK_TOLERANCE, f"{what}: {ours.isoformat()} vs {expected.isoformat()}"


def assert_clock_value(ours: str, theirs: str, what: str) -> None:
    """A clock-derived ISO timestamp: Python's isoformat() shape and within 5 s of Celery's."""
    ours_dt = parse_iso(ours)
    assert ours_dt.isoformat() == ours, f"{what}: {ours!r} is not in Python isoformat() form"
    assert ours_dt.utcoffset() == parse_iso(theirs).utcoffset(), f"{what}: offset {ours!r} vs Celery {theirs!r}"
    assert_close(ours_dt, parse_iso(theirs), what)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_worker_accepts_dry_run_envelope(case: Case, celeriac_bin: Path, json_decoder: Decoder) -> None:
    run = dry_run(celeriac_bin, case)
    result = json_decoder.decode(run.text)  # raises on anything a Celery worker would reject
    request = result["request"]

    assert result["ok"] is True
    assert result["protocol"] == 2
    assert result["content_type"] == "application/json"
    assert result["content_encoding"] == "utf-8"
    assert request["task"] == TASK
    assert request["id"] == TASK_ID
    assert request["correlation_id"] == TASK_ID
    assert request["root_id"] == TASK_ID
    assert request["parent_id"] is None
    assert request["group"] is None
    assert request["retries"] == 0
    assert result["embed"] == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    # kombu's JSON text of the decoded values: distinguishes 1 from 1.0 and keeps key order.
    assert kombu_dumps(result["args"]) == kombu_dumps(case.args)
    assert kombu_dumps(result["kwargs"]) == kombu_dumps(case.kwargs)

    if case.eta_from_clock:
        assert case.countdown is not None
        assert result["eta"] is not None
        assert_close(parse_iso(result["eta"]), run.started + timedelta(seconds=case.countdown), "eta")
    elif case.eta is not None:
        assert result["eta"] is not None
        assert parse_iso(result["eta"]) == case.eta
    else:
        # Celery's as_task_v2 does `if countdown:`, so countdown=0 (like no countdown) sends no eta.
        assert result["eta"] is None, "no eta was asked for (countdown 0 means none in Celery)"

    if case.expires_from_clock:
        assert isinstance(case.expires, (int, float))
        assert result["expires"] is not None
        assert_close(parse_iso(result["expires"]), run.started + timedelta(seconds=case.expires), "expires")
    elif isinstance(case.expires, datetime):
        assert result["expires"] is not None
        assert parse_iso(result["expires"]) == case.expires
    else:
        assert result["expires"] is None

    assert result["time_limits"] == [case.time_limit, case.soft_time_limit]
    assert request["delivery_info"]["routing_key"] == (case.queue or "celery")
    assert request["delivery_info"]["exchange"] == ""
    assert result["properties"]["priority"] == (case.priority or 0)
    assert request["ignore_result"] is case.ignore_result
    for key, value in (case.headers or {}).items():
        assert result["headers"][key] == value, f"custom header {key!r}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_dry_run_envelope_equals_celery(case: Case, celeriac_bin: Path, celery_task: tuple[Celery, Task]) -> None:
    app, task = celery_task
    run = dry_run(celeriac_bin, case)
    [theirs_text] = capture(
        app, lambda: task.apply_async(tuple(case.args), case.kwargs, task_id=TASK_ID, **case.celery_options())
    )

    # Formatting: ours is exactly stdlib json.dumps of itself (ASCII, ', ' / ': ', Python float repr).
    assert run.text.isascii(), "envelope text must be ASCII (json.dumps ensure_ascii=True)"
    ours = json.loads(run.text)
    assert envelope_text(ours) == run.text, "envelope text is not formatted like json.dumps (kombu's SQLA transport)"
    theirs = json.loads(theirs_text)

    assert list(ours) == ENVELOPE_KEYS
    assert list(ours) == list(theirs), "envelope key order"
    assert base64.b64decode(ours["body"]) == base64.b64decode(theirs["body"]), "body bytes"
    assert ours["content-type"] == theirs["content-type"]
    assert ours["content-encoding"] == theirs["content-encoding"]

    oh, th = ours["headers"], theirs["headers"]
    assert list(oh) == list(th), "header key order"
    # Per-publish header values.
    assert oh["origin"] == f"gen{run.pid}@{socket.gethostname()}", "origin is gen<pid>@<hostname>"
    oh["origin"] = th["origin"]
    if case.eta_from_clock:
        assert oh["eta"] is not None
        assert th["eta"] is not None
        assert_clock_value(oh["eta"], th["eta"], "headers.eta")
        oh["eta"] = th["eta"]
    if case.expires_from_clock:
        assert oh["expires"] is not None
        assert th["expires"] is not None
        assert_clock_value(oh["expires"], th["expires"], "headers.expires")
        oh["expires"] = th["expires"]
    for key in th:
        assert oh[key] == th[key], f"headers.{key}: celeriac {oh[key]!r} != Celery {th[key]!r}"

    op, tp = ours["properties"], theirs["properties"]
    assert list(op) == list(tp), "property key order"
    assert list(op["delivery_info"]) == list(tp["delivery_info"]), "delivery_info key order"
    # Per-publish property values.
    assert str(uuid.UUID(op["delivery_tag"])) == op["delivery_tag"]
    assert uuid.UUID(op["delivery_tag"]).version == 4, "delivery_tag is a uuid4 (kombu virtual channel)"
    op["delivery_tag"] = tp["delivery_tag"]
    assert str(uuid.UUID(op["reply_to"])) == op["reply_to"], "reply_to is a UUID string"
    op["reply_to"] = tp["reply_to"]
    if case.expiration_from_clock:
        assert isinstance(op["expiration"], str), "expiration is a string of ms"
        assert op["expiration"].isdigit(), "expiration is a string of ms"
        assert abs(int(op["expiration"]) - int(tp["expiration"])) <= CLOCK_TOLERANCE / timedelta(milliseconds=1)
        op["expiration"] = tp["expiration"]
    for key in tp:
        assert op[key] == tp[key], f"properties.{key}: celeriac {op[key]!r} != Celery {tp[key]!r}"

    # Everything else, byte for byte.
    assert envelope_text(ours) == theirs_text
