"""What every enqueue path shares: the producer's ``origin`` and the message options."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict

from celeriac import _native

_hostname: tuple[int, str] | None = None


def origin() -> str:
    """``gen<pid>@<hostname>``, as Celery writes it (cached per process)."""
    global _hostname
    pid = os.getpid()
    if _hostname is None or _hostname[0] != pid:
        _hostname = (pid, socket.gethostname())
    return f"gen{pid}@{_hostname[1]}"


class TaskOptions(TypedDict, total=False):
    """Options of one message, named as Celery's ``apply_async`` names them."""

    queue: str
    countdown: float | None
    eta: datetime | None
    expires: float | datetime | None
    priority: int | None
    task_id: str | None
    headers: Mapping[str, Any] | None
    serializer: str
    time_limit: float | None
    soft_time_limit: float | None
    ignore_result: bool
    shadow: str | None


OPTION_NAMES = frozenset(TaskOptions.__annotations__)


def encode(
    name: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: Mapping[str, Any],
    reply_to: str | None = None,
) -> _native.Message:
    """Encodes one task with the worker's own codec; raises ``EncodeError`` for bad input.

    ``reply_to`` is the producer's id (Celery writes its app's ``oid``); a new UUID when None.
    """
    if not isinstance(name, str):
        raise _native.EncodeError(f"task name must be a str, not {type(name).__name__}")
    if not OPTION_NAMES.issuperset(options):
        unknown = sorted(set(options) - OPTION_NAMES)
        raise _native.EncodeError(f"unknown option(s): {', '.join(unknown)}")
    return _native.encode_task(name, args, kwargs, origin=origin(), reply_to=reply_to, **options)
