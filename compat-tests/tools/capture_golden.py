#!/usr/bin/env python3
"""Regenerate the golden Celery message fixtures in runtime/protocol/tests/fixtures/celery-5.7/.

    .venv/bin/python compat-tests/tools/capture_golden.py [--out DIR] [--check]

Every case publishes through a real Celery app (see ``celery_capture``) and writes, per message:

* ``<case>.envelope.json``: the exact envelope text kombu's SQLAlchemy transport would store in
  ``kombu_message.payload`` (``json.dumps`` of the virtual-transport message; no trailing newline).
* ``<case>.expected.json``: what the message means, derived independently of the worker path
  (base64 + decompress + kombu's serializer registry), see ``expected_for``.

Reproducibility: the task/group ids Celery generates are replaced by a counter
(``aaaaaaaa-0000-0000-0000-00000000000N``, in case order), and so are three per-process values that
would otherwise change on every run: the delivery tag (a uuid4 per publish, replaced by
``dddddddd-0000-4000-8000-00000000000N``), ``headers.origin`` (``gen<pid>@<host>``, replaced by
``gen4242@celeriac-golden``) and ``properties.reply_to`` (the app's oid, a uuid3, fixed). Their
shapes are unchanged. Only timestamps derived from "now" (``countdown``, ``expires=<seconds>``,
chord_unlock's countdown) differ between runs.

``--check`` regenerates into a temporary directory and compares everything except those
timestamps with the committed fixtures (exit 1 on drift).
``properties.expiration`` (milliseconds until ``expires``) is relative to "now" as well.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import math
import sys
import tempfile
import uuid as uuid_mod
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import celery
import celery.app.amqp
import kombu
from celery import Celery, Task, chain, chord, group
from kombu.serialization import loads as kombu_loads
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.uuid import uuid as kombu_uuid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from celery_capture import REPO_ROOT, capturing, make_app, register_task

DEFAULT_OUT = REPO_ROOT / "runtime" / "protocol" / "tests" / "fixtures" / "celery-5.7"

FIXED_ORIGIN = "gen4242@celeriac-golden"
FIXED_REPLY_TO = str(uuid_mod.uuid3(uuid_mod.NAMESPACE_OID, "celeriac-golden"))

#: Keys whose value depends on the wall clock at capture time (headers/expected ``eta``/``expires``
#: from countdown=/expires=<seconds>/chord_unlock, and ``properties.expiration``, always relative).
CLOCK_KEYS = frozenset({"eta", "expires", "expiration"})


def task_id(n: int) -> str:
    return f"aaaaaaaa-0000-0000-0000-{n:012d}"


class IdSource:
    """Deterministic replacement for ``kombu.utils.uuid.uuid`` inside celery's modules."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self, _uuid: Any = None) -> str:
        return task_id(next(self._counter))


@contextmanager
def deterministic_ids(ids: IdSource) -> Iterator[None]:
    """Patch every ``celery.*`` module global that is kombu's ``uuid`` function, and origin."""
    patched: list[tuple[Any, str, Any]] = []
    for name, module in list(sys.modules.items()):
        is_celery = name == "celery" or name.startswith("celery.")
        if is_celery and module is not None and getattr(module, "uuid", None) is kombu_uuid:
            patched.append((module, "uuid", module.uuid))
            module.uuid = ids
    patched.append((celery.app.amqp, "anon_nodename", celery.app.amqp.anon_nodename))
    celery.app.amqp.anon_nodename = lambda *a, **k: FIXED_ORIGIN  # type: ignore[assignment]
    try:
        yield
    finally:
        for module, attr, original in reversed(patched):
            setattr(module, attr, original)


@dataclass
class Apps:
    """The apps and tasks the cases publish with."""

    v2: Celery
    v1: Celery
    chord_db: Celery
    add: Task
    echo: Task
    tsum: Task
    add_v1: Task
    add_db: Task
    tsum_db: Task


def build_apps() -> Apps:
    v2 = make_app(2)
    v1 = make_app(1)
    # Celery's database result backend (no native chords => publishes celery.chord_unlock).
    # In-memory SQLite: nothing is written for a chord publish; no server needed.
    chord_db = make_app(2, result_backend="db+sqlite://")
    for app in (v2, v1, chord_db):
        app._local.oid = FIXED_REPLY_TO  # what app.thread_oid caches; used as reply_to
    return Apps(
        v2=v2,
        v1=v1,
        chord_db=chord_db,
        add=register_task(v2, "tasks.add"),
        echo=register_task(v2, "tasks.echo"),
        tsum=register_task(v2, "tasks.tsum"),
        add_v1=register_task(v1, "tasks.add"),
        add_db=register_task(chord_db, "tasks.add"),
        tsum_db=register_task(chord_db, "tasks.tsum"),
    )


@dataclass
class Case:
    name: str
    app: Callable[[Apps], Celery]
    publish: Callable[[Apps], object]
    #: names for the captured messages, in publish order; None = one message named like the case.
    #: The number of captured messages must match exactly.
    parts: list[str] | None = None


def _special_values() -> tuple[Any, ...]:
    return (
        datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5),
        date(2024, 1, 2),
        time(3, 4, 5, 123),
        uuid_mod.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("3.14"),
        b"abc",
        b"\x00\xffhi",
    )


def _chord_publish(a: Apps) -> object:
    return chord([a.add_db.s(1, 1), a.add_db.s(2, 2)], a.tsum_db.s()).apply_async()


CASES: list[Case] = [
    Case("add_plain", lambda a: a.v2, lambda a: a.add.apply_async((2, 2))),
    Case(
        "kwargs_only",
        lambda a: a.v2,
        lambda a: a.add.apply_async(kwargs={"x": 1, "y": 2}),
    ),
    Case(
        "countdown_expires_priority",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), countdown=3, expires=600, priority=5),
    ),
    Case(
        "eta_far_future",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), eta=datetime(2099, 12, 31, 23, 59, 59, 123456, tzinfo=UTC)),
    ),
    Case(
        "expires_datetime",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), expires=datetime(2099, 1, 1, tzinfo=UTC)),
    ),
    Case(
        "time_limits",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), time_limit=30, soft_time_limit=20),
    ),
    Case(
        "ignore_result",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), ignore_result=True),
    ),
    Case("retries_3", lambda a: a.v2, lambda a: a.add.apply_async((2, 2), retries=3)),
    Case(
        "send_task_by_name",
        lambda a: a.v2,
        # send_task of a name the producer has not registered: headers.ignore_result is null.
        lambda a: a.v2.send_task("tasks.remote_only", args=(1, "x"), kwargs={"k": [True]}),
    ),
    Case(
        "queue_hipri",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), queue="hipri"),
    ),
    Case(
        "shadow_name",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), shadow="add-shadowed"),
    ),
    Case(
        "custom_headers",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), headers={"x-custom": "v"}),
    ),
    Case(
        "link_and_link_error",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), link=a.add.s(10), link_error=a.echo.s()),
    ),
    Case(
        "chain_of_three_first",
        lambda a: a.v2,
        lambda a: chain(a.add.s(1, 1), a.add.s(2), a.add.s(3)).apply_async(),
    ),
    Case(
        "group_of_two",
        lambda a: a.v2,
        lambda a: group(a.add.s(1, 1), a.add.s(2, 2)).apply_async(),
        parts=["group_of_two_member0", "group_of_two_member1"],
    ),
    Case(
        "chord_of_two_db_backend",
        lambda a: a.chord_db,
        _chord_publish,
        # fallback_chord_unlock publishes celery.chord_unlock *before* the header is sent.
        parts=[
            "chord_of_two_chord_unlock",
            "chord_of_two_header0",
            "chord_of_two_header1",
        ],
    ),
    Case(
        "special_types_args",
        lambda a: a.v2,
        lambda a: a.add.apply_async(_special_values()),
    ),
    Case("big_ints", lambda a: a.v2, lambda a: a.add.apply_async((2**64, -(2**70)))),
    Case(
        "nan_inf_floats",
        lambda a: a.v2,
        lambda a: a.add.apply_async((math.nan, math.inf, -math.inf)),
    ),
    Case(
        "unicode_nested",
        lambda a: a.v2,
        lambda a: a.add.apply_async(
            ("ü", "日本", "🎉", [1, [2, [3, {"deep": "ü"}]], {"a": {"b": {"c": []}}}]),
            kwargs={
                "ü": {"日本": ["🎉", {"x": None, "t": True, "f": 1.5}]},
                "empty": {},
            },
        ),
    ),
    Case(
        "compression_zlib",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), compression="zlib"),
    ),
    Case(
        "serializer_pickle",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), serializer="pickle"),
    ),
    Case(
        "serializer_pickle_special_types",
        lambda a: a.v2,
        lambda a: a.add.apply_async(_special_values(), serializer="pickle"),
    ),
    Case(
        "serializer_msgpack",
        lambda a: a.v2,
        lambda a: a.add.apply_async((2, 2), serializer="msgpack"),
    ),
    Case("protocol_v1_add", lambda a: a.v1, lambda a: a.add_v1.apply_async((2, 2))),
]


def decode_body(envelope: dict[str, Any]) -> bytes:
    """Serialized body bytes: base64 (virtual transport) then decompression (kombu names)."""
    raw = envelope["body"]
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if envelope["properties"].get("body_encoding") == "base64":
        data = base64.b64decode(data)
    compression = (envelope.get("headers") or {}).get("compression")
    if compression:
        if compression not in ("application/x-gzip", "gzip", "zlib"):
            raise ValueError(f"fixture uses unexpected compression {compression!r}")
        data = zlib.decompress(data)
    return data


def _dumps_or_none(value: Any) -> str | None:
    try:
        return kombu_dumps(value)
    except (TypeError, ValueError):
        return None


def expected_for(envelope_text: str) -> dict[str, Any]:
    """The ``expected.json`` content for one envelope text."""
    envelope = json.loads(envelope_text)
    headers: dict[str, Any] = envelope.get("headers") or {}
    props: dict[str, Any] = envelope["properties"]
    body = decode_body(envelope)
    # kombu's serializer registry; force=True also decodes pickle, which kombu disables by default.
    decoded = kombu_loads(
        body,
        envelope["content-type"],
        envelope["content-encoding"],
        accept=None,
        force=True,
    )

    fields: dict[str, Any]
    if "task" in headers:
        protocol = 2
        args, kwargs, embed = decoded
        fields = headers
    else:
        protocol = 1
        if not isinstance(decoded, dict):
            raise ValueError("protocol 1 body is not a dict")
        fields = decoded
        args, kwargs = decoded.get("args"), decoded.get("kwargs")
        # What celery.worker.strategy.hybrid_to_proto2 builds from a v1 body.
        embed = {
            "callbacks": decoded.get("callbacks"),
            "errbacks": decoded.get("errbacks"),
            "chord": decoded.get("chord"),
            "chain": None,
        }

    timelimit = fields.get("timelimit")
    return {
        "celery_version": celery.__version__,
        "kombu_version": kombu.__version__,
        "protocol": protocol,
        "task": fields.get("task"),
        "id": fields.get("id"),
        "root_id": fields.get("root_id"),
        "parent_id": fields.get("parent_id"),
        "group": fields.get("group"),
        "group_index": fields.get("group_index"),
        "queue": props["delivery_info"]["routing_key"],
        "priority": props.get("priority"),
        "eta": fields.get("eta"),
        "expires": fields.get("expires"),
        "retries": fields.get("retries"),
        "timelimit": list(timelimit) if timelimit is not None else None,
        "ignore_result": fields.get("ignore_result"),
        "content_type": envelope["content-type"],
        "content_encoding": envelope["content-encoding"],
        "compression": headers.get("compression"),
        "body_b64": base64.b64encode(body).decode("ascii"),
        "args_json": _dumps_or_none(args),
        "kwargs_json": _dumps_or_none(kwargs),
        "embed_json": _dumps_or_none(embed),
        "headers_keys": sorted(headers),
    }


def capture_all() -> dict[str, str]:
    """Run every case; returns ``{fixture_name: envelope_text}`` in case order."""
    ids = IdSource()
    apps = build_apps()
    out: dict[str, str] = {}
    with deterministic_ids(ids):
        for case in CASES:
            app = case.app(apps)
            with capturing(app, deterministic_tags=True) as sink:
                case.publish(apps)
            names = case.parts or [case.name]
            if len(sink.envelopes) != len(names):
                raise RuntimeError(f"{case.name}: expected {len(names)} message(s), captured {len(sink.envelopes)}")
            for name, text in zip(names, sink.envelopes, strict=True):
                if name in out:
                    raise RuntimeError(f"duplicate fixture name {name}")
                out[name] = text
    return out


def write_fixtures(out_dir: Path, envelopes: dict[str, str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.json"):
        old.unlink()
    for name, text in envelopes.items():
        (out_dir / f"{name}.envelope.json").write_text(text, encoding="utf-8")
        expected = json.dumps(expected_for(text), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        (out_dir / f"{name}.expected.json").write_text(expected, encoding="utf-8")


def _strip_clock(doc: Any) -> Any:
    """Replace wall-clock-dependent values so two captures can be compared."""
    if isinstance(doc, dict):
        return {
            key: "<clock>" if key in CLOCK_KEYS and isinstance(value, str) else _strip_clock(value)
            for key, value in doc.items()
        }
    if isinstance(doc, list):
        return [_strip_clock(v) for v in doc]
    return doc


def check(out_dir: Path) -> int:
    """Exit status 0 when a fresh capture equals the fixtures in ``out_dir`` up to the clock."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        write_fixtures(fresh, capture_all())
        committed = sorted(p.name for p in out_dir.glob("*.json"))
        regenerated = sorted(p.name for p in fresh.glob("*.json"))
        if committed != regenerated:
            print(
                f"fixture set differs:\n  committed   {committed}\n  regenerated {regenerated}",
                file=sys.stderr,
            )
            return 1
        drift = [
            name
            for name in regenerated
            if _strip_clock(json.loads((out_dir / name).read_text(encoding="utf-8")))
            != _strip_clock(json.loads((fresh / name).read_text(encoding="utf-8")))
        ]
    if drift:
        print(f"fixtures drifted (re-run capture_golden.py): {drift}", file=sys.stderr)
        return 1
    print(f"{len(regenerated)} fixture files up to date", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare a fresh capture with --out instead of writing",
    )
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    envelopes = capture_all()
    write_fixtures(args.out, envelopes)
    for name in envelopes:
        print(f"{args.out / name}.{{envelope,expected}}.json", file=sys.stderr)
    print(
        f"wrote {len(envelopes)} cases ({2 * len(envelopes)} files) to {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
