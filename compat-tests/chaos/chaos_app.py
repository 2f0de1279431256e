"""The Celery app of the chaos suite (``scripts/chaos``), run by both kinds of Python worker:

* ``celeriac worker -A chaos_app`` (its pool children, the venv's interpreter, get ``CELERY_BROKER_URL``);
* ``celery -A chaos_app worker`` on the ``celeriac+postgresql://`` kombu transport
  (``CHAOS_BROKER_URL``; lease and redelivery limit from ``CHAOS_LEASE_SECONDS`` and
  ``CHAOS_MAX_REDELIVERIES``).

``chaos.record(seq, sleep_seconds)`` sleeps, then writes its side-effect row into ``chaos_ledger``
(``CHAOS_LEDGER_URL``, in its own transaction, ``synchronous_commit=on``), then returns ``seq``.
Each run inserts under a fresh ``run_id`` with ``on conflict do nothing``, so retrying the insert
after a broken connection (commit outcome unknown) never records one run twice. The task is
``acks_late``: a Celery worker acknowledges only after the run, so a crash redelivers rather than
loses it (with Celery's default early ack a SIGKILL would lose the running task by design).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from typing import Any

import psycopg
from celery import Celery, Task

LEDGER_RETRY_FOR = 300.0
INSERT = (
    "insert into chaos_ledger"
    " (run_id, task_id, seq, worker, pid, kind, attempt, redelivered, started, finished)"
    " values (%s, %s, %s, %s, %s, 'python', null, %s, %s, %s) on conflict (run_id) do nothing"
)

app = Celery("chaos_app", broker=os.environ.get("CHAOS_BROKER_URL"), set_as_current=True)
app.conf.update(
    task_default_queue="chaos",
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=2,
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "lease_seconds": float(os.environ.get("CHAOS_LEASE_SECONDS", "30")),
        "max_redeliveries": int(os.environ.get("CHAOS_MAX_REDELIVERIES", "3")),
        "polling_interval": 0.5,
    },
)

_ledger: tuple[int, psycopg.Connection[Any]] | None = None


def _connection() -> psycopg.Connection[Any]:
    """This process's ledger connection (a forked child opens its own)."""
    global _ledger
    if _ledger is not None and _ledger[0] == os.getpid() and not _ledger[1].closed:
        return _ledger[1]
    conn = psycopg.connect(
        os.environ["CHAOS_LEDGER_URL"],
        autocommit=True,
        connect_timeout=5,
        application_name="chaos_ledger",
        options="-c synchronous_commit=on",
    )
    _ledger = (os.getpid(), conn)
    return conn


def _forget_connection() -> None:
    global _ledger
    if _ledger is not None:
        conn = _ledger[1]
        _ledger = None
        with contextlib.suppress(psycopg.Error):
            conn.close()


@app.task(name="chaos.record", bind=True, acks_late=True)
def record(self: Task, seq: int, sleep_seconds: float) -> int:
    started = time.time()
    if sleep_seconds > 0:
        time.sleep(sleep_seconds)
    finished = time.time()
    run_id = uuid.uuid4()
    delivery_info = self.request.delivery_info or {}
    redelivered = bool(delivery_info.get("redelivered"))
    worker = str(self.request.hostname or os.environ.get("CHAOS_WORKER", "?"))
    row = (run_id, self.request.id, seq, worker, os.getpid(), redelivered, started, finished)
    deadline = time.monotonic() + LEDGER_RETRY_FOR
    while True:
        try:
            _connection().execute(INSERT, row)
            return seq
        except psycopg.Error as exc:
            _forget_connection()
            if time.monotonic() > deadline:
                raise
            print(f"chaos.record[{self.request.id}]: ledger insert failed, retrying: {exc}", file=sys.stderr)
            time.sleep(0.2)
