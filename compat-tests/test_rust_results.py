"""Results of Rust handlers, read by unmodified Celery clients (5.7 in this venv, 5.6 in
``.venv-celery56``), for each result backend celeriac writes: ``db+postgresql://`` on the queue
database (rows written with the message's deletion), ``redis://`` (a real ``redis-server``), and
``django-db`` (django-celery-results' table, migrated by Django).

The worker is the real ``celeriac`` binary with its example handlers (``examples.add``,
``examples.echo``, ``examples.fail``, ``examples.flaky``, ``examples.progress``,
``examples.sleep``); the producer and the reader are a Celery app whose broker is celeriac's kombu
transport. Also: the states the worker decides (unregistered, expired), ``ignore_result``,
``STARTED``, ``PROGRESS``, retries with backoff, max retries, and canvas (chains, callbacks,
errbacks) around Rust handlers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery, chain, chord, group, signature
from celery.canvas import xmap, xstarmap
from celery.exceptions import ChordError, TaskRevokedError
from celery.result import AsyncResult, GroupResult, result_from_tuple

from celeriac_testkit import Worker, wait_for
from tools.sample_proj import Proj, ProjWorker

REPO_ROOT = Path(__file__).resolve().parent.parent
CELERY56_PYTHON = REPO_ROOT / ".venv-celery56" / "bin" / "python"
TIMEOUT = 30.0

#: Values whose type survives kombu's JSON (and the pickle celeriac writes for Celery 5.6).
TYPED_VALUES: list[Any] = [
    4,
    2**100,
    -(2**70),
    1.5,
    "žluťoučký kůň",
    None,
    True,
    [1, [2, [3, {"a": None}]]],
    {"nested": {"list": [1, 2.5, "x"], "empty": {}}},
    dt.datetime(2026, 12, 1, 6, 30, 15, 123456, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 1, 6, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    dt.date(2026, 2, 28),
    dt.time(23, 59, 58, 1),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("3.14159265358979323846"),
    b"\x00\x01binary\xff",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(workdir: Path, *args: str, ping: Callable[[], bool]) -> Iterator[None]:
    """A throwaway ``redis-server`` (Debian's, installed by scripts/install-deps) started with
    ``args``, up once ``ping`` answers."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (scripts/install-deps installs it)")
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(ping, 10, "redis-server to answer PING")
    yield
    # Celery's AsyncResult.__del__ unsubscribes from Redis: results the tests left in reference
    # cycles are collected while the server still answers. The sockets of Celery's own Redis
    # clients are closed by that collection, not by Celery (a ResourceWarning, not ours).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    proc.terminate()
    proc.wait(10)
    log.close()


def answers(client: Any) -> Callable[[], bool]:
    import redis

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    return up


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway ``redis-server`` on a free port."""
    import redis

    port = free_port()
    client = redis.Redis(host="127.0.0.1", port=port)
    with redis_server(tmp_path_factory.mktemp("redis"), "--port", str(port), ping=answers(client)):
        yield f"redis://127.0.0.1:{port}/0"
        client.close()


@pytest.fixture(scope="session")
def rediss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A ``redis-server`` that speaks TLS only, with a certificate for 127.0.0.1 signed by a CA
    made here with ``openssl``: its port and the CA file."""
    import redis

    workdir = tmp_path_factory.mktemp("rediss")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=celeriac test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (workdir / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")  # fmt: skip
    port = free_port()
    ca = workdir / "ca.pem"
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca))
    tls = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
           "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"]  # fmt: skip
    with redis_server(workdir, *tls, ping=answers(client)):
        yield port, ca
        client.close()


#: The client apps the running test made (closed after it).
_client_apps: list[Celery] = []


def client_app(database_url: str, backend: str, **conf: Any) -> Celery:
    app = Celery("rust_results_client", broker=f"celeriac+{database_url}", backend=backend, set_as_current=False)
    app.conf.update(result_backend_always_retry=False, **conf)
    _client_apps.append(app)
    return app


@pytest.fixture(autouse=True)
def _close_client_apps() -> Iterator[None]:
    """Closes the test's client apps and their Redis connections, which Celery leaves to the
    garbage collector (whose ResourceWarning would then land in whichever test runs)."""
    yield
    # Results the test left in reference cycles unsubscribe from Redis when collected (Celery's
    # AsyncResult.__del__), on a new connection of their app's pool: they are collected here, and
    # the pools closed, so no socket is left for the collector to find in a later test. What
    # redis-py and Celery leave unclosed on the way is theirs (a ResourceWarning, not ours).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
        while _client_apps:
            app = _client_apps.pop()
            pool = getattr(getattr(app.backend, "client", None), "connection_pool", None)
            if pool is not None:
                pool.disconnect()
            app.close()
        gc.collect()


def read_with_celery56(backend: str, task_ids: list[str]) -> list[dict[str, Any]]:
    """What a Celery 5.6 client reads for ``task_ids``: state, repr of the result, exception type."""
    if not CELERY56_PYTHON.exists():
        pytest.fail(f"{CELERY56_PYTHON} is missing (scripts/python-env creates it)")
    script = """
import json, sys
from celery import Celery
from celery.result import AsyncResult, GroupResult
app = Celery("reader56", backend=sys.argv[1], set_as_current=False)
out = []
for task_id in sys.argv[2:]:
    r = AsyncResult(task_id, app=app)
    try:
        value = r.get(timeout=30, propagate=False)
    except Exception as e:
        value = e
    out.append({"state": r.state, "repr": repr(value), "type": type(value).__name__})
print(json.dumps(out))
"""
    # That venv has psycopg 3, not SQLAlchemy's default driver for postgresql:// (psycopg2).
    backend = backend.replace("db+postgresql://", "db+postgresql+psycopg://", 1)
    proc = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [str(CELERY56_PYTHON), "-c", script, backend, *task_ids], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def start_worker(celeriac_worker: Callable[..., Worker], backend: str, *extra: str) -> Worker:
    worker = celeriac_worker(extra_args=["--result-backend", backend, *extra])
    worker.wait_for(lambda: " ready." in worker.log(), TIMEOUT, "the worker to be ready")
    return worker


def check_backend(database_url: str, backend: str, celeriac_worker: Callable[..., Worker]) -> None:
    """The scenario every backend passes: values, failures, retries, worker-decided states."""
    start_worker(celeriac_worker, backend)
    app = client_app(database_url, backend)

    # Success with typed values: what the client gets back is what it sent.
    echoes = [app.send_task("examples.echo", (value,)) for value in TYPED_VALUES]
    for value, result in zip(TYPED_VALUES, echoes, strict=True):
        got = result.get(timeout=TIMEOUT)
        assert got == value, (value, got)
        assert type(got) is type(value), (value, got)
        assert result.state == "SUCCESS"
        assert isinstance(result.date_done, dt.datetime)

    # Failure: the exception type, its message and a traceback.
    failed = app.send_task("examples.fail", ("bad value 7",))
    with pytest.raises(ValueError, match="bad value 7"):
        failed.get(timeout=TIMEOUT)
    assert failed.state == "FAILURE"
    assert isinstance(failed.result, ValueError)
    assert "ValueError: bad value 7" in (failed.traceback or "")

    # Retries with Celery's backoff (1 s, then 2 s), then success; and max retries exceeded.
    flaky = app.send_task("examples.flaky", (2, 5))
    assert flaky.get(timeout=TIMEOUT) == 2
    exhausted = app.send_task("examples.flaky", (5, 1))
    with pytest.raises(Exception, match="exceeded max retries") as info:
        exhausted.get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "MaxRetriesExceededError"

    # Worker-decided states: an expired message is REVOKED, an unknown task NotRegistered.
    expired = app.send_task("examples.add", (1, 1), expires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    with pytest.raises(TaskRevokedError, match="expired"):
        expired.get(timeout=TIMEOUT)
    assert expired.state == "REVOKED"
    unknown = app.send_task("examples.no_such_task", (1,))
    with pytest.raises(Exception, match=r"examples\.no_such_task") as info:
        unknown.get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "NotRegistered"
    assert "examples.no_such_task" in str(info.value)
    with psycopg.connect(database_url) as conn:
        (kept,) = conn.execute(
            "select count(*) from celeriac.dead_letter where task_id = %s", (unknown.id,)
        ).fetchone() or (0,)
    assert kept == 1, "an unregistered task's message stays in dead_letter for a redrive"

    # A body refused by accept_content: ContentDisallowed, as Celery's pool records it.
    refused = app.send_task("examples.add", (1, 2), serializer="pickle")
    with pytest.raises(Exception, match="Refusing to deserialize untrusted content of type pickle") as info:
        refused.get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "ContentDisallowed"

    # ignore_result: nothing is stored, though the task ran (its callback did).
    ignored = app.send_task("examples.add", (2, 3), ignore_result=True)
    marker = app.send_task("examples.add", (0, 0))
    assert marker.get(timeout=TIMEOUT) == 0
    wait_for(lambda: queue_is_empty(database_url), TIMEOUT, "the queue to drain")
    assert AsyncResult(ignored.id, app=app).state == "PENDING"

    # A Celery 5.6 client reads the same results.
    ids = [echoes[0].id, echoes[1].id, echoes[9].id, echoes[13].id, echoes[14].id, failed.id, expired.id]
    read = read_with_celery56(backend, ids)
    assert [r["state"] for r in read] == ["SUCCESS"] * 5 + ["FAILURE", "REVOKED"]
    assert read[0]["repr"] == "4"
    assert read[1]["repr"] == repr(2**100)
    assert read[2]["repr"] == repr(TYPED_VALUES[9])
    assert read[3]["repr"] == repr(TYPED_VALUES[13])
    assert read[4]["repr"] == repr(TYPED_VALUES[14])
    assert read[5]["type"] == "ValueError"
    assert "bad value 7" in read[5]["repr"]
    assert read[6]["type"] == "TaskRevokedError"


def queue_is_empty(database_url: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select count(*) from celeriac.message").fetchone()
    return row is not None and row[0] == 0


def test_db_backend_on_the_queue_database(database_url: str, celeriac_worker: Callable[..., Worker]) -> None:
    backend = f"db+{database_url}"
    check_backend(database_url, backend, celeriac_worker)
    with psycopg.connect(database_url) as conn:
        # Celery's own table, created by the worker (the client never wrote): ids from its sequence.
        rows = conn.execute("select id, status, date_done from celery_taskmeta order by id").fetchall()
        assert len(rows) >= len(TYPED_VALUES) + 5
        assert all(isinstance(r[0], int) for r in rows)
        (seq,) = conn.execute("select last_value from task_id_sequence").fetchone() or (0,)
        assert seq >= max(r[0] for r in rows)


@pytest.mark.parametrize("verify", ["required", "none"])
def test_redis_backend_over_tls(
    database_url: str, rediss_server: tuple[int, Path], celeriac_worker: Callable[..., Worker], verify: str
) -> None:
    """``rediss://`` with Celery's URL parameters: the server's certificate checked against the
    given CA (``ssl_cert_reqs=required``), or not checked at all (``none``)."""
    port, ca = rediss_server
    backend = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs={verify}"
    if verify == "required":
        backend += f"&ssl_ca_certs={ca}"
    start_worker(celeriac_worker, backend)
    app = client_app(database_url, backend)
    assert app.send_task("examples.add", (20, 22)).get(timeout=TIMEOUT) == 42
    failed = app.send_task("examples.fail", ("over tls",))
    with pytest.raises(ValueError, match="over tls"):
        failed.get(timeout=TIMEOUT)


def test_redis_backend(database_url: str, redis_url: str, celeriac_worker: Callable[..., Worker]) -> None:
    check_backend(database_url, redis_url, celeriac_worker)
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = client.keys("celery-task-meta-*")
    assert keys, "results are stored under Celery's key prefix"
    ttl = client.ttl(keys[0])
    assert 0 < ttl <= 86400, "results expire after result_expires (one day)"


def test_started_and_progress_states(database_url: str, redis_url: str, celeriac_worker: Callable[..., Worker]) -> None:
    start_worker(celeriac_worker, redis_url, "--task-track-started")
    app = client_app(database_url, redis_url)
    sleeper = app.send_task("examples.sleep", (1.5,))
    wait_for(lambda: sleeper.state == "STARTED", TIMEOUT, "STARTED to be stored")
    assert sleeper.info["hostname"].startswith("pytest1@")
    assert sleeper.get(timeout=TIMEOUT) == 1.5

    progress = app.send_task("examples.progress", (200,))
    seen: list[dict[str, int]] = []

    def in_progress() -> bool:
        if progress.state == "PROGRESS":
            seen.append(progress.info)
            return True
        return False

    wait_for(in_progress, TIMEOUT, "a PROGRESS state")
    assert seen[0]["total"] == 200
    assert 1 <= seen[0]["done"] <= 200
    assert progress.get(timeout=TIMEOUT) == 200


def test_chains_callbacks_and_errbacks_around_rust_handlers(
    database_url: str, celeriac_worker: Callable[..., Worker]
) -> None:
    backend = f"db+{database_url}"
    worker = start_worker(celeriac_worker, backend)
    app = client_app(database_url, backend)
    add = signature("examples.add", app=app)

    # A chain of 100: each link gets the previous result prepended.
    links = [add.clone(args=(0, 1))] + [add.clone(args=(1,)) for _ in range(99)]
    result = chain(*links).apply_async()
    assert result.get(timeout=60) == 100
    # Parents are linked as Celery links them (root and parent ids on every message).
    assert result.parent is not None
    assert result.parent.get(timeout=TIMEOUT) == 99

    # A group of 100: the members' results, read through the GroupResult the client saved.
    saved = group(add.clone(args=(i, i)) for i in range(100)).apply_async()
    saved.save()
    restored = GroupResult.restore(saved.id, app=app)
    assert restored is not None
    assert restored.get(timeout=60) == [2 * i for i in range(100)]

    # An immutable link ignores the result.
    constant = signature("examples.add", args=(10, 10), immutable=True, app=app)
    result = chain(add.clone(args=(1, 1)), constant).apply_async()
    assert result.get(timeout=TIMEOUT) == 20

    # link: the callback gets the result; link_error: the errback gets the failed task's id,
    # and a chain stops at a failing middle task.
    echo = signature("examples.echo", app=app)
    callback_id = str(uuid.uuid4())
    ok = app.send_task("examples.add", (2, 2), link=echo.clone(task_id=callback_id))
    assert ok.get(timeout=TIMEOUT) == 4
    assert AsyncResult(callback_id, app=app).get(timeout=TIMEOUT) == 4

    errback_id = str(uuid.uuid4())
    after_id = str(uuid.uuid4())
    failing = chain(
        add.clone(args=(1, 1)),
        signature("examples.fail", args=("boom",), immutable=True, app=app).set(
            link_error=echo.clone(task_id=errback_id)
        ),
        add.clone(args=(5,), task_id=after_id),
    )
    res = failing.apply_async()
    with pytest.raises(ValueError, match="boom"):
        res.parent.get(timeout=TIMEOUT)
    failed_id = res.parent.id
    assert AsyncResult(errback_id, app=app).get(timeout=TIMEOUT) == failed_id
    wait_for(lambda: queue_is_empty(database_url), TIMEOUT, "the queue to drain")
    # The chain stops at the failed task: the later link never runs, and (Celery's
    # mark_as_failure) its result is the same failure, so res.get() raises instead of waiting.
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=TIMEOUT)
    assert AsyncResult(after_id, app=app).state == "FAILURE"
    assert not any(f"[{after_id}] received" in line for line in worker.log_lines())


def test_django_db_backend(database_url: str, celeriac_worker: Callable[..., Worker], tmp_path: Path) -> None:
    # django-celery-results' tables, made by Django's migrations on the queue database.
    settings = tmp_path / "results_settings.py"
    url = psycopg.conninfo.conninfo_to_dict(database_url)
    settings.write_text(
        "SECRET_KEY = 'x'\nUSE_TZ = True\n"
        "INSTALLED_APPS = ['django_celery_results']\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.postgresql', 'NAME': {url.get('dbname')!r}, "
        f"'USER': {url.get('user')!r}, 'PASSWORD': {url.get('password')!r}, 'HOST': {url.get('host')!r}, "
        f"'PORT': {str(url.get('port') or '')!r}}}}}\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "results_settings", "PYTHONPATH": str(tmp_path)}
    migrate = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [sys.executable, "-m", "django", "migrate", "django_celery_results", "-v", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    worker = start_worker(celeriac_worker, "django-db", "--task-track-started")
    code = """
import datetime as dt, json, sys, time, django
django.setup()
from celery import Celery, chord, signature
app = Celery("djclient", broker="celeriac+" + sys.argv[1], backend="django-db", set_as_current=False)
out = {}
def outcome(result, timeout=60):
    try:
        return ["ok", result.get(timeout=timeout)]
    except Exception as e:
        return [type(e).__name__, str(e), result.state, result.traceback or ""]
when = dt.datetime(2026, 12, 1, 6, 30, tzinfo=dt.timezone.utc)
values = [4, 2**100, "žluť", None, [1, [2, {"a": None}]], {"x": {"y": 1.5}}, when]
out["echo"] = [app.send_task("examples.echo", (v,)).get(timeout=30) == v for v in values]
out["ok"] = outcome(app.send_task("examples.add", (2, 2)))
out["bad"] = outcome(app.send_task("examples.fail", ("nope",)))
out["flaky"] = outcome(app.send_task("examples.flaky", (2, 5)))
out["exhausted"] = outcome(app.send_task("examples.flaky", (5, 1)))
past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
out["expired"] = outcome(app.send_task("examples.add", (1, 1), expires=past))
out["unknown"] = outcome(app.send_task("examples.no_such_task", (1,)))
ignored = app.send_task("examples.add", (3, 3), ignore_result=True)
sleeper = app.send_task("examples.sleep", (1.5,))
deadline = time.monotonic() + 30
while sleeper.state != "STARTED" and time.monotonic() < deadline:
    time.sleep(0.05)
out["started"] = sleeper.state
progress = app.send_task("examples.progress", (200,))
deadline = time.monotonic() + 30
while progress.state != "PROGRESS" and time.monotonic() < deadline:
    time.sleep(0.01)
out["progress"] = [progress.state, (progress.info or {}).get("total")]
out["progress_done"] = outcome(progress)
sleeper.get(timeout=30)
out["ignored"] = app.AsyncResult(ignored.id).state
add = signature("examples.add", app=app)
out["chords"] = {}
for size in (1, 10, 1000):
    counted = chord([add.clone(args=(i, i)) for i in range(size)])(signature("examples.echo", app=app))
    out["chords"][size] = [counted.id, counted.get(timeout=120) == [2 * i for i in range(size)]]
print(json.dumps(out))
"""
    proc = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [sys.executable, "-c", code, database_url], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["echo"] == [True] * 7
    assert out["ok"] == ["ok", 4]
    assert out["bad"][:3] == ["ValueError", "nope", "FAILURE"]
    assert "ValueError: nope" in out["bad"][3]
    assert out["flaky"] == ["ok", 2]
    assert out["exhausted"][0] == "MaxRetriesExceededError"
    assert out["expired"][:3] == ["TaskRevokedError", "expired", "REVOKED"]
    assert out["unknown"][0] == "NotRegistered"
    assert (out["started"], out["progress"], out["progress_done"]) == ("STARTED", ["PROGRESS", 200], ["ok", 200])
    assert out["ignored"] == "PENDING"
    # Chords counted in django-celery-results' ChordCounter (no celery.chord_unlock): each body
    # ran once, with the header's results in order.
    for size, (body_id, right) in out["chords"].items():
        assert right, size
        assert body_runs([worker], body_id) == 1, size
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select status, result, task_name, worker, task_args, content_type from django_celery_results_taskresult"
            " where task_args = '\"(2, 2)\"'"
        ).fetchone()
    assert row == ("SUCCESS", "4", "examples.add", row[3], '"(2, 2)"', "application/json")
    assert row[3].startswith("pytest1@")
    with psycopg.connect(database_url) as conn:
        (counters,) = conn.execute("select count(*) from django_celery_results_chordcounter").fetchone() or (1,)
        (unlocks,) = conn.execute(
            "select count(*) from celeriac.message where task_name = 'celery.chord_unlock'"
        ).fetchone() or (1,)
    assert (counters, unlocks) == (0, 0)


def body_runs(workers: list[Worker], body_id: str) -> int:
    """How many times the chord's body ran: its 'succeeded' log lines across the workers."""
    return sum(line.count(f"[{body_id}] succeeded") for w in workers for line in w.log_lines())


def unlock_retries(workers: list[Worker]) -> int:
    """How many times a celery.chord_unlock found its header not ready and retried."""
    return sum(1 for w in workers for line in w.log_lines() if "celery.chord_unlock[" in line and "] retry:" in line)


@pytest.mark.parametrize("counting", ["database", "chord_unlock"])
@pytest.mark.parametrize("size", [1, 10, 1000])
def test_chords_counted_each_way(
    database_url: str, unmigrated_database_url: str, celeriac_worker: Callable[..., Worker], size: int, counting: str
) -> None:
    """A chord on the database backend: Celery's producer publishes celery.chord_unlock, which the
    worker runs itself; the body runs once, with the header's results in group order. With the
    result table on the queue database the chord is counted there (the unlock waits parked and
    runs once, never retrying); in another database, the unlock checks each second as Celery's."""
    results_url = database_url if counting == "database" else unmigrated_database_url
    backend = f"db+{results_url}"
    worker = start_worker(celeriac_worker, backend)
    app = client_app(database_url, backend)
    add = signature("examples.add", app=app)
    echo = signature("examples.echo", app=app)
    result = chord([add.clone(args=(i, 0)) for i in range(size)])(echo)
    assert result.get(timeout=120) == list(range(size))
    wait_for(lambda: queue_is_empty(database_url), TIMEOUT, "the queue to drain")
    assert body_runs([worker], result.id) == 1
    with psycopg.connect(database_url) as conn:
        chords = conn.execute(
            "select remaining, released_at is not null from celeriac.chord where group_id = %s", (result.parent.id,)
        ).fetchall()
    if counting == "database":
        assert chords == [(0, True)]
        assert unlock_retries([worker]) == 0
    else:
        assert chords == []


def test_a_database_counted_chord_waits_parked_for_its_last_header_result(
    database_url: str, celeriac_worker: Callable[..., Worker]
) -> None:
    """While one header task waits on a queue no worker consumes, the chord's unlock stays parked
    (not run, not polling); the moment that task's result is stored, the unlock runs, once."""
    backend = f"db+{database_url}"
    workers = [start_worker(celeriac_worker, backend)]
    app = client_app(database_url, backend)
    add = signature("examples.add", app=app)
    header = [add.clone(args=(i, 0)) for i in range(4)] + [add.clone(args=(4, 0), queue="later")]
    result = chord(header)(signature("examples.echo", app=app))
    group_id = result.parent.id

    def remaining() -> int | None:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("select remaining from celeriac.chord where group_id = %s", (group_id,)).fetchone()
        return None if row is None else int(row[0])

    wait_for(lambda: remaining() == 1, TIMEOUT, "four of the five header results to be counted")
    with psycopg.connect(database_url) as conn:
        unlocks = conn.execute(
            "select eta > now() + interval '30 seconds', leased_by is null, attempt from celeriac.message"
            " where task_name = 'celery.chord_unlock'"
        ).fetchall()
    assert unlocks == [(True, True, 0)], "the unlock is parked, never claimed"
    assert result.state == "PENDING"

    workers.append(celeriac_worker(queues=("later",), extra_args=["--result-backend", backend]))
    assert result.get(timeout=TIMEOUT) == [0, 1, 2, 3, 4]
    assert remaining() == 0
    assert unlock_retries(workers) == 0
    wait_for(lambda: queue_is_empty(database_url), TIMEOUT, "the queue to drain")
    assert body_runs(workers, result.id) == 1


def test_chord_with_a_failing_member_fails_its_body(database_url: str, celeriac_worker: Callable[..., Worker]) -> None:
    backend = f"db+{database_url}"
    start_worker(celeriac_worker, backend)
    app = client_app(database_url, backend)
    echo = signature("examples.echo", app=app)
    errback_id = str(uuid.uuid4())
    header = [signature("examples.add", args=(1, 1), app=app), signature("examples.fail", args=("bad",), app=app)]
    body = echo.clone().set(link_error=echo.clone(task_id=errback_id))
    result = chord(header)(body)
    # Celery's get() raises the failed header member's error (the body's parent) when it sees
    # that first, else the body's own ChordError (soon stored when the chord is counted in the
    # database, as with Celery's Redis backend) ...
    with pytest.raises((ValueError, ChordError), match="bad"):
        result.get(timeout=TIMEOUT)
    # ... and the body itself fails with ChordError.
    wait_for(lambda: result.state == "FAILURE", TIMEOUT, "the body to fail")
    assert type(result.result).__name__ == "ChordError"
    assert re.search(r"Dependency \S+ raised ValueError\('bad'\)", str(result.result))
    assert AsyncResult(errback_id, app=app).get(timeout=TIMEOUT) == result.id


def test_chord_nested_in_a_chain(database_url: str, celeriac_worker: Callable[..., Worker]) -> None:
    backend = f"db+{database_url}"
    start_worker(celeriac_worker, backend)
    app = client_app(database_url, backend)
    add = signature("examples.add", app=app)
    echo = signature("examples.echo", app=app)
    # (1 + 1) then a chord whose members each get 2 prepended, then the body, then a last link.
    workflow = chain(add.clone(args=(1, 1)), chord([add.clone(args=(i,)) for i in range(5)], echo))
    assert workflow.apply_async().get(timeout=60) == [2 + i for i in range(5)]


def test_chord_counting_with_two_workers_one_killed_mid_header(
    database_url: str, celeriac_worker: Callable[..., Worker]
) -> None:
    """Two workers complete the header at once, and one is SIGKILLed half-way: the killed worker's
    leased members run again on the other, and the body still runs exactly once."""
    backend = f"db+{database_url}"
    fast = ["--lease-seconds", "2", "--heartbeat-interval", "0.5"]
    workers = [start_worker(celeriac_worker, backend, *fast) for _ in range(2)]
    app = client_app(database_url, backend)
    sleep = signature("examples.sleep", app=app)
    echo = signature("examples.echo", app=app)
    result = chord([sleep.clone(args=(0.02,)) for _ in range(200)])(echo)

    def both_ran_some() -> bool:
        return all(w.log().count("examples.sleep[") >= 10 for w in workers)

    wait_for(both_ran_some, TIMEOUT, "both workers to run header tasks")
    workers[1].kill()
    assert result.get(timeout=120) == [0.02] * 200
    wait_for(lambda: queue_is_empty(database_url), TIMEOUT, "the queue to drain")
    assert body_runs(workers, result.id) == 1


def test_rust_and_python_tasks_mixed_in_chains_and_chords(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    """With -A, Rust handlers store their results in the app's backend (result_extended on), and
    chain and chord freely with the app's Python tasks; the chord's unlock is the app's own."""
    worker = proj_worker(extra_args=["--example-handlers"])
    app = proj.app
    rust_add = signature("examples.add", app=app)
    python_add = signature("proj.tasks.add", app=app)
    links = [rust_add.clone(args=(0, 1))]
    links += [(python_add if i % 2 else rust_add).clone(args=(1,)) for i in range(99)]
    result = chain(*links).apply_async()
    assert result.get(timeout=120) == 100
    # A Rust handler's row carries the extended columns, as Celery writes them.
    rows = proj.query(
        "select name, worker, queue, retries from celery_taskmeta where task_id = %s", result.parent.parent.id
    )
    assert rows[0][0] == "examples.add"
    assert rows[0][1].startswith("proj1@")
    assert rows[0][2:] == ("celery", 0)

    header = [(python_add if i % 2 else rust_add).clone(args=(i, i)) for i in range(20)]
    body = signature("examples.echo", app=app)
    chord_result = chord(header)(body)
    assert chord_result.get(timeout=120) == [2 * i for i in range(20)]
    assert body_runs([worker], chord_result.id) == 1


@pytest.mark.parametrize("size", [1, 10, 1000])
def test_redis_counted_chords_from_a_celery_producer(
    database_url: str, redis_url: str, celeriac_worker: Callable[..., Worker], size: int
) -> None:
    """Celery's Redis backend counts a chord in Redis keys (no celery.chord_unlock): two workers
    record their header parts there as Celery 5.7 does, and the one that completes the chord
    publishes the body, once."""
    workers = [start_worker(celeriac_worker, redis_url) for _ in range(2)]
    app = client_app(database_url, redis_url)
    add = signature("examples.add", app=app)
    echo = signature("examples.echo", app=app)
    result = chord([add.clone(args=(i, 0)) for i in range(size)])(echo)
    assert result.get(timeout=120) == list(range(size))
    wait_for(lambda: queue_is_empty(database_url), TIMEOUT, "the queue to drain")
    assert body_runs(workers, result.id) == 1
    if size != 10:
        return

    header = [add.clone(args=(1, 1)), signature("examples.fail", args=("bad",), app=app)]
    failed = chord(header)(echo)
    with pytest.raises(ValueError, match="bad"):
        failed.get(timeout=TIMEOUT)
    wait_for(lambda: failed.state == "FAILURE", TIMEOUT, "the body to fail")
    assert type(failed.result).__name__ == "ChordError"


def test_canvas_builtins_run_without_python(database_url: str, celeriac_worker: Callable[..., Worker]) -> None:
    """celery.map, celery.starmap, celery.chunks, celery.group, celery.chord and celery.chain, as
    Celery's client sends them, run by the worker over Rust handlers (no app, no Python)."""
    backend = f"db+{database_url}"
    start_worker(celeriac_worker, backend)
    app = client_app(database_url, backend)
    echo = signature("examples.echo", app=app)
    add = signature("examples.add", app=app)

    assert xmap(echo, [1, "two", [3]], app=app).apply_async().get(timeout=TIMEOUT) == [1, "two", [3]]
    assert xstarmap(add, [(1, 2), (3, 4)], app=app).apply_async().get(timeout=TIMEOUT) == [3, 7]
    failed = xstarmap(signature("examples.fail", app=app), [("first",), ("second",)], app=app).apply_async()
    with pytest.raises(ValueError, match="first"):
        failed.get(timeout=TIMEOUT)
    missing = xmap(signature("examples.no_such_task", app=app), [1], app=app).apply_async()
    with pytest.raises(Exception, match=r"examples\.no_such_task") as info:
        missing.get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "NotRegistered"

    # celery.chunks as a task: a group of celery.starmap, whose result tuple the client rebuilds.
    chunked = app.send_task("celery.chunks", (add, [(i, i) for i in range(7)], 3))
    group_result = result_from_tuple(chunked.get(timeout=TIMEOUT), app=app)
    assert isinstance(group_result, GroupResult)
    assert group_result.get(timeout=TIMEOUT) == [[0, 2, 4], [6, 8, 10], [12]]

    # celery.group as a task: partial args go first, every member carries the group's id.
    members = [add.clone(args=(i,)) for i in range(3)]
    group_id = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in members]
    for member, task_id in zip(members, ids, strict=True):
        member.set(task_id=task_id)
    as_tuple = [[group_id, None], [[[task_id, None], None] for task_id in ids]]
    grouped = app.send_task("celery.group", (members, as_tuple, group_id, [10]))
    assert grouped.get(timeout=TIMEOUT) == as_tuple
    assert [AsyncResult(task_id, app=app).get(timeout=TIMEOUT) for task_id in ids] == [10, 11, 12]

    # celery.chord as a task: the body runs once the header is done.
    header = group([add.clone(args=(i, i)) for i in range(4)])
    chorded = app.send_task("celery.chord", (header, echo))
    body = result_from_tuple(chorded.get(timeout=TIMEOUT), app=app)
    assert body.get(timeout=TIMEOUT) == [0, 2, 4, 6]

    chained = app.send_task("celery.chain", ())
    with pytest.raises(NotImplementedError, match="chain is not a real task"):
        chained.get(timeout=TIMEOUT)


def test_a_chord_header_holding_a_group(database_url: str, celeriac_worker: Callable[..., Worker]) -> None:
    """A group inside a chord's header: Celery 5.7's producer unrolls it into the header (its
    unlock message lists the group's tasks among the others, in Celery's order), and the body gets
    every member's result once."""
    backend = f"db+{database_url}"
    worker = start_worker(celeriac_worker, backend)
    app = client_app(database_url, backend)
    add = signature("examples.add", app=app)
    header = [add.clone(args=(1, 1)), group(add.clone(args=(2, 2)), add.clone(args=(3, 3))), add.clone(args=(4, 4))]
    result = chord(header)(signature("examples.echo", app=app))
    assert sorted(result.get(timeout=TIMEOUT)) == [2, 4, 6, 8]
    assert unlock_retries([worker]) == 0
    assert body_runs([worker], result.id) == 1


def test_links_published_by_rust_handlers_follow_the_apps_routes(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    """A chain link a Rust handler publishes goes where Celery would send it: the task's own
    ``queue`` (here from ``task_annotations``), then ``task_routes`` (an exact name, then a
    glob), then ``task_default_queue``."""
    settings = {
        "task_routes": [{"examples.echo": "routed"}, {"examples.sl*": {"queue": "globbed"}}],
        "task_annotations": {"proj.tasks.add": {"queue": "annotated"}},
    }
    proj_worker(
        extra_args=["--example-handlers", "-Q", "celery,routed,globbed,annotated"],
        env={"PROJ_RATE_SETTINGS": json.dumps(settings)},
    )
    app = proj.app
    rust_add = signature("examples.add", app=app)
    links = [
        rust_add.clone(args=(0, 0)),
        signature("examples.echo", app=app),
        signature("proj.tasks.add", args=(1,), app=app),
        rust_add.clone(args=(1,)),
        signature("examples.sleep", args=(0.0,), app=app, immutable=True),
    ]
    result = chain(*links).apply_async()
    assert result.get(timeout=60) == 0.0
    ids = []
    node = result
    while node is not None:
        ids.append(node.id)
        node = node.parent
    ids.reverse()
    queues = {
        task_id: queue
        for task_id, queue in proj.query("select task_id, queue from celery_taskmeta where task_id = any(%s)", ids)
    }
    # The first link is the client's; Python's proj.tasks.add publishes the next through Celery.
    assert [queues.get(task_id) for task_id in ids] == ["celery", "routed", "annotated", "celery", "globbed"]


def test_a_task_whose_workers_all_die_fails_with_worker_lost_error(
    database_url: str, celeriac_worker: Callable[..., Worker]
) -> None:
    """A message whose worker dies while running it, past --max-redeliveries (0 here: the first
    death), goes to dead_letter, and its result is Celery's WorkerLostError, so the client's
    get() fails instead of waiting forever."""
    backend = f"db+{database_url}"
    fast = ["--lease-seconds", "2", "--heartbeat-interval", "0.5", "--max-redeliveries", "0"]
    doomed = start_worker(celeriac_worker, backend, *fast)
    app = client_app(database_url, backend)
    result = app.send_task("examples.sleep", (600,))
    doomed.wait_for(lambda: f"[{result.id}] received" in doomed.log(), TIMEOUT, "the task to start")
    doomed.kill()
    start_worker(celeriac_worker, backend, *fast)
    with pytest.raises(Exception, match="Worker exited prematurely") as info:
        result.get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "WorkerLostError"
    with psycopg.connect(database_url) as conn:
        (reason,) = conn.execute(
            "select reason_code from celeriac.dead_letter where task_id = %s", (result.id,)
        ).fetchone() or ("",)
    assert reason == "redeliveries_exhausted"


def test_an_errback_taking_request_exc_traceback_gets_them_from_a_failed_rust_handler(
    proj: Proj, proj_worker: Callable[..., ProjWorker]
) -> None:
    """Celery calls an errback whose function takes (request, exc, traceback) in-process, with
    the failed task's request, exception and traceback, then the signature's own args; for a
    Rust handler's failure a pool child makes the same call. Errbacks taking the task id, Python
    or Rust, are published with it."""
    proj_worker(extra_args=["--example-handlers"])
    app = proj.app
    id_errback_id = str(uuid.uuid4())
    failing = signature("examples.fail", args=("rusty",), app=app).set(
        link_error=[
            signature("proj.tasks.on_error", kwargs={"tag": "first"}, app=app),
            signature("proj.tasks.on_error_id", app=app),
            signature("examples.echo", app=app, task_id=id_errback_id),
        ]
    )
    result = failing.apply_async()
    with pytest.raises(ValueError, match="rusty"):
        result.get(timeout=60)
    assert AsyncResult(id_errback_id, app=app).get(timeout=60) == result.id

    def called() -> list[dict[str, Any]]:
        return proj.events("errback")

    wait_for(lambda: len(called()) == 1, 60, "the errback to be called")
    (call,) = called()
    assert call["tag"] == "first"
    assert (call["request_id"], call["request_task"], call["request_args"]) == (result.id, "examples.fail", ["rusty"])
    assert (call["exc_type"], call["exc_args"]) == ("ValueError", ["rusty"])
    assert "ValueError: rusty" in call["traceback"]
    # A Python errback taking the id is published with it, as Celery publishes it.
    wait_for(lambda: len(proj.events("errback_id")) == 1, 60, "the id errback to run")
    assert proj.events("errback_id")[0]["task_id"] == result.id
