"""What every enqueue path shares: the producer's ``origin`` and the message options."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Optional, TypedDict, Union

from celeriac import _native

_hostname: Optional[tuple[int, str]] = None


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
    countdown: Optional[float]
    eta: Optional[datetime]
    expires: Union[float, datetime, None]
    priority: Optional[int]
    task_id: Optional[str]
    headers: Optional[Mapping[str, Any]]
    serializer: str
    time_limit: Optional[float]
    soft_time_limit: Optional[float]
    ignore_result: bool
    shadow: Optional[str]


OPTION_NAMES = frozenset(TaskOptions.__annotations__)


def encode(
    name: str,
    args: Optional[Sequence[Any]],
    kwargs: Optional[Mapping[str, Any]],
    options: Mapping[str, Any],
) -> _native.Message:
    """Encodes one task with the worker's own codec; raises ``EncodeError`` for bad input."""
    if not isinstance(name, str):
        raise _native.EncodeError(f"task name must be a str, not {type(name).__name__}")
    unknown = set(options) - OPTION_NAMES
    if unknown:
        raise _native.EncodeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return _native.encode_task(name, args, kwargs, origin=origin(), **options)
