"""A real Python Celery worker (``python -m celery -A MODULE worker``) for end-to-end tests.

* :class:`CeleryWorker`: one worker process in its own process group (so a crash test can kill the
  main process together with its pool children); its output goes to a log file.
  :meth:`CeleryWorker.stop` sends SIGTERM to the main process only (Celery's warm shutdown: the
  pool children are the main process's business) and requires exit status 0 within 30 s.
* :func:`result_backend_url`: Celery's SQLAlchemy result backend URL (``db+postgresql+psycopg://``)
  for a ``postgresql://`` database URL.
* :func:`prepare_result_tables`: creates the result backend's tables up front, so a worker and the
  test process do not race to create them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from celeriac_testkit import LoggedProcess

__all__ = ["RECEIVED", "SUCCEEDED_PY", "CeleryWorker", "prepare_result_tables", "result_backend_url"]

#: ``[2026-01-01 00:00:00,000: INFO/ForkPoolWorker-1] Task name[id] succeeded in 0.01s: result``.
SUCCEEDED_PY = re.compile(r"Task (?P<name>\S+)\[(?P<id>[^\]]+)\] succeeded in (?P<runtime>[0-9.e-]+)s: (?P<result>.*)$")
#: ``[...: INFO/MainProcess] Task name[id] received``.
RECEIVED = re.compile(r"Task (?P<name>\S+)\[(?P<id>[^\]]+)\] received$")


def result_backend_url(database_url: str) -> str:
    """``db+postgresql+psycopg://...`` (Celery's database backend through psycopg 3)."""
    scheme, rest = database_url.split("://", 1)
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a postgresql:// URL: {database_url!r}")
    return f"db+postgresql+psycopg://{rest}"


def prepare_result_tables(database_url: str) -> None:
    """Creates ``celery_taskmeta`` and ``celery_tasksetmeta`` (what the backend does lazily)."""
    from celery.backends.database.models import ResultModelBase  # heavy: only when needed
    from sqlalchemy import create_engine  # heavy: only when needed

    engine = create_engine(result_backend_url(database_url).removeprefix("db+"))
    try:
        ResultModelBase.metadata.create_all(engine)
    finally:
        engine.dispose()


class CeleryWorker(LoggedProcess):
    """``python -m celery -A module worker -P prefork`` with ``pythonpath`` on ``PYTHONPATH``."""

    KIND = "celery worker"
    READY_TIMEOUT = 30.0

    def __init__(
        self,
        module: str,
        pythonpath: Path,
        log_path: Path,
        *,
        name: str,
        queues: Sequence[str] = ("celery",),
        concurrency: int = 2,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            module,
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "--loglevel=INFO",
            "-n",
            name,
            "-Q",
            ",".join(queues),
            *extra_args,
        ]
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), environ.get("PYTHONPATH")) if p)
        environ.update(env or {})
        super().__init__(
            argv,
            log_path,
            env=environ,
            cwd=str(pythonpath),
            start_new_session=True,  # its own process group: kill() reaches the pool children too
        )
        self.killed = False

    def succeeded(self) -> list[tuple[str, str, str]]:
        """(task name, task id, result text) of every ``succeeded in`` line, in log order."""
        found = []
        for line in self.log_lines():
            match = SUCCEEDED_PY.search(line)
            if match:
                found.append((match["name"], match["id"], match["result"]))
        return found

    def received(self) -> list[str]:
        """Task ids of every ``received`` line, in log order."""
        return [m["id"] for m in map(RECEIVED.search, self.log_lines()) if m]

    def wait_ready(self) -> CeleryWorker:
        self.wait_for(lambda: " ready." in self.log(), self.READY_TIMEOUT, "the celery worker to be ready")
        return self

    def terminate(self) -> None:
        """SIGTERM to the main process only (warm shutdown); does not wait."""
        if self.returncode is None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM to the main process; wait up to 30 s; assert exit status 0. Idempotent; nothing to
        check after :meth:`kill`."""
        if self.killed:
            return self.returncode
        return super().stop()

    def _force_kill(self) -> None:
        self._kill_group()

    def _after_exit(self) -> None:
        self._kill_group()  # leftovers only: after a clean exit the group is normally empty

    def kill(self) -> None:
        """SIGKILL to the whole process group (main process and pool children): a crash."""
        if self.returncode is None:
            self.killed = True
            self._kill_group()
            self.returncode = self.proc.wait()
            self._close_log()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
