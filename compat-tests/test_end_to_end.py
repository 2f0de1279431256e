"""Real Celery producers -> PostgreSQL -> ``celeriac worker``, each test on its own database.

* ``test_worker_drains_celery_producer_messages``: 300 envelopes from ``celery_producer.py`` (a real
  Celery 5.7 app; ``examples.add`` with random ints, some ``examples.noop``, some with countdowns)
  piped into ``celeriac enqueue-envelopes -``. The worker drains ``celeriac.message``; afterwards
  its log has exactly one ``succeeded in`` line per message, every ``examples.add`` result equals
  a+b of the args in its envelope, no countdown message ran before its eta, nothing was dead-lettered.
* ``test_undecodable_messages_are_dead_lettered``: envelopes a Celery app publishes with
  ``serializer='pickle'`` and a garbage line are moved to ``celeriac.dead_letter``
  (``content_disallowed`` / ``undecodable``) with their original bytes, while a good message in
  between still succeeds.
* ``test_unregistered_task_is_dead_lettered``: ``celeriac send tasks.nope`` ends in dead_letter with
  reason ``NotRegistered('tasks.nope')``, and the worker logs Celery's "unregistered task" line.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, LiteralString

import psycopg

from celeriac_testkit import SUCCEEDED, Worker, run_celeriac
from celery_capture import capture, make_app, register_task
from kombu_decode import Decoder

TOOLS_DIR = Path(__file__).resolve().parent / "tools"
DRAIN_TIMEOUT = 30.0
MESSAGES = 300


@contextmanager
def connect(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def scalar(conn: psycopg.Connection[Any], query: LiteralString) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def queue_empty(conn: psycopg.Connection[Any]) -> bool:
    return scalar(conn, "select count(*) from celeriac.message") == 0


def dead_letter_count(conn: psycopg.Connection[Any]) -> int:
    return int(scalar(conn, "select count(*) from celeriac.dead_letter"))


def succeeded(worker: Worker) -> list[tuple[datetime, str, str, str]]:
    """(log timestamp, task name, task id, result text) of every ``succeeded in`` line."""
    found = []
    for line in worker.log_lines():
        match = SUCCEEDED.search(line)
        if match:
            stamp = datetime.fromisoformat(line.split(maxsplit=1)[0])
            found.append((stamp, match["name"], match["id"], match["result"]))
    return found


def enqueue(celeriac_bin: Path, database_url: str, lines: list[str]) -> None:
    out = run_celeriac(
        celeriac_bin,
        "enqueue-envelopes",
        "--database-url",
        database_url,
        "-",
        stdin_text="".join(f"{line}\n" for line in lines),
    )
    assert f"enqueued {len(lines)} message(s)" in out, out


def test_worker_drains_celery_producer_messages(
    celeriac_bin: Path, database_url: str, celeriac_worker: Callable[..., Worker]
) -> None:
    producer = subprocess.run(
        [
            sys.executable,
            str(TOOLS_DIR / "celery_producer.py"),
            "--count",
            str(MESSAGES),
            "--seed",
            "20261123",
            "--countdown-fraction",
            "0.05",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = producer.stdout.splitlines()
    assert len(lines) == MESSAGES

    sent: dict[str, tuple[str, list[Any], datetime | None]] = {}
    for line in lines:
        envelope = json.loads(line)
        headers = envelope["headers"]
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        eta = datetime.fromisoformat(headers["eta"]) if headers["eta"] else None
        sent[headers["id"]] = (headers["task"], args, eta)
    assert len(sent) == MESSAGES, "task ids are unique"
    names = Counter(name for name, _, _ in sent.values())
    assert set(names) == {"examples.add", "examples.noop"}
    assert any(eta is not None for _, _, eta in sent.values()), "the mix includes countdown messages"

    worker = celeriac_worker(concurrency=8)
    # Producer output goes to enqueue-envelopes' stdin unchanged.
    out = run_celeriac(
        celeriac_bin, "enqueue-envelopes", "--database-url", database_url, "-", stdin_text=producer.stdout
    )
    assert f"enqueued {MESSAGES} message(s)" in out, out

    with connect(database_url) as conn:
        worker.wait_for(lambda: queue_empty(conn), DRAIN_TIMEOUT, "celeriac.message to be drained")
        worker.stop()
        assert dead_letter_count(conn) == 0, "nothing may be dead-lettered"

    done = succeeded(worker)
    assert len(done) == MESSAGES, f"{len(done)} 'succeeded in' lines for {MESSAGES} messages"
    ids = Counter(task_id for _, _, task_id, _ in done)
    assert set(ids) == set(sent), "every sent task succeeded, and only those"
    assert max(ids.values()) == 1, "no task ran twice"
    for stamp, name, task_id, result in done:
        sent_name, args, eta = sent[task_id]
        assert name == sent_name
        if name == "examples.add":
            a, b = args
            assert result == str(a + b), f"examples.add{tuple(args)} logged {result!r}"
        else:
            assert result == "None", f"examples.noop logged {result!r}"
        if eta is not None:
            assert stamp >= eta, f"{task_id} (eta {eta.isoformat()}) finished at {stamp.isoformat()}"


def test_undecodable_messages_are_dead_lettered(
    celeriac_bin: Path, database_url: str, celeriac_worker: Callable[..., Worker]
) -> None:
    app = make_app()
    add = register_task(app, "examples.add")
    noop = register_task(app, "examples.noop")
    [pickled_add] = capture(app, lambda: add.apply_async((1, 2), serializer="pickle"))
    [good] = capture(app, lambda: add.apply_async((20, 22)))
    garbage = "garbage {not json"
    [pickled_noop] = capture(app, lambda: noop.apply_async(serializer="pickle"))
    assert json.loads(pickled_add)["content-type"] == "application/x-python-serialize"
    good_id = json.loads(good)["headers"]["id"]

    enqueue(celeriac_bin, database_url, [pickled_add, good, garbage, pickled_noop])
    worker = celeriac_worker()
    with connect(database_url) as conn:
        worker.wait_for(
            lambda: queue_empty(conn) and dead_letter_count(conn) == 3,
            DRAIN_TIMEOUT,
            "the queue to drain into 3 dead letters",
        )
        worker.stop()
        rows = conn.execute(
            "select reason_code, reason, payload, task_id, task_name, queue"
            " from celeriac.dead_letter order by message_id"
        ).fetchall()

    expected = [
        ("content_disallowed", pickled_add, json.loads(pickled_add)["headers"]["id"], "examples.add"),
        ("undecodable", garbage, None, None),
        ("content_disallowed", pickled_noop, json.loads(pickled_noop)["headers"]["id"], "examples.noop"),
    ]
    assert len(rows) == len(expected)
    for (reason_code, reason, payload, task_id, task_name, queue), (code, text, tid, name) in zip(
        rows, expected, strict=True
    ):
        assert reason_code == code, reason
        assert bytes(payload) == text.encode("utf-8"), "dead letter keeps the original bytes"
        assert task_id == tid
        assert task_name == name
        assert queue == "celery"
        assert reason, "a human-readable reason"

    done = succeeded(worker)
    assert [(name, task_id, result) for _, name, task_id, result in done] == [("examples.add", good_id, "42")]


def test_unregistered_task_is_dead_lettered(
    celeriac_bin: Path, database_url: str, celeriac_worker: Callable[..., Worker]
) -> None:
    worker = celeriac_worker()
    task_id = run_celeriac(celeriac_bin, "send", "tasks.nope", "--args", "[1]", "--database-url", database_url).strip()
    with connect(database_url) as conn:
        worker.wait_for(
            lambda: queue_empty(conn) and dead_letter_count(conn) == 1,
            DRAIN_TIMEOUT,
            "tasks.nope to be dead-lettered",
        )
        worker.stop()
        [(reason_code, reason, payload, dl_task_id, task_name)] = conn.execute(
            "select reason_code, reason, payload, task_id, task_name from celeriac.dead_letter"
        ).fetchall()

    assert reason == "NotRegistered('tasks.nope')"
    assert reason_code == "not_registered"
    assert dl_task_id == task_id
    assert task_name == "tasks.nope"
    decoder = Decoder(["json"])
    try:
        request = decoder.decode(bytes(payload).decode("utf-8"))["request"]
    finally:
        decoder.close()
    assert (request["task"], request["id"]) == ("tasks.nope", task_id), "dead letter keeps the message"
    assert succeeded(worker) == []
    # Celery logs UNKNOWN_TASK_ERROR % KeyError(name), i.e. the name in single quotes.
    assert "Received unregistered task of type 'tasks.nope'." in worker.log()
