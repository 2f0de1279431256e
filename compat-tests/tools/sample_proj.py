"""The sample project (``compat-tests/sample_proj/proj``) as tests use it: :class:`Proj`, the
client side (publishes through the celeriac kombu transport, reads results with Celery's
``AsyncResult`` from a ``db+postgresql+psycopg://`` backend), and the ``proj`` and
``proj_worker`` fixtures (``celeriac worker -A proj`` started in the project, ready, stopped at
the end). ``conftest.py`` makes the fixtures available to every test module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery
from celery.result import AsyncResult

from tools.celeriac_testkit import LoggedProcess, stop_all

__all__ = ["RESULT_TIMEOUT", "SAMPLE_PROJ", "Proj", "ProjWorker", "child_pids", "proj", "proj_worker"]

SAMPLE_PROJ = Path(__file__).resolve().parents[1] / "sample_proj"
RESULT_TIMEOUT = 30


@dataclass
class Proj:
    """The client side of one test: publishes to, and reads results from, the test database."""

    app: Celery
    database_url: str
    signal_log: Path
    env: dict[str, str]

    def send(self, name: str, *args: Any, **options: Any) -> AsyncResult:
        return self.app.send_task(f"proj.tasks.{name}", args=args, **options)

    def get(self, result: AsyncResult, timeout: float = RESULT_TIMEOUT) -> Any:
        return result.get(timeout=timeout, propagate=False, interval=0.05)

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.signal_log.exists():
            return []
        lines = [json.loads(line) for line in self.signal_log.read_text().splitlines() if line]
        return [e for e in lines if event is None or e["event"] == event]

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def dead_letters(self) -> list[tuple[str, str, str]]:
        return [
            (r[0], r[1], r[2])
            for r in self.query("select task_id, reason_code, reason from celeriac.dead_letter order by id")
        ]


@pytest.fixture
def proj(database_url: str, tmp_path: Path) -> Iterator[Proj]:
    backend = "db+" + database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    app = Celery("proj-client", broker=f"celeriac+{database_url}", backend=backend)
    app.conf.update(result_extended=True, broker_connection_retry_on_startup=False)
    # Create the result tables before any pool child does (their create_all would race).
    app.backend.ResultSession().close()
    signal_log = tmp_path / "signals.jsonl"
    env = {
        **os.environ,
        "PROJ_RESULT_BACKEND": backend,
        "PROJ_SIGNAL_LOG": str(signal_log),
        "VIRTUAL_ENV": sys.prefix,
    }
    env.pop("CELERIAC_PYTHON", None)
    yield Proj(app, database_url, signal_log, env)
    app.close()
    app.backend.ResultSession().get_bind().dispose()


class ProjWorker(LoggedProcess):
    KIND = "celeriac worker -A"


@pytest.fixture
def proj_worker(celeriac_bin: Path, proj: Proj, tmp_path: Path) -> Iterator[Callable[..., ProjWorker]]:
    """Factory: ``celeriac worker -A proj`` in the sample project, started and ready."""
    workers: list[ProjWorker] = []

    def start(
        pool: str = "prefork",
        concurrency: int | None = 2,
        extra_args: Sequence[str] = (),
        app: str = "proj",
        app_first: bool = False,
        env: dict[str, str] | None = None,
        base_env: dict[str, str] | None = None,
    ) -> ProjWorker:
        n = len(workers) + 1
        common = ["--database-url", proj.database_url]
        head = ["-A", app, "worker"] if app_first else ["worker", "-A", app]
        argv = [str(celeriac_bin), *head]
        argv += [*common, "-P", pool, "--poll-interval", "0.2", "-n", f"proj{n}@%h"]
        if concurrency is not None:
            argv += ["-c", str(concurrency)]
        argv += [*extra_args]
        worker_env = {**(proj.env if base_env is None else base_env), **(env or {})}
        worker = ProjWorker(argv, tmp_path / f"proj-worker{n}.log", cwd=SAMPLE_PROJ, env=worker_env)
        workers.append(worker)
        worker.wait_for(lambda: "ready." in worker.log(), 60, "the worker to load the app")
        # scripts/test-wheels, test-old-glibc: the children must be the interpreter of the wheel's
        # venv (its version, and its executable when given).
        expected_python = os.environ.get("PROJ_EXPECT_PYTHON")
        if expected_python:
            loaded = next(line for line in worker.log().splitlines() if "app loaded" in line)
            assert f" python={expected_python} " in loaded, loaded
            expected_executable = os.environ.get("PROJ_EXPECT_EXECUTABLE")
            if expected_executable:
                assert f" executable={expected_executable} " in loaded, loaded
        return worker

    yield start
    stop_all(workers)


def child_pids(worker: LoggedProcess) -> set[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(worker.proc.pid)], capture_output=True, text=True, check=False
    )
    return {int(p) for p in out.stdout.split()}
