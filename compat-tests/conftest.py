"""Shared pytest setup for celeriac's Python compatibility tests.

* ``compat-tests/tools`` is importable (``import kombu_decode``, ``import celery_capture``...).
* ``fixtures_dir``: the golden Celery 5.7 fixtures (``runtime/protocol/tests/fixtures/celery-5.7``).
* ``celeriac_bin``: path of the ``celeriac`` binary, from ``CELERIAC_BIN`` or
  ``<repo>/target/debug/celeriac``. Tests using it FAIL (never skip) while it is not built.
* ``postgres_url``: an admin URL (``.../postgres``, where ``CREATE DATABASE`` works) from
  ``CELERIAC_TEST_DATABASE_URL``. Tests using it FAIL (never skip) when it is not set.
* ``database_url``: a fresh database ``celeriac_py_<uuid hex>`` with celeriac's schema migrated
  (``celeriac migrate``); dropped after the test, or kept (and its URL printed) if the test failed.
* ``unmigrated_database_url``: a fresh database WITHOUT celeriac's schema; dropped afterwards unless the
  test failed.
* ``celeriac_worker``: ``celeriac_worker(queues=..., concurrency=..., extra_args=...)`` starts
  ``celeriac worker --example-handlers`` on ``database_url`` with its log in ``tmp_path``; every
  worker still running at teardown gets SIGTERM and must exit 0 within 30 s.
* ``wait_for(predicate, timeout, what)`` (from ``celeriac_testkit``): poll every 50 ms; tests never
  synchronise with bare sleeps.
* ``celery_worker``: ``celery_worker(module, queues=..., concurrency=..., extra_args=...)`` starts a
  real Python Celery worker (``python -m celery -A module worker -P prefork``, ``tmp_path`` on
  ``PYTHONPATH``, so tests write their app module there) with its log in ``tmp_path`` and waits
  until it logs ``ready.``; every worker still running at teardown gets SIGTERM (its main process
  only) and must exit 0 within 30 s.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import pytest

COMPAT_DIR = Path(__file__).resolve().parent
REPO_ROOT = COMPAT_DIR.parent
TOOLS_DIR = COMPAT_DIR / "tools"
FIXTURES_DIR = REPO_ROOT / "runtime" / "protocol" / "tests" / "fixtures" / "celery-5.7"

if str(TOOLS_DIR) not in sys.path:
    sys.path.insert(0, str(TOOLS_DIR))

from celeriac_testkit import (  # noqa: E402 - needs TOOLS_DIR on sys.path
    Worker,
    create_database,
    database_url_for,
    drop_database,
    run_celeriac,
    stop_all,
    wait_for,
)
from celery_worker import CeleryWorker  # noqa: E402 - needs TOOLS_DIR on sys.path
from kombu_decode import Decoder  # noqa: E402 - needs TOOLS_DIR on sys.path

__all__ = ["wait_for"]

#: The workers and schedulers the tests start log at INFO (their default is WARNING, as
#: Celery's): the tests wait for ``… ready.`` and read the tasks' outcomes in their logs.
os.environ.setdefault("CELERY_WORKER_LOGLEVEL", "INFO")
os.environ.setdefault("CELERY_BEAT_LOGLEVEL", "INFO")

#: The sample project's ``proj`` and ``proj_worker`` fixtures.
pytest_plugins = ["tools.sample_proj"]

#: Per-phase reports of the running test, so fixtures can tell at teardown whether it failed.
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _test_failed(node: pytest.Item) -> bool:
    return any(report.failed for report in node.stash.get(_REPORTS, {}).values())


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def celeriac_bin() -> Path:
    path = Path(os.environ.get("CELERIAC_BIN") or REPO_ROOT / "target" / "debug" / "celeriac")
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"celeriac binary not found at {path}: run `cargo build -p celeriac` (or set CELERIAC_BIN)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("CELERIAC_TEST_DATABASE_URL")
    if not url:
        pytest.fail(
            "CELERIAC_TEST_DATABASE_URL is not set: it must be an admin URL on a PostgreSQL server where "
            "CREATE DATABASE works, e.g. postgresql://postgres@127.0.0.1:5432/postgres "
            "(`scripts/pg start DIR` prints one)",
            pytrace=False,
        )
    return url


@contextlib.contextmanager
def _scratch_database(request: pytest.FixtureRequest, postgres_url: str, prefix: str) -> Iterator[str]:
    """A fresh database for this test only; dropped afterwards unless the test failed."""
    dbname = f"{prefix}_{uuid.uuid4().hex}"
    url = database_url_for(postgres_url, dbname)
    create_database(postgres_url, dbname)
    try:
        yield url
    finally:
        if _test_failed(request.node):
            print(f"\nkept the database of failed test {request.node.nodeid}: {url}")
        else:
            drop_database(postgres_url, dbname)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, postgres_url: str, celeriac_bin: Path) -> Iterator[str]:
    """A fresh, migrated database for this test only; dropped afterwards unless the test failed."""
    with _scratch_database(request, postgres_url, "celeriac_py") as url:
        run_celeriac(celeriac_bin, "migrate", "--database-url", url)
        yield url


@pytest.fixture
def unmigrated_database_url(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    """A fresh database without celeriac's schema (``celeriac migrate`` never ran on it)."""
    with _scratch_database(request, postgres_url, "celeriac_py_bare") as url:
        yield url


@pytest.fixture
def celeriac_worker(celeriac_bin: Path, database_url: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Factory starting ``celeriac worker --example-handlers`` on this test's database."""
    workers: list[Worker] = []

    def start(
        queues: Sequence[str] = ("celery",),
        concurrency: int = 4,
        extra_args: Sequence[str] = (),
    ) -> Worker:
        n = len(workers) + 1
        args = [
            "--example-handlers",
            "-Q",
            ",".join(queues),
            "-c",
            str(concurrency),
            "--poll-interval",
            "0.2",
            "-n",
            f"pytest{n}@%h",
            *extra_args,
        ]
        worker = Worker(celeriac_bin, database_url, tmp_path / f"worker{n}.log", args)
        workers.append(worker)
        return worker

    yield start

    stop_all(workers)


@pytest.fixture(scope="session")
def json_decoder() -> Iterator[Decoder]:
    """Real kombu + Celery worker-side decoding with Celery's default ``accept_content=['json']``."""
    decoder = Decoder(["json"])
    yield decoder
    decoder.close()


@pytest.fixture
def celery_worker(database_url: str, tmp_path: Path) -> Iterator[Callable[..., CeleryWorker]]:
    """Factory starting a real Python Celery worker on an app module the test wrote into ``tmp_path``.

    ``celery_worker(module, queues=("celery",), concurrency=2, extra_args=(), wait_ready=True)``;
    the log is ``tmp_path/celeryN.log``. (``database_url`` is requested so the database outlives
    the workers.)
    """
    workers: list[CeleryWorker] = []

    def start(
        module: str,
        queues: Sequence[str] = ("celery",),
        concurrency: int = 2,
        extra_args: Sequence[str] = (),
        wait_ready: bool = True,
    ) -> CeleryWorker:
        n = len(workers) + 1
        worker = CeleryWorker(
            module,
            tmp_path,
            tmp_path / f"celery{n}.log",
            name=f"pytest-celery{n}@%h",
            queues=queues,
            concurrency=concurrency,
            extra_args=extra_args,
        )
        workers.append(worker)
        return worker.wait_ready() if wait_ready else worker

    yield start

    for worker in workers:  # all warm shutdowns at once, then wait for each
        worker.terminate()
    stop_all(workers)
