"""``celeriac worker --metrics-port``: Prometheus metrics after a known workload, read with
``prometheus_client``'s parser, and the probes ``/healthz`` and ``/readyz``, which turns
not-ready when the database stops answering (here: the worker reaches it through a proxy the
test closes) or the schema is behind, and ready again after.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tools.celeriac_testkit import wait_for
from tools.sample_proj import RESULT_TIMEOUT, SAMPLE_PROJ, Proj, ProjWorker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = _get(port, "/metrics")
    assert status == 200, text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Proxy:
    """A TCP proxy to PostgreSQL that the test can cut (every connection closed, new ones
    refused) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.open = True
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for s in self.connections:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.connections.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.fixture
def proxy(proj: Proj) -> Iterator[Proxy]:
    parts = urlsplit(proj.database_url)
    p = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield p
    p.close()


def test_metrics_count_a_known_workload(proj: Proj, proj_worker: Callable[..., ProjWorker]) -> None:
    # Waiting in a queue no worker consumes: the per-queue gauges report it.
    idle = [proj.app.send_task("proj.tasks.add", args=(1, 1), queue="idle") for _ in range(3)]
    port = _free_port()
    worker = proj_worker(extra_args=["--metrics-port", str(port), "--metrics-host", "127.0.0.1"])
    assert [proj.get(proj.send("add", i, i)) for i in range(5)] == [0, 2, 4, 6, 8]
    failed = [proj.send("fail", "boom") for _ in range(2)]
    for result in failed:
        proj.get(result)
    assert proj.get(proj.send("retry_until", 1))["retries"] == 1
    unknown = proj.app.send_task("proj.tasks.does_not_exist")
    proj.get(unknown)
    assert unknown.state == "FAILURE"

    def settled() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        samples = _samples(port)
        done = _value(samples, "celeriac_tasks_dead_lettered_total", task="proj.tasks.does_not_exist", queue="celery")
        return samples if done == 1 and _value(samples, "celeriac_queue_ready", queue="idle") == 3 else {}

    samples: Any = wait_for(settled, RESULT_TIMEOUT, "the metrics to show the workload")
    celery = {"queue": "celery"}
    assert _value(samples, "celeriac_tasks_received_total", task="proj.tasks.add", **celery) == 5
    assert _value(samples, "celeriac_tasks_succeeded_total", task="proj.tasks.add", **celery) == 5
    assert _value(samples, "celeriac_tasks_failed_total", task="proj.tasks.fail", **celery) == 2
    assert _value(samples, "celeriac_tasks_retried_total", task="proj.tasks.retry_until", **celery) == 1
    assert _value(samples, "celeriac_tasks_succeeded_total", task="proj.tasks.retry_until", **celery) == 1
    assert _value(samples, "celeriac_tasks_received_total", task="proj.tasks.retry_until", **celery) == 2
    assert _value(samples, "celeriac_task_runtime_seconds_count", task="proj.tasks.add", **celery) == 5
    assert _value(samples, "celeriac_task_runtime_seconds_sum", task="proj.tasks.add", **celery) > 0
    assert _value(samples, "celeriac_claim_duration_seconds_count") > 0
    assert _value(samples, "celeriac_settle_duration_seconds_count") > 0
    assert _value(samples, "celeriac_leases_held") == 0
    assert _value(samples, "celeriac_pool_children") == 2
    assert _value(samples, "celeriac_queue_ready", queue="idle") == 3
    assert _value(samples, "celeriac_queue_oldest_ready_age_seconds", queue="idle") > 0
    assert ("celeriac_database_errors_total", frozenset()) in samples
    assert all(r.state == "PENDING" for r in idle)
    worker.assert_running()


def test_probes_follow_the_database_and_the_schema(
    celeriac_bin: Path, proj: Proj, proxy: Proxy, tmp_path: Path
) -> None:
    port = _free_port()
    parts = urlsplit(proj.database_url)
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
    argv = [
        str(celeriac_bin), "worker", "-A", "proj", "--database-url", via_proxy, "-c", "1", "-n", "probed@%h",
        "--metrics-port", str(port), "--heartbeat-interval", "1", "--lease-seconds", "4", "--no-listen",
    ]  # fmt: skip
    worker = ProjWorker(argv, tmp_path / "probed.log", cwd=SAMPLE_PROJ, env=proj.env)
    try:
        worker.wait_for(lambda: "ready." in worker.log(), 60, "the worker to load the app")
        assert _get(port, "/healthz") == (200, "ok\n")
        worker.wait_for(lambda: _get(port, "/readyz")[0] == 200, RESULT_TIMEOUT, "the worker to be ready")

        proxy.cut()
        _, body = worker.wait_for(
            lambda: (r := _get(port, "/readyz"))[0] == 503 and r, RESULT_TIMEOUT, "not ready without the database"
        )
        assert "database:" in body or "heartbeats:" in body, body
        assert _get(port, "/healthz") == (200, "ok\n")  # alive all the same
        proxy.restore()
        worker.wait_for(lambda: _get(port, "/readyz")[0] == 200, 60, "ready again")

        # A schema behind this build's migrations.
        with psycopg.connect(proj.database_url, autocommit=True) as conn:
            (newest,) = conn.execute("select max(version) from celeriac.schema_migration").fetchone() or (0,)
            saved = conn.execute(
                "delete from celeriac.schema_migration where version = %s returning version, name, checksum", (newest,)
            ).fetchall()
            try:
                _, body = worker.wait_for(
                    lambda: (r := _get(port, "/readyz"))[0] == 503 and r, 10, "not ready: schema behind"
                )
                assert f"needs {newest} (run celeriac migrate)" in body, body
            finally:
                conn.execute(
                    "insert into celeriac.schema_migration (version, name, checksum) values (%s, %s, %s)", saved[0]
                )
        worker.wait_for(lambda: _get(port, "/readyz")[0] == 200, RESULT_TIMEOUT, "ready again")
    finally:
        worker.stop()
