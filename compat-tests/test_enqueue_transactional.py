"""``celeriac.enqueue(conn, ...)``: a task enqueued in the application's own transaction.

For each kind of connection in :data:`KINDS` (psycopg 3 connection and cursor, psycopg2 connection and
cursor, SQLAlchemy ``Connection`` on ``postgresql+psycopg://`` and ``postgresql+psycopg2://``, SQLAlchemy
``Session`` on both):

* ``test_rollback_leaves_nothing_commit_leaves_one``: the message is invisible to other connections
  before the transaction ends and gone after a rollback; after a commit there is exactly one row, its
  ``task_id`` is the returned id, its columns carry the options, and kombu + Celery's worker-side
  ``Request`` decode it.
* ``test_schema_missing``: a database without celeriac's schema raises ``SchemaMissingError``
  (mentioning ``celeriac migrate``), and the application's transaction can be rolled back.
* ``test_unserializable_argument_executes_nothing``: ``EncodeError`` (also for an unknown serializer
  or option) and not a single statement executed (the transaction is still usable).

Plus: ``test_rust_worker_runs_committed_tasks`` (every kind commits one ``examples.add``; the Rust
worker runs exactly those), Django's connection (``test_django_connection``, in a subprocess because
Django's settings are configured once per process), non-connection objects raise ``TypeError``, and a
driver error becomes ``EnqueueError`` with the driver's exception as its cause.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, LiteralString

import celeriac
import psycopg
import psycopg2
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from celeriac_testkit import SUCCEEDED, Worker, create_database, database_url_for, drop_database
from kombu_decode import Decoder

DRAIN_TIMEOUT = 30.0


@dataclass
class Tx:
    """One open application transaction: ``target`` is what the application hands to ``enqueue``."""

    target: Any
    commit: Callable[[], None]
    rollback: Callable[[], None]
    #: Runs one statement in the same transaction (proves it is not aborted).
    probe: Callable[[], Any]


@contextmanager
def psycopg_tx(url: str, *, cursor: bool) -> Iterator[Tx]:
    with psycopg.connect(url) as conn:
        cur = conn.cursor()
        yield Tx(cur if cursor else conn, conn.commit, conn.rollback, lambda: conn.execute("select 1").fetchone())
        cur.close()


@contextmanager
def psycopg2_tx(url: str, *, cursor: bool) -> Iterator[Tx]:
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()

        def probe() -> Any:
            cur.execute("select 1")
            return cur.fetchone()

        yield Tx(cur if cursor else conn, conn.commit, conn.rollback, probe)
        cur.close()
    finally:
        conn.close()


def sqlalchemy_url(url: str, driver: str) -> str:
    return f"postgresql+{driver}://{url.split('://', 1)[1]}"


@contextmanager
def sqlalchemy_connection_tx(url: str, driver: str) -> Iterator[Tx]:
    engine = create_engine(sqlalchemy_url(url, driver))
    try:
        with engine.connect() as conn:
            yield Tx(conn, conn.commit, conn.rollback, lambda: conn.execute(text("select 1")).scalar())
    finally:
        engine.dispose()


@contextmanager
def sqlalchemy_session_tx(url: str, driver: str) -> Iterator[Tx]:
    engine = create_engine(sqlalchemy_url(url, driver))
    try:
        with Session(engine) as session:
            yield Tx(session, session.commit, session.rollback, lambda: session.execute(text("select 1")).scalar())
    finally:
        engine.dispose()


KINDS: dict[str, Callable[[str], Any]] = {
    "psycopg": lambda url: psycopg_tx(url, cursor=False),
    "psycopg-cursor": lambda url: psycopg_tx(url, cursor=True),
    "psycopg2": lambda url: psycopg2_tx(url, cursor=False),
    "psycopg2-cursor": lambda url: psycopg2_tx(url, cursor=True),
    "sqlalchemy-psycopg": lambda url: sqlalchemy_connection_tx(url, "psycopg"),
    "sqlalchemy-psycopg2": lambda url: sqlalchemy_connection_tx(url, "psycopg2"),
    "session-psycopg": lambda url: sqlalchemy_session_tx(url, "psycopg"),
    "session-psycopg2": lambda url: sqlalchemy_session_tx(url, "psycopg2"),
}


def scalar(url: str, query: LiteralString, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def message_count(url: str) -> int:
    return int(scalar(url, "select count(*) from celeriac.message"))


@pytest.mark.parametrize("kind", KINDS)
def test_rollback_leaves_nothing_commit_leaves_one(kind: str, database_url: str, json_decoder: Decoder) -> None:
    with KINDS[kind](database_url) as tx:
        rolled_back = celeriac.enqueue(tx.target, "examples.add", (1, 2))
        assert isinstance(rolled_back, str)
        assert rolled_back
        assert message_count(database_url) == 0, "not visible to other connections before commit"
        tx.rollback()
    assert message_count(database_url) == 0, "rolled back with the transaction"

    with KINDS[kind](database_url) as tx:
        tx.probe()  # the application's own work in the same transaction
        task_id = celeriac.enqueue(
            tx.target, "examples.add", (2, 40), priority=4, queue="orders", headers={"x-kind": kind}
        )
        assert message_count(database_url) == 0, "not visible to other connections before commit"
        tx.commit()
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "select task_id, task_name, queue, priority, leased_by, eta <= now(), payload from celeriac.message"
        ).fetchall()
    assert len(rows) == 1, "exactly one row"
    [(row_task_id, name, queue, priority, leased_by, ready, payload)] = rows
    assert (row_task_id, name, queue, priority, leased_by, ready) == (task_id, "examples.add", "orders", 4, None, True)
    assert task_id != rolled_back
    decoded = json_decoder.decode(bytes(payload).decode("utf-8"))
    assert decoded["request"]["id"] == task_id
    assert decoded["request"]["task"] == "examples.add"
    assert decoded["args"] == [2, 40]
    assert decoded["headers"]["x-kind"] == kind
    assert decoded["request"]["delivery_info"]["routing_key"] == "orders"


def test_rust_worker_runs_committed_tasks(database_url: str, celeriac_worker: Callable[..., Worker]) -> None:
    committed: dict[str, str] = {}
    for n, kind in enumerate(KINDS):
        with KINDS[kind](database_url) as tx:
            committed[celeriac.enqueue(tx.target, "examples.add", (n, 100))] = str(n + 100)
            tx.commit()
        with KINDS[kind](database_url) as tx:
            celeriac.enqueue(tx.target, "examples.add", (n, -1000))
            tx.rollback()
    assert message_count(database_url) == len(KINDS)
    worker = celeriac_worker()
    worker.wait_for(lambda: message_count(database_url) == 0, DRAIN_TIMEOUT, "celeriac.message to drain")
    worker.stop()
    done = {m["id"]: m["result"] for m in map(SUCCEEDED.search, worker.log_lines()) if m}
    assert done == committed, "exactly the committed tasks ran, each once"


@pytest.fixture(scope="module")
def bare_database_url(postgres_url: str) -> Iterator[str]:
    """One database without celeriac's schema for this module's read-only checks (nothing can be
    written to it: every enqueue there fails)."""
    dbname = f"celeriac_py_bare_{uuid.uuid4().hex}"
    create_database(postgres_url, dbname)
    yield database_url_for(postgres_url, dbname)
    drop_database(postgres_url, dbname)


@pytest.mark.parametrize("kind", KINDS)
def test_schema_missing(kind: str, bare_database_url: str) -> None:
    with KINDS[kind](bare_database_url) as tx:
        with pytest.raises(celeriac.SchemaMissingError, match="celeriac migrate") as raised:
            celeriac.enqueue(tx.target, "examples.add", (1, 2))
        assert isinstance(raised.value, celeriac.DatabaseError)
        assert raised.value.__cause__ is not None, "the driver's error is kept as the cause"
        tx.rollback()
        assert tx.probe() in (1, (1,)), "the application's connection is usable after rollback"


class RecordingConnection:
    """A DB-API connection that records every statement instead of running it."""

    def __init__(self) -> None:
        self.executed: list[tuple[str, Any]] = []

    def cursor(self) -> RecordingConnection:
        return self

    def execute(self, sql: str, params: Any = None) -> None:
        self.executed.append((sql, params))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("kind", KINDS)
def test_unserializable_argument_executes_nothing(kind: str, bare_database_url: str) -> None:
    # In a database without the schema any statement enqueue ran would fail and abort the
    # transaction, so a working probe afterwards proves none ran.
    with KINDS[kind](bare_database_url) as tx:
        with pytest.raises(celeriac.EncodeError, match=r"args\[1\]"):
            celeriac.enqueue(tx.target, "examples.add", (1, {2, 3}))
        with pytest.raises(celeriac.EncodeError, match="serializer"):
            celeriac.enqueue(tx.target, "examples.add", (1, 2), serializer="pickle")
        with pytest.raises(celeriac.EncodeError, match="unknown option"):
            celeriac.enqueue(tx.target, "examples.add", (1, 2), retry=True)
        assert tx.probe() in (1, (1,)), "the transaction is not aborted: no statement ran"
        tx.commit()


def test_encode_error_runs_no_statement_at_all(bare_database_url: str) -> None:
    recording = RecordingConnection()
    with pytest.raises(celeriac.EncodeError):
        celeriac.enqueue(recording, "examples.add", (object(),))
    assert recording.executed == []
    celeriac.enqueue(recording, "examples.add", (1, 2))
    [(sql, params)] = recording.executed
    assert sql == celeriac._native.MESSAGE_INSERT_SQL
    assert len(params) == 7
    with psycopg.connect(bare_database_url) as conn:
        with pytest.raises(celeriac.EncodeError):
            celeriac.enqueue(conn, "examples.add", ({1},))
        assert conn.info.transaction_status == TransactionStatus.IDLE, "not even BEGIN was sent"


@pytest.mark.parametrize(
    "target", [object(), None, 42, "postgresql://localhost/db", b"bytes"], ids=["object", "None", "int", "url", "bytes"]
)
def test_not_a_connection_raises_type_error(target: Any) -> None:
    with pytest.raises(TypeError, match=r"celeriac\.enqueue needs"):
        celeriac.enqueue(target, "examples.add", (1, 2))


def test_asyncio_connections_are_refused(database_url: str) -> None:
    """An asyncio driver's methods return coroutines: running them synchronously would silently
    enqueue nothing, so enqueue refuses them before executing anything."""

    async def attempt() -> int:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            with pytest.raises(TypeError, match="asyncio connection or cursor"):
                celeriac.enqueue(conn, "examples.add", (1, 2))
            with pytest.raises(TypeError, match="asyncio connection or cursor"):
                celeriac.enqueue(conn.cursor(), "examples.add", (1, 2))
            await conn.commit()
            cursor = await conn.execute("select count(*) from celeriac.message")
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

    assert asyncio.run(attempt()) == 0


def test_driver_error_becomes_enqueue_error(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        with pytest.raises(celeriac.EnqueueError, match=r"examples\.add") as raised:
            celeriac.enqueue(conn, "examples.add", (1, 2))
        assert isinstance(raised.value.__cause__, psycopg.errors.InFailedSqlTransaction)
        assert not isinstance(raised.value, celeriac.SchemaMissingError)
        conn.rollback()
        celeriac.enqueue(conn, "examples.add", (1, 2))
        conn.commit()
    assert message_count(database_url) == 1


DJANGO_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from urllib.parse import urlsplit

    import django
    from django.conf import settings


    def database(url):
        parts = urlsplit(url)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parts.path.lstrip("/"),
            "USER": parts.username or "",
            "PASSWORD": parts.password or "",
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }


    settings.configure(DATABASES={"default": database(sys.argv[1]), "bare": database(sys.argv[2])}, USE_TZ=True)
    django.setup()

    from django.db import connection, connections, transaction

    import celeriac


    class Rollback(Exception):
        pass


    out = {}
    try:
        with transaction.atomic():
            out["rolled_back"] = celeriac.enqueue(connection, "examples.add", (1, 2))
            raise Rollback
    except Rollback:
        pass
    with transaction.atomic():
        out["committed"] = celeriac.enqueue(connections["default"], "examples.add", (3, 4), priority=2)
        with connection.cursor() as cursor:
            cursor.execute("select count(*) from celeriac.message")
            out["visible_inside"] = cursor.fetchone()[0]
    out["autocommit"] = celeriac.enqueue(connection, "examples.add", (5, 6))
    try:
        with transaction.atomic(using="bare"):
            celeriac.enqueue(connections["bare"], "examples.add", (7, 8))
    except celeriac.SchemaMissingError as exc:
        out["bare_error"] = str(exc)
    print(json.dumps(out))
    """
)


def test_django_connection(
    database_url: str, unmigrated_database_url: str, json_decoder: Decoder, celeriac_worker: Callable[..., Worker]
) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", DJANGO_SCRIPT, database_url, unmigrated_database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["visible_inside"] == 1, "the enqueue ran on Django's connection, inside its transaction"
    assert "celeriac migrate" in out["bare_error"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = dict(conn.execute("select task_id, priority from celeriac.message").fetchall())
        payloads = [bytes(p).decode() for (p,) in conn.execute("select payload from celeriac.message")]
    assert rows == {out["committed"]: 2, out["autocommit"]: 0}, "the atomic block's and the autocommit enqueue"
    assert out["rolled_back"] not in rows
    for payload in payloads:
        assert json_decoder.decode(payload)["request"]["id"] in rows
    worker = celeriac_worker()
    worker.wait_for(lambda: message_count(database_url) == 0, DRAIN_TIMEOUT, "celeriac.message to drain")
    worker.stop()
    done = {m["id"]: m["result"] for m in map(SUCCEEDED.search, worker.log_lines()) if m}
    assert done == {out["committed"]: "7", out["autocommit"]: "11"}
