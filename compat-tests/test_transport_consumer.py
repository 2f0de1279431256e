"""The kombu transport's native ``Consumer`` on its own: timeouts Python may pass (``None``,
infinity, huge numbers), counted requeues and lease expiry while the database is unreachable,
against a real PostgreSQL."""

from __future__ import annotations

import math
import threading

import celeriac
import psycopg
import pytest
from celeriac import _native

from celeriac_testkit import wait_for


@pytest.fixture
def consumer(database_url: str) -> _native.Consumer:
    store = _native.Store(database_url, max_connections=2, connect_timeout=5.0)
    return _native.Consumer(store, "pytest-consumer", lease_seconds=5.0, max_redeliveries=1)


@pytest.mark.parametrize("timeout", [None, math.inf, 1e300])
def test_flush_without_a_time_limit(consumer: _native.Consumer, timeout: float | None) -> None:
    assert consumer.flush(timeout) is True
    consumer.close()


def test_flush_refuses_nan(consumer: _native.Consumer) -> None:
    with pytest.raises(ValueError, match="NaN"):
        consumer.flush(math.nan)
    consumer.close()


@pytest.mark.parametrize("timeout", [None, math.inf, 1e300])
def test_wait_without_a_time_limit_returns_when_woken(
    consumer: _native.Consumer, database_url: str, timeout: float | None
) -> None:
    assert consumer.claim(["celery"], 1) == []  # the queues it waits for

    def publish() -> None:
        with celeriac.Client(database_url) as client:
            client.send_task("examples.add", (1, 2))

    # The listener may wake the consumer once when it connects; then the enqueue wakes it.
    woken_by_enqueue = False
    for _ in range(3):
        thread = threading.Thread(target=publish)
        thread.start()
        assert consumer.wait(timeout) is True
        thread.join()
        if consumer.claim(["celery"], 10):
            woken_by_enqueue = True
            break
    assert woken_by_enqueue
    consumer.close()


def test_requeues_are_counted_then_dead_lettered(consumer: _native.Consumer, database_url: str) -> None:
    with celeriac.Client(database_url) as client:
        client.send_task("examples.add", (1, 2))
    [(row, attempt, redelivered, _, _, revoked)] = consumer.claim(["celery"], 1)
    assert not redelivered
    assert not revoked
    assert consumer.requeue(row, attempt) is True
    [(row2, attempt2, redelivered, _, _, _)] = consumer.claim(["celery"], 1)
    assert (row2, redelivered) == (row, True)
    # max_redeliveries=1: the second requeue ends in dead_letter.
    assert consumer.requeue(row2, attempt2) is True
    assert consumer.claim(["celery"], 1) == []
    consumer.close()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("select reason_code from celeriac.dead_letter").fetchall()
    assert rows == [("redeliveries_exhausted",)]


def test_a_lease_not_renewed_in_time_counts_as_expired(database_url: str) -> None:
    # The database refuses connections for longer than the 1 s lease: the heartbeat cannot renew
    # it, so the claimed message must not be started (the transport gives it back instead); once
    # the database answers, the heartbeat renews the lease and it is valid again.
    store = _native.Store(database_url, max_connections=2, connect_timeout=1.0)
    consumer = _native.Consumer(store, "pytest-consumer", lease_seconds=1.0)
    with celeriac.Client(database_url) as client:
        client.send_task("examples.add", (1, 2))
    [(row, attempt, _, _, _, _)] = consumer.claim(["celery"], 1)
    assert consumer.expired(row, attempt) is False
    with psycopg.connect(database_url) as conn:
        dbname = conn.execute("select current_database()").fetchone()[0]  # type: ignore[index]
    admin_url = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'alter database "{dbname}" with allow_connections false')  # type: ignore[arg-type]
        try:
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (dbname,))
            wait_for(lambda: consumer.expired(row, attempt), 10.0, "the lease to count as expired")
        finally:
            admin.execute(f'alter database "{dbname}" with allow_connections true')  # type: ignore[arg-type]
    wait_for(lambda: not consumer.expired(row, attempt), 10.0, "the lease to be renewed")
    assert consumer.restore(row, attempt) is True
    consumer.close()
