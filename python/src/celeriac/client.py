"""``celeriac.Client``: enqueue Celery tasks into celeriac's PostgreSQL queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Union

from celeriac import _native
from celeriac._options import encode, origin

#: One item of ``Client.send_many``: an encoded ``Message`` (``Client.build``), a tuple
#: ``(name, args=(), kwargs=None, options=None)``, or a mapping with ``name`` plus ``args``,
#: ``kwargs`` and any option of ``send_task``.
TaskSpec = Union[_native.Message, Sequence[Any], Mapping[str, Any]]


class Client:
    """Sends tasks to a celeriac queue database, building each message exactly as Celery's
    ``apply_async`` would (protocol 2, JSON), so celeriac workers and Celery workers on the
    ``celeriac+postgresql://`` transport both run them.

    Thread-safe and fork-safe: one client can serve a whole process, and a forked child opens
    its own connections.

    Args:
        url: ``postgresql://user:password@host:port/dbname`` (or libpq ``key=value`` form).
        max_connections: Connections this client may open at once.
        connect_timeout: Seconds to wait for a connection before raising ``ConnectError``.
        durable: When True (the default) ``send_task`` and ``send_many`` return only once the
            messages are flushed to disk, so they survive a PostgreSQL crash. False commits
            without waiting for the flush (PostgreSQL's ``synchronous_commit = off``, for these
            transactions only): several times faster one by one, and a PostgreSQL crash (not a
            restart) can lose the last ~0.6 s of enqueues, like RabbitMQ publishing without
            confirms, Celery's default.
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 4,
        connect_timeout: float = 5.0,
        durable: bool = True,
    ):
        self._store = _native.Store(
            url, max_connections=max_connections, connect_timeout=connect_timeout
        )
        self._durable = durable
        # The `reply_to` of every message, like a Celery app's `oid`.
        self._oid = str(uuid.uuid4())

    def migrate(self) -> list[int]:
        """Creates or upgrades the ``celeriac`` schema (what ``celeriac migrate`` does).

        Idempotent and safe to run from several processes at once.

        Returns:
            The migration versions applied by this call (empty when already up to date).
        """
        return self._store.migrate()

    def check(self) -> None:
        """Raises ``ConnectError`` or ``SchemaMissingError`` unless the queue is usable."""
        self._store.check()

    def build(
        self,
        name: str,
        args: Sequence[Any] | None = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> _native.Message:
        """Encodes a task without sending it (options as for ``send_task``).

        Raises:
            EncodeError: a value or option that cannot be encoded.
        """
        return encode(name, args, kwargs, options, self._oid)

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str = "celery",
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        serializer: str = "json",
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        ignore_result: bool = False,
        shadow: str | None = None,
    ) -> str:
        """Enqueues one task, committed (durably, unless ``durable=False``) before this returns.

        Args:
            name: The registered task name, e.g. ``"proj.tasks.add"``.
            args: Positional arguments (list or tuple of JSON-serializable values; datetimes,
                dates, times, UUIDs, Decimals and bytes travel as kombu's typed markers).
            kwargs: Keyword arguments (a dict with str keys).
            queue: Queue (routing key) to put it in.
            countdown: Run no earlier than this many seconds from now.
            eta: Run no earlier than this time (naive datetimes are UTC). Not with ``countdown``.
            expires: Seconds from now, or a datetime, after which the task is discarded as
                revoked instead of run.
            priority: 0-255; higher runs first (RabbitMQ's order, not Redis's).
            task_id: The task id; a new UUID when omitted.
            headers: Extra message headers, merged as ``apply_async(headers=...)`` does.
            serializer: Only ``"json"`` (kombu's JSON) is supported.
            time_limit: Hard time limit in seconds.
            soft_time_limit: Soft time limit in seconds.
            ignore_result: Ask the worker not to store a result.
            shadow: Name shown in logs instead of ``name``.

        Returns:
            The task id (``AsyncResult(task_id, app=app)`` reads its result).

        Raises:
            EncodeError: a value or option that cannot be encoded (nothing was written).
            ConnectError: the database could not be reached.
            SchemaMissingError: the ``celeriac`` schema is missing; run ``celeriac migrate``.
            EnqueueError: the insert failed.
        """
        message = encode(
            name,
            args,
            kwargs,
            {
                "queue": queue,
                "countdown": countdown,
                "eta": eta,
                "expires": expires,
                "priority": priority,
                "task_id": task_id,
                "headers": headers,
                "serializer": serializer,
                "time_limit": time_limit,
                "soft_time_limit": soft_time_limit,
                "ignore_result": ignore_result,
                "shadow": shadow,
            },
            self._oid,
        )
        self._store.insert(message, durable=self._durable)
        return message.task_id or ""

    def send_many(self, tasks: Iterable[TaskSpec]) -> list[str]:
        """Enqueues many tasks in one transaction: all are enqueued or, on error, none. Batches
        of 100 are written (one multi-row insert each) on celeriac's I/O thread while the next
        batch is encoded; it returns after the commit (durable unless ``durable=False``).

        Args:
            tasks: ``Message`` objects from ``build``, ``(name, args, kwargs, options)`` tuples
                (trailing items optional), or mappings ``{"name": ..., "args": ..., **options}``.

        Returns:
            The task ids, in order.

        Raises:
            EncodeError: an item that cannot be encoded (nothing was written).
            ConnectError, SchemaMissingError, EnqueueError: as for ``send_task``.
        """
        ids: list[str] = []
        stream: _native.InsertStream | None = None
        pending: list[TaskSpec] = []
        written = 0
        try:
            for spec in tasks:
                pending.append(spec)
                if len(pending) == _STREAM_BATCH:
                    # Written on celeriac's I/O thread while the next batch is encoded here.
                    stream = self._write(stream, written, pending, ids)
                    written += len(pending)
                    pending = []
            if pending:
                stream = self._write(stream, written, pending, ids)
            if stream is not None:
                stream.commit()
        except BaseException:
            if stream is not None:
                stream.abort()
            raise
        return ids

    def _write(
        self,
        stream: _native.InsertStream | None,
        first_index: int,
        specs: list[TaskSpec],
        ids: list[str],
    ) -> _native.InsertStream:
        """Encodes one batch of ``send_many`` and hands it to the (new) insert stream."""
        # Plain (name, args, kwargs) tuples are encoded in one native call; the rest, and any
        # item it declines, one by one (with the full checks and error messages).
        simple = _native.encode_simple(specs, origin(), self._oid)
        batch = [
            message if message is not None else _to_message(first_index + i, spec, self._oid)
            for i, (message, spec) in enumerate(zip(simple, specs))
        ]
        ids.extend(message.task_id or "" for message in batch)
        stream = stream or self._store.begin_insert(durable=self._durable)
        stream.add(batch)
        return stream

    def revoke(
        self,
        task_ids: str | Iterable[str],
        *,
        terminate: bool = False,
        signal: str | None = None,
        expires: float | None = None,
        control_exchange: str = "celery",
    ) -> None:
        """Revokes tasks for good, as ``app.control.revoke`` does on this queue: the revocation is
        recorded (no worker starts them, even one that is down now or restarts; it lasts
        ``expires`` seconds, Celery's 3 hours by default, counted from the message's ETA when it
        is further ahead), and running workers hear it at once. ``terminate=True`` kills tasks
        that are running (with ``signal``, ``SIGTERM`` by default)."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        self._store.revoke(
            ids,
            terminate=terminate,
            signal=signal,
            expires=expires,
            namespace=control_exchange,
        )

    def close(self) -> None:
        """Closes the client's connections; later calls raise ``ConnectError``."""
        self._store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<celeriac.Client {self._store!r}>"


#: Messages per background insert batch in ``send_many``: small enough that encoding and
#: writing overlap, large enough that each statement carries many rows.
_STREAM_BATCH = 100


def _to_message(index: int, spec: TaskSpec, reply_to: str) -> _native.Message:
    if isinstance(spec, _native.Message):
        return spec
    try:
        if isinstance(spec, Mapping):
            options = dict(spec)
            name = options.pop("name")
            args = options.pop("args", ())
            kwargs = options.pop("kwargs", None)
        elif isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 4:
            name, args, kwargs, options = (*spec, *((), None, None)[len(spec) - 1 :])
            options = dict(options or {})
        else:
            raise _native.EncodeError(
                "expected a Message, a (name, args, kwargs, options) tuple or a mapping, "
                f"not {type(spec).__name__}"
            )
        return encode(name, args, kwargs, options, reply_to)
    except KeyError:
        raise _native.EncodeError(f"send_many item {index}: a mapping needs a 'name'") from None
    except _native.EncodeError as exc:
        raise _native.EncodeError(f"send_many item {index}: {exc}") from exc
