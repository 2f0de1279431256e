"""``celeriac.enqueue``: a task enqueued in the application's own transaction."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from celeriac import _native
from celeriac._options import encode

_SCHEMA_MISSING = {"42P01", "3F000", "42883"}  # undefined table, schema, function


def enqueue(
    conn: Any,
    name: str,
    args: Sequence[Any] | None = (),
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> str:
    """Enqueues a task on the application's own database connection, inside its current
    transaction: the task exists if and only if that transaction commits (and no worker sees it
    before). The message is built exactly as ``Client.send_task`` builds it.

    Args:
        conn: A psycopg 3 connection or cursor, a psycopg2 connection or cursor, a SQLAlchemy
            ``Connection`` or ``Session``, or a Django connection (``django.db.connection`` or
            ``connections[alias]``). Its database must hold the ``celeriac`` schema.
        name: The registered task name.
        args: Positional arguments.
        kwargs: Keyword arguments.
        **options: Any option of ``Client.send_task`` (``queue``, ``countdown``, ``eta``,
            ``expires``, ``priority``, ``task_id``, ``headers``, ``time_limit``, ...).

    Returns:
        The task id.

    Raises:
        EncodeError: a value or option that cannot be encoded (nothing was executed).
        SchemaMissingError: the ``celeriac`` schema is not in that database.
        EnqueueError: the driver raised (the original exception is the ``__cause__``). As after
            any failed statement, the application's transaction must be rolled back.
        TypeError: ``conn`` is none of the supported kinds.
    """
    message = encode(name, args, kwargs, options)
    try:
        _execute(conn, _native.MESSAGE_INSERT_SQL, message.dbapi_params())
    except TypeError:
        raise
    except Exception as exc:
        if _sqlstate(exc) in _SCHEMA_MISSING:
            raise _native.SchemaMissingError(
                "the celeriac schema is missing in the application's database; run "
                f"`celeriac migrate` (or celeriac.Client(url).migrate()) first ({exc})"
            ) from exc
        raise _native.EnqueueError(f"enqueue of {name!r} failed: {exc}") from exc
    return message.task_id or ""


def _execute(conn: Any, sql: str, params: tuple[Any, ...]) -> None:
    _refuse_async(conn)
    # SQLAlchemy Connection (any DB-API driver with the %s paramstyle: psycopg, psycopg2).
    exec_driver_sql = getattr(conn, "exec_driver_sql", None)
    if callable(exec_driver_sql):
        exec_driver_sql(sql, params)
        return
    # SQLAlchemy Session: its connection for the current transaction.
    if callable(getattr(conn, "get_bind", None)) and callable(getattr(conn, "connection", None)):
        conn.connection().exec_driver_sql(sql, params)
        return
    # DB-API connections (psycopg 3, psycopg2) and Django's connection wrapper.
    cursor_factory = getattr(conn, "cursor", None)
    if callable(cursor_factory) and not _is_async(conn):
        cursor = cursor_factory()
        try:
            _refuse_async(cursor)
            cursor.execute(sql, params)
        finally:
            cursor.close()
        return
    # A DB-API cursor.
    if callable(getattr(conn, "execute", None)) and hasattr(conn, "fetchone"):
        _refuse_async(conn)
        conn.execute(sql, params)
        return
    raise TypeError(
        "celeriac.enqueue needs a psycopg or psycopg2 connection or cursor, a SQLAlchemy "
        f"Connection or Session, or a Django connection; got {type(conn).__name__}"
    )


def _is_async(obj: Any) -> bool:
    """An asyncio driver object (psycopg's AsyncConnection/AsyncCursor, SQLAlchemy's async
    wrappers): its methods return coroutines, which would silently never run here."""
    return any(
        inspect.iscoroutinefunction(getattr(obj, name, None)) for name in ("execute", "commit")
    )


def _refuse_async(obj: Any) -> None:
    if _is_async(obj):
        raise TypeError(
            "celeriac.enqueue runs the insert synchronously; an asyncio connection or cursor "
            f"({type(obj).__name__}) is not supported: use a synchronous connection"
        )


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, looking through SQLAlchemy's and Django's wrappers."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        code = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(code, str):
            return code
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None
