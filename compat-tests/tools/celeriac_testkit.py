"""Helpers for tests that run the ``celeriac`` binary against a real PostgreSQL.

* :func:`wait_for`: poll a predicate every 50 ms until it holds (the only way tests synchronise).
* :func:`database_url_for`, :func:`create_database`, :func:`drop_database`: throwaway databases on an
  admin URL (one where ``CREATE DATABASE`` works).
* :class:`Worker`: a running ``celeriac worker`` whose output goes to a log file; stopped with SIGTERM.
* :func:`run_celeriac`: run one ``celeriac`` command and return its stdout (raising with its stderr).
* :func:`stop_all`: stop processes at the end of a test, failing it with all their logs.
* :data:`SUCCEEDED`: regex for the ``Task name[id] succeeded in 0.000012s: result`` log lines.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

__all__ = [
    "POLL_INTERVAL",
    "SUCCEEDED",
    "Worker",
    "create_database",
    "database_url_for",
    "drop_database",
    "run_celeriac",
    "stop_all",
    "wait_for",
]

#: How often :func:`wait_for` re-checks its predicate, seconds.
POLL_INTERVAL = 0.05

#: ``Task examples.add[<id>] succeeded in 0.000012s: 4`` (Celery's worker log line).
SUCCEEDED = re.compile(r"Task (?P<name>\S+)\[(?P<id>[^\]]+)\] succeeded in (?P<runtime>[0-9.e-]+)s: (?P<result>.*)$")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``predicate`` every 50 ms until it returns something truthy; return that value.

    Raises :class:`TimeoutError` naming ``what`` after ``timeout`` seconds (the predicate is always
    called once more at the deadline, so a slow final poll is not reported as a timeout).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def database_url_for(admin_url: str, dbname: str) -> str:
    """``admin_url`` (``postgresql://user@host:port/postgres?...``) pointing at ``dbname`` instead."""
    parts = urlsplit(admin_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a postgresql:// URL: {admin_url!r}")
    return urlunsplit(parts._replace(path="/" + dbname))


def create_database(admin_url: str, dbname: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))


def drop_database(admin_url: str, dbname: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))


def run_celeriac(
    celeriac_bin: Path,
    *args: str,
    stdin_text: str | None = None,
    timeout: float = 60,
) -> str:
    """Run ``celeriac ARGS...``; return stdout; raise AssertionError (with stderr) on a non-zero exit."""
    proc = subprocess.run(
        [str(celeriac_bin), *args],
        input=stdin_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"celeriac {' '.join(args[:1])} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc.stdout


class LoggedProcess:
    """A subprocess whose stdout and stderr go to ``log_path``, stopped with SIGTERM."""

    STOP_TIMEOUT = 30.0
    #: What the process is, for messages.
    KIND = "process"

    def __init__(self, argv: Sequence[str], log_path: Path, **popen: Any) -> None:
        self.log_path = log_path
        self.argv = list(argv)
        self._log: IO[bytes] | None = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, **popen
        )
        self.returncode: int | None = None
        #: The exit status :meth:`stop` accepts (a process killed on purpose has another).
        self.expected_returncode = 0

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_lines(self) -> list[str]:
        return self.log().splitlines()

    def assert_running(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"{self.KIND} exited early with status {code}; log:\n{self.log()}")

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """:func:`wait_for`, failing at once (with the log) if the process has died."""

        def alive_and(predicate: Callable[[], Any] = predicate) -> Any:
            self.assert_running()
            return predicate()

        try:
            return wait_for(alive_and, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; {self.KIND} log:\n{self.log()}") from None

    def stop(self) -> int:
        """SIGTERM (warm shutdown); wait up to 30 s; assert exit status 0. Idempotent."""
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._force_kill()
                self.proc.wait()
                self._close_log()
                raise AssertionError(
                    f"{self.KIND} did not stop within {self.STOP_TIMEOUT}s of SIGTERM; log:\n{self.log()}"
                ) from None
            self._after_exit()
            self._close_log()
        assert self.returncode == self.expected_returncode, (
            f"{self.KIND} exited with status {self.returncode}; log:\n{self.log()}"
        )
        return self.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would; :meth:`stop` then accepts that exit status."""
        self.proc.kill()
        self.returncode = self.expected_returncode = self.proc.wait()
        self._close_log()

    def _force_kill(self) -> None:
        self.proc.kill()

    def _after_exit(self) -> None:
        """Clean-up after a clean exit (nothing by default)."""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Worker(LoggedProcess):
    """One ``celeriac worker`` process; stdout and stderr go to ``log_path``."""

    KIND = "celeriac worker"

    def __init__(self, celeriac_bin: Path, database_url: str, log_path: Path, args: Sequence[str]) -> None:
        super().__init__([str(celeriac_bin), "worker", "--database-url", database_url, *args], log_path)


def stop_all(processes: Sequence[LoggedProcess]) -> None:
    """Stops every process (each must exit 0 after SIGTERM); fails the test with all their logs."""
    errors: list[str] = []
    for process in processes:
        try:
            process.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)
