"""Capture the exact envelope text real Celery/kombu would store for a publish.

Celery publishes through kombu. On every *virtual* kombu transport (memory, Redis, SQLAlchemy,
filesystem, ...) ``virtual.Channel.basic_publish`` augments the message in place (base64 body,
``body_encoding``, ``delivery_tag``, ``delivery_info``) and then calls the transport's ``_put``.
kombu's SQLAlchemy transport stores ``json.dumps(message)`` (stdlib json, default separators and
``ensure_ascii=True``) in ``kombu_message.payload``: that text is what celeriac consumes.

This module builds a real Celery app on the in-memory transport (``memory://``) and replaces
``kombu.transport.memory.Channel._put`` while capturing, so each publish yields exactly the text the
SQLAlchemy transport would have written, and nothing is queued in memory.

Typical use::

    app = make_app()
    add = register_task(app, "tasks.add")
    [envelope] = capture(app, lambda: add.apply_async((2, 2)))
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kombu.transport.memory as kombu_memory
from celery import Celery, Task

# Make "import celery_capture" work for siblings run as scripts and for pytest.
TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent.parent
if str(TOOLS_DIR) not in sys.path:
    sys.path.insert(0, str(TOOLS_DIR))

__all__ = [
    "REPO_ROOT",
    "Capture",
    "capture",
    "capturing",
    "envelope_text",
    "make_app",
    "register_task",
]

#: Serializes the stored payload exactly like ``kombu.transport.sqlalchemy.Channel._put``
#: (``from json import dumps``; ``dumps(payload)`` with all defaults).
envelope_text: Callable[[Any], str] = json.dumps

_ORIGINAL_PUT = kombu_memory.Channel._put
_lock = threading.RLock()
_sinks: list[Callable[[str, dict[str, Any]], None]] = []


def _capturing_put(self: kombu_memory.Channel, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
    if not _sinks:
        _ORIGINAL_PUT(self, queue, message, **kwargs)
        return
    _sinks[-1](queue, message)


def make_app(
    protocol: int = 2,
    *,
    main: str = "proj",
    broker: str = "memory://",
    **conf: Any,
) -> Celery:
    """A real Celery app publishing to kombu's in-memory transport.

    ``protocol`` is ``task_protocol`` (2 = default since Celery 4, 1 = legacy dict body); any other
    keyword is set on ``app.conf`` (e.g. ``task_serializer='pickle'``, ``result_backend=...``).
    """
    app = Celery(main, broker=broker, set_as_current=False)
    app.conf.task_protocol = protocol
    if conf:
        app.conf.update(conf)
    return app


def register_task(app: Celery, name: str, **options: Any) -> Task:
    """Register a dummy task called ``name`` (its body is never run by these tools)."""

    def _dummy(*args: Any, **kwargs: Any) -> None:
        return None

    _dummy.__name__ = name.rsplit(".", 1)[-1].replace("-", "_") or "task"
    _dummy.__qualname__ = _dummy.__name__
    task: Task = app.task(name=name, shared=False, **options)(_dummy)
    return task


class Capture:
    """Collects envelope texts (or streams them to ``on_envelope``).

    With ``deterministic_tags`` the ``delivery_tag`` (kombu's ``uuid4()`` per publish) is replaced by
    ``dddddddd-0000-4000-8000-00000000000N`` so regenerated golden fixtures give small diffs; the
    shape (a version-4 UUID string) is unchanged.
    """

    def __init__(
        self,
        deterministic_tags: bool = False,
        on_envelope: Callable[[str], None] | None = None,
    ) -> None:
        self.envelopes: list[str] = []
        self.queues: list[str] = []
        self.count = 0
        self._on_envelope = on_envelope
        self._tags: Iterator[int] | None = itertools.count(1) if deterministic_tags else None

    def __call__(self, queue: str, message: dict[str, Any]) -> None:
        if self._tags is not None:
            n = next(self._tags)
            message["properties"]["delivery_tag"] = str(uuid.UUID(f"dddddddd-0000-4000-8000-{n:012d}"))
        text = envelope_text(message)
        self.count += 1
        if self._on_envelope is not None:
            self._on_envelope(text)
        else:
            self.envelopes.append(text)
            self.queues.append(queue)


@contextmanager
def capturing(
    app: Celery,
    *,
    deterministic_tags: bool = False,
    on_envelope: Callable[[str], None] | None = None,
) -> Iterator[Capture]:
    """Context manager: every publish inside goes to the returned :class:`Capture`.

    With ``on_envelope`` each text is handed to it as soon as it is published (nothing is kept).
    """
    if not str(app.conf.broker_url or "").startswith("memory://"):
        raise ValueError("capture needs an app whose broker is memory://")
    sink = Capture(deterministic_tags=deterministic_tags, on_envelope=on_envelope)
    with _lock:
        kombu_memory.Channel._put = _capturing_put  # type: ignore[method-assign]
        _sinks.append(sink)
        try:
            yield sink
        finally:
            _sinks.remove(sink)
            if not _sinks:
                kombu_memory.Channel._put = _ORIGINAL_PUT  # type: ignore[method-assign]


def capture(app: Celery, publish: Callable[[], object], *, deterministic_tags: bool = False) -> list[str]:
    """Run ``publish()`` (e.g. ``lambda: add.apply_async((2, 2))``) and return the envelope texts,
    in publish order, exactly as kombu's SQLAlchemy transport would store them."""
    with capturing(app, deterministic_tags=deterministic_tags) as sink:
        publish()
    return sink.envelopes
