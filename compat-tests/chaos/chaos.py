"""The chaos suite: proof of celeriac's delivery guarantees under faults (``scripts/chaos``).

Every scenario gets a fresh database on one throwaway PostgreSQL cluster started by the suite
(``scripts/pg start``, ``PG_DURABLE=1``: fsync and synchronous commits on, so an immediate-mode
restart is a real crash). It enqueues ``chaos.record(seq, sleep_seconds)`` tasks, runs REAL
workers on them -- ``chaos_worker`` (the ``celeriac`` CLI plus a Rust ``chaos.record`` handler,
``runtime/worker/examples/chaos_worker.rs``), ``celeriac worker -A chaos_app`` (the Python task in
its pool of Python children, prefork) and ``celery -A chaos_app worker`` (Celery 5.7 on the
``celeriac+postgresql://`` kombu transport) -- injects faults, waits for the queue to drain, stops
the workers with SIGTERM (each must exit 0) and compares what was enqueued with the side-effect
ledger every run writes (``chaos_ledger``, one row per run, in its own transaction). Leases are
4 s with heartbeats every second (``--lease-seconds``/``--heartbeat-interval``, the transport's
``lease_seconds``), and ``--max-redeliveries`` is 50 so that repeated kills do not dead-letter.

* **lost**: an enqueued task with no ledger row (dead-lettered tasks are listed separately and
  fail the scenario too: none is expected);
* **duplicates**: tasks with more than one ledger row;
* **explained**: duplicates whose extra runs have a cause the guarantees allow: the earlier run's
  worker was SIGKILLed within ``KILL_WINDOW`` of the run's end (its ack died with it), the run
  overlapped the seconds before an immediate-mode PostgreSQL restart (acks and claims commit
  asynchronously; a message whose claim the crash undid may also start a little later, out of a
  worker's prefetch, and then its next run is a first delivery), or the zombie started it before
  it was resumed (its lease had run out).

A scenario fails on anything lost, dead-lettered or stuck in the queue, on an unexplained
duplicate, on a worker that exits without being killed (or does not exit 0 after SIGTERM), on a
zombie completion the fence did not refuse, and on a timeout.

Scenarios (``--list``):

* ``kill-rust``, ``kill-python``, ``kill-mixed``: workers SIGKILLed at random moments (every
  0.5-2 s; short mode 4 kills, long mode until the queue is empty) while draining, each restarted
  at once: three ``chaos_worker -c 4``; two ``celeriac worker -A chaos_app -c 2``; one of each
  plus two ``celery worker -c 2`` on the same queue. A celeriac worker is killed alone (its pool
  children must die with it, checked), a Celery worker with its process group.
* ``kill-rate-limited``: as ``kill-rust`` with two ``chaos_worker`` and one ``celeriac worker
  -A``, ``chaos.record`` limited fleet-wide (``celeriac rate-limit set``) to the rate that drains
  the queue in the mode's drain target: workers die holding, parking and taking back
  rate-limited messages.
* ``pg-restart-fast``, ``pg-restart-immediate``: ``pg_ctl -m fast|immediate restart`` (same port;
  short mode once, long mode three times) while two ``chaos_worker``, one ``celeriac worker -A``
  and one ``celery worker`` drain; ``pg-terminate``: a random backend of theirs
  (``application_name = 'celeriac'``) is killed with ``pg_terminate_backend`` every 0.1-0.5 s.
  No worker is restarted: all must stay alive.
* ``outage``: the server is stopped for longer than the lease (10 s with a 4 s lease; long mode
  60 s with the default 30 s lease) while tasks of 0.2-2 s are running, then started on the same
  port. No worker was killed, so there must be no duplicate at all.
* ``zombie-rust`` (long mode also ``zombie-python``, ``zombie-celery``): a worker (``-c 2``,
  prefetch 1) running 2 s tasks gets SIGSTOP (its process group: a Celery worker with its pool;
  celeriac's pool children run in process groups of their own, so they finish their jobs and the
  results wait for the paused worker) and stays stopped past its lease; a Rust worker starts and
  takes its messages over; SIGCONT once it holds one of them. The zombie's late completions must
  be refused by the lease fence: in every snapshot, a task whose only ledger row is the zombie's
  stale run must still be in the queue. Runs the zombie started before SIGCONT are explained;
  anything it starts afterwards is an ordinary run.
* ``...+pgbouncer``: the same scenario with the workers connected through PgBouncer in
  transaction mode (``pool_mode = transaction``, no ``max_prepared_statements``: any PgBouncer
  version) with ``?pooler=transaction`` on their URL, so they use no session state (unnamed
  statements, no LISTEN); the ledger still writes to PostgreSQL directly. Short mode runs
  ``kill-mixed+pgbouncer``; long mode runs every scenario behind it.

Modes: ``--short`` (the default; ``CHAOS_MODE=short``) runs each scenario once with a few hundred
tasks in about three minutes; ``--long`` (``CHAOS_MODE=long``) runs 20 rounds of 10,000 tasks for
the kill scenarios and 10,000 tasks (outage: 2,000 tasks of 0.2-2 s) for the others, with a 60 s
outage. ``--scenario a,b`` picks scenarios, ``--rounds`` and ``--tasks`` override the mode,
``--seed`` replays the random choices, ``--keep`` keeps the work directory (logs, cluster).

Binaries: ``CELERIAC_BIN`` (default ``target/debug/celeriac``) and ``CHAOS_WORKER_BIN`` (default
``target/debug/examples/chaos_worker``); ``scripts/chaos`` builds them.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, LiteralString
from urllib.parse import unquote, urlsplit, urlunsplit

import celeriac
import psycopg
from psycopg import sql

CHAOS_DIR = Path(__file__).resolve().parent
REPO = CHAOS_DIR.parent.parent
QUEUE = "chaos"
TASK = "chaos.record"
#: How often conditions are re-checked, seconds.
POLL = 0.05
#: A run of a SIGKILLed worker that ended this long before (or after: children die a moment after
#: their worker) the kill may have lost its acknowledgement with the process.
KILL_WINDOW = (5.0, 2.0)
#: A run that overlapped the seconds before an immediate-mode restart (it ended at most this long
#: before the crash and started at most this long after it) may have lost its acknowledgement or
#: its claim: both commit asynchronously (the WAL writer flushes them within ~0.6 s).
CRASH_WINDOW = (5.0, 1.0)
#: A message a worker claimed before the crash may start later than ``CRASH_WINDOW`` allows: it
#: waited in the worker's prefetch (a Celery worker holds 4 per pool slot) behind tasks slowed
#: by the restart. Such a run is allowed up to this many of the run's longest tasks after the
#: server was back, when the next run of the task is a first delivery (the claim was undone).
PREFETCH_HOLD_TASKS = 4
#: Redeliveries allowed before the rescuer dead-letters (repeated kills must not dead-letter).
MAX_REDELIVERIES = 50
#: Worker application_name (celeriac's default) whose backends pg-terminate kills.
WORKER_APPLICATION_NAME = "celeriac"

LEDGER_DDL = """
create table chaos_ledger (
    run_id uuid primary key,
    task_id text not null,
    seq integer not null,
    worker text not null,
    pid integer not null,
    kind text not null,
    attempt integer,
    redelivered boolean not null,
    started double precision not null,
    finished double precision not null,
    recorded timestamptz not null default clock_timestamp()
);
create index on chaos_ledger (task_id);
"""


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Mode:
    """How big each scenario is."""

    name: str
    kill_tasks: int
    kill_rounds: int
    tasks: int
    rounds: int
    outage_tasks: int
    #: Lease and heartbeat of every scenario but the outage.
    lease: float
    heartbeat: float
    outage: float
    outage_lease: float
    outage_heartbeat: float
    #: Seconds between two kills (uniform).
    kill_gap: tuple[float, float]
    max_kills: int
    #: PostgreSQL restarts per pg-restart run.
    restarts: int
    #: Task sleeps are chosen so that a fleet would drain in about this long without faults.
    drain_target: float
    drain_timeout: float
    pgbouncer: tuple[str, ...]
    zombies: tuple[str, ...]


SHORT = Mode(
    name="short",
    kill_tasks=500,
    kill_rounds=1,
    tasks=500,
    rounds=1,
    outage_tasks=80,
    lease=4.0,
    heartbeat=1.0,
    outage=10.0,
    outage_lease=4.0,
    outage_heartbeat=1.0,
    kill_gap=(0.5, 2.0),
    max_kills=4,
    restarts=1,
    drain_target=4.0,
    drain_timeout=120.0,
    pgbouncer=("kill-mixed",),
    zombies=("rust",),
)
LONG = Mode(
    name="long",
    kill_tasks=10_000,
    kill_rounds=20,
    tasks=10_000,
    rounds=1,
    outage_tasks=2_000,
    lease=4.0,
    heartbeat=1.0,
    outage=60.0,
    outage_lease=30.0,
    outage_heartbeat=5.0,
    kill_gap=(0.5, 3.0),
    max_kills=1_000_000,
    restarts=3,
    drain_target=60.0,
    drain_timeout=1800.0,
    pgbouncer=("*",),
    zombies=("rust", "python", "celery"),
)

#: Slots each kind of worker brings (its -c).
CONCURRENCY = {"rust": 4, "python": 2, "celery": 2}


# --------------------------------------------------------------------------------------------
# Processes


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children[stat[1]].append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_postgres(argv: Sequence[str]) -> list[str]:
    """``argv`` run as the ``postgres`` user when we are root (the server refuses root)."""
    if os.getuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return list(argv)


class Proc:
    """One worker process (its own session), output in a log file."""

    def __init__(
        self, kind: str, slot: str, label: str, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path
    ) -> None:
        self.kind = kind
        self.slot = slot
        self.label = label
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.started = time.time()
        #: None while it should be running; "killed", "stopped" (after SIGTERM) or "exited".
        self.fate: str | None = None
        self.paused = False
        self.concurrency = CONCURRENCY[kind]
        self._ready = False

    @property
    def hostname(self) -> str:
        return f"{self.label}@chaos"

    def ready(self) -> bool:
        if not self._ready:
            with self.log_path.open("rb") as f:
                self._ready = b" ready." in f.read(1 << 20)
        return self._ready

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join("    " + line for line in text[-lines:])

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def kill(self) -> tuple[float, set[int]]:
        """SIGKILL: the whole process group of a Celery worker (its pool children are its
        business), the worker process alone for celeriac (its children must die with it).
        Returns the time and the descendants that were alive."""
        family = descendants(self.pid)
        at = time.time()
        if self.kind == "celery":
            self.signal_group(signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.popen.wait()
        self.fate = "killed"
        return at, family

    def close(self) -> None:
        """Kills whatever is left of the process group and closes the log."""
        if self.popen.poll() is None:
            self.signal_group(signal.SIGCONT)
            self.signal_group(signal.SIGKILL)
            self.popen.wait()
        self.signal_group(signal.SIGKILL)
        self._log.close()


# --------------------------------------------------------------------------------------------
# PostgreSQL and PgBouncer


def url_with(url: str, *, dbname: str | None = None, host: str | None = None, port: int | None = None) -> str:
    """``url`` (printed by ``scripts/pg``) with another database, host or port; credentials kept."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    netloc = parts.netloc
    if host is not None or port is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        old_host = parts.hostname or "127.0.0.1"
        new = f"{host or old_host}:{port or parts.port or 5432}"
        netloc = f"{userinfo}@{new}" if userinfo else new
        del hostport
    path = parts.path if dbname is None else "/" + dbname
    return urlunsplit(parts._replace(netloc=netloc, path=path))


class Cluster:
    """The suite's PostgreSQL (``scripts/pg``), plus restart/stop/start on the same port."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.data = directory / "data"
        self.url = ""
        self.bindir = Path(
            subprocess.run([REPO / "scripts/pg", "bindir"], capture_output=True, text=True, check=True).stdout.strip()
        )

    def start(self) -> str:
        out = subprocess.run(
            [REPO / "scripts/pg", "start", str(self.dir)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PG_DURABLE": "1"},
        )
        if out.returncode != 0:
            raise RuntimeError(f"scripts/pg start failed:\n{out.stdout}{out.stderr}")
        self.url = out.stdout.strip().splitlines()[-1]
        return self.url

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        if port is None:
            raise RuntimeError(f"no port in {self.url}")
        return port

    def _pg_ctl(self, *args: str) -> None:
        argv = as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args])
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")

    def restart(self, how: str) -> None:
        self._pg_ctl("-m", how, "-w", "-t", "120", "-l", str(self.data / "postgres.log"), "restart")

    def stop(self, how: str = "fast") -> None:
        self._pg_ctl("-m", how, "-w", "-t", "120", "stop")

    def start_again(self) -> None:
        """Starts the stopped server with the options (port included) it last ran with."""
        words = shlex.split((self.data / "postmaster.opts").read_text().strip())[1:]
        options: list[str] = []
        skip = False
        for word in words:
            if skip:
                skip = False
            elif word == "-D":
                skip = True
            else:
                options.append(word)
        self._pg_ctl("-l", str(self.data / "postgres.log"), "-w", "-t", "120", "-o", shlex.join(options), "start")

    def shutdown(self) -> None:
        subprocess.run([REPO / "scripts/pg", "stop", str(self.dir)], capture_output=True, check=False, timeout=180)


def pgbouncer_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"cannot tell the version of {binary}: {out.stdout}{out.stderr}")
    return tuple(int(g) for g in found.groups() if g is not None)


class PgBouncer:
    """PgBouncer in transaction mode in front of the cluster, on a free port."""

    def __init__(self, directory: Path, cluster: Cluster) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise RuntimeError("pgbouncer is not installed (scripts/chaos installs Debian's package)")
        self.version = pgbouncer_version(binary)
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        server = urlsplit(cluster.url)
        user = unquote(server.username or "postgres")
        password = unquote(server.password) if server.password else None
        target = f"host=127.0.0.1 port={cluster.port} user={user}"
        if password:
            target += f" password={password}"
        lines = [
            "[databases]",
            f"* = {target}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            f"auth_type = {'md5' if password else 'trust'}",
            f"auth_file = {directory / 'userlist.txt'}",
            "pool_mode = transaction",
            "max_client_conn = 2000",
            "default_pool_size = 40",
            "ignore_startup_parameters = extra_float_digits",
            f"logfile = {directory / 'pgbouncer.log'}",
            f"pidfile = {directory / 'pgbouncer.pid'}",
        ]
        (directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        quoted = (password or "").replace('"', '""')
        (directory / "userlist.txt").write_text(f'"{user}" "{quoted}"\n')
        self.url = url_with(cluster.url, host="127.0.0.1", port=self.port)
        extra: dict[str, Any] = {}
        if os.getuid() == 0:  # PgBouncer refuses to run as root
            shutil.chown(directory, "postgres")
            for name in ("pgbouncer.ini", "userlist.txt"):
                shutil.chown(directory / name, "postgres")
            extra = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self._log = (directory / "pgbouncer.out").open("wb")
        self.popen = subprocess.Popen(
            [binary, str(directory / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **extra,
        )
        deadline = time.monotonic() + 15
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with status {self.popen.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not listen on port {self.port}: {self.log_tail()}")
            time.sleep(POLL)

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def log_tail(self) -> str:
        texts = []
        for name in ("pgbouncer.out", "pgbouncer.log"):
            path = self.dir / name
            if path.exists():
                texts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(texts)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


class Db:
    """One reconnecting monitor connection; queries return None while the server is away."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.Connection[Any] | None = None

    def query(self, query: LiteralString, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=3, application_name="chaos_monitor"
                )
            return self.conn.execute(query, params).fetchall()
        except psycopg.Error:
            self.close()
            raise

    def maybe(self, query: LiteralString, params: Sequence[Any] = ()) -> list[tuple[Any, ...]] | None:
        try:
            return self.query(query, params)
        except psycopg.OperationalError:
            return None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None


# --------------------------------------------------------------------------------------------
# One run of one scenario


@dataclass
class Event:
    """A fault: kill, stop/cont (zombie), pg-fast, pg-immediate, pg-stop, pg-start, terminate."""

    what: str
    at: float
    label: str = ""
    pid: int = 0
    #: When the fault was over (a restart: the server accepted connections again).
    until: float = 0.0


@dataclass
class LedgerRun:
    task_id: str
    worker: str
    pid: int
    kind: str
    attempt: int | None
    redelivered: bool
    started: float
    finished: float


@dataclass
class Result:
    scenario: str
    round: int
    tasks: int = 0
    lost: int = 0
    duplicates: int = 0
    explained: int = 0
    dead: int = 0
    stuck: int = 0
    seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    workdir: Path | None = None

    @property
    def failed(self) -> bool:
        return (
            bool(self.failures) or self.lost > 0 or self.dead > 0 or self.stuck > 0 or self.duplicates > self.explained
        )


class ScenarioFailure(Exception):
    """The scenario cannot go on (the reason is already recorded)."""


class Run:
    """The context of one scenario run: its database, workers, faults and findings."""

    def __init__(self, suite: Suite, scenario: str, round_no: int, tasks: int, *, pgbouncer: bool) -> None:
        self.suite = suite
        self.mode = suite.mode
        self.name = scenario
        self.round = round_no
        self.tasks = tasks
        self.dir = suite.workdir / f"{re.sub(r'[^A-Za-z0-9]+', '-', scenario)}-{round_no}"
        self.dir.mkdir(parents=True)
        self.dbname = f"chaos_{re.sub(r'[^A-Za-z0-9]+', '_', scenario)}_{round_no}"
        self.direct_url = url_with(suite.cluster.url, dbname=self.dbname)
        self.pgbouncer = pgbouncer
        #: Where the workers connect (PgBouncer's URL once ``setup`` started it).
        self.worker_url = self.direct_url
        self.lease = self.mode.lease
        self.heartbeat = self.mode.heartbeat
        self.db = Db(self.direct_url)
        self.procs: list[Proc] = []
        self.generation: Counter[str] = Counter()
        self.events: list[Event] = []
        self.enqueued: list[str] = []
        self.longest_task = 0.0
        self.result = Result(scenario, round_no, workdir=self.dir)

    # --- bookkeeping ---------------------------------------------------------------------

    def fail(self, message: str) -> None:
        self.result.failures.append(message)

    def note(self, message: str) -> None:
        self.result.notes.append(message)

    def event(self, what: str, at: float | None = None, proc: Proc | None = None, until: float = 0.0) -> None:
        self.events.append(
            Event(what, time.time() if at is None else at, proc.label if proc else "", proc.pid if proc else 0, until)
        )
        self.result.faults[what] += 1

    # --- database ------------------------------------------------------------------------

    def setup(self) -> None:
        if self.pgbouncer:
            # celeriac's own option: unnamed statements only, no LISTEN (workers poll).
            self.worker_url = url_with(self.suite.bouncer().url, dbname=self.dbname) + "?pooler=transaction"
        with psycopg.connect(self.suite.cluster.url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(self.dbname)))
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(self.dbname)))
        self.celeriac("migrate")
        with psycopg.connect(self.direct_url, autocommit=True) as conn:
            conn.execute(LEDGER_DDL)

    def celeriac(self, *args: str) -> None:
        """Runs one ``celeriac`` command on this run's database; raises with its output if it fails."""
        out = subprocess.run(
            [str(self.suite.celeriac_bin), *args, "--database-url", self.direct_url],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"celeriac {args[0]} failed:\n{out.stdout}{out.stderr}")

    def enqueue(self, sleeps: Sequence[float]) -> list[str]:
        start = len(self.enqueued)
        with celeriac.Client(self.direct_url) as client:
            ids = client.send_many(
                [(TASK, (start + i, round(s, 4)), {}, {"queue": QUEUE}) for i, s in enumerate(sleeps)]
            )
        self.enqueued.extend(ids)
        self.longest_task = max([self.longest_task, *sleeps])
        self.result.tasks = len(self.enqueued)
        return ids

    def sleeps(self, count: int, slots: int, target: float | None = None) -> list[float]:
        """Task durations (uniform, mean chosen so ``slots`` drain ``count`` in ~``target`` s)."""
        mean = (target or self.mode.drain_target) * slots / max(count, 1)
        return [random.uniform(0, 2 * mean) for _ in range(count)]

    def remaining(self) -> int | None:
        rows = self.db.maybe("select count(*) from celeriac.message where queue = %s", (QUEUE,))
        return None if rows is None else int(rows[0][0])

    def recorded(self) -> int | None:
        rows = self.db.maybe("select count(distinct task_id) from chaos_ledger")
        return None if rows is None else int(rows[0][0])

    def drained(self) -> bool:
        return self.remaining() == 0

    def worker_id(self, proc: Proc) -> str | None:
        rows = self.db.maybe("select id::text from celeriac.worker where pid = %s", (proc.pid,))
        return str(rows[0][0]) if rows else None

    # --- workers -------------------------------------------------------------------------

    def start(
        self, kind: str, slot: str | None = None, extra: Sequence[str] = (), concurrency: int | None = None
    ) -> Proc:
        if slot is None:
            slot = f"{kind}{sum(1 for p in self.procs if p.kind == kind and p.label.endswith('.0')) + 1}"
        generation = self.generation[slot]
        self.generation[slot] += 1
        label = f"{slot}.{generation}"
        argv, env, cwd = self.suite.command(kind, label, self, concurrency or CONCURRENCY[kind])
        argv += extra
        proc = Proc(kind, slot, label, argv, env, cwd, self.dir / f"{label}.log")
        proc.concurrency = concurrency or CONCURRENCY[kind]
        self.procs.append(proc)
        return proc

    def live(self) -> list[Proc]:
        return [p for p in self.procs if p.fate is None]

    def slots(self) -> int:
        return sum(p.concurrency for p in self.live())

    def check_procs(self) -> None:
        for proc in self.live():
            code = proc.popen.poll()
            if code is not None:
                proc.fate = "exited"
                self.fail(
                    f"{proc.kind} worker {proc.label} (pid {proc.pid}) exited unexpectedly with status {code}; "
                    f"log tail:\n{proc.log_tail()}"
                )

    def kill(self, proc: Proc) -> None:
        at, family = proc.kill()
        self.event("kill", at, proc)
        if proc.kind != "celery" and family:
            # celeriac's pool children must die with their worker.
            deadline = time.monotonic() + 10
            while any(_running(pid) for pid in family) and time.monotonic() < deadline:
                time.sleep(POLL)
            survivors = sorted(pid for pid in family if _running(pid))
            if survivors:
                self.fail(
                    f"children {survivors} of the SIGKILLed worker {proc.label} (pid {proc.pid}) outlived it by 10 s"
                )
                for pid in survivors:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        proc.signal_group(signal.SIGKILL)

    def pause(self, proc: Proc) -> None:
        proc.signal_group(signal.SIGSTOP)
        proc.paused = True
        self.event("stop", None, proc)

    def resume(self, proc: Proc) -> None:
        proc.signal_group(signal.SIGCONT)
        proc.paused = False
        self.event("cont", None, proc)

    def drive(
        self, until: Callable[[], bool], timeout: float, what: str, tick: Callable[[], None] | None = None
    ) -> None:
        """Re-checks ``until`` every 50 ms (running ``tick``, the fault injector, meanwhile) and
        the workers' health; records a failure and raises ScenarioFailure on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_procs()
            if tick is not None:
                tick()
            if until():
                return
            if time.monotonic() >= deadline:
                self.fail(f"timed out after {timeout:.0f} s waiting for {what} (messages left: {self.remaining()})")
                raise ScenarioFailure(what)
            time.sleep(POLL)

    def wait_ready(self, procs: Sequence[Proc] | None = None, timeout: float = 60) -> None:
        targets = list(procs) if procs is not None else self.live()
        self.drive(lambda: all(p.ready() or p.fate for p in targets), timeout, "the workers to be ready")

    def drain(self, tick: Callable[[], None] | None = None) -> None:
        self.drive(self.drained, self.mode.drain_timeout, "the queue to drain", tick)

    def shutdown(self) -> None:
        """SIGTERM to every live worker (a paused one is resumed first); each must exit 0. A worker
        started a moment ago (the last kill's replacement) is given time to start first."""
        self.check_procs()
        with contextlib.suppress(ScenarioFailure):
            self.drive(lambda: all(p.ready() or p.paused for p in self.live()), 60, "the workers to start")
        live = self.live()
        for proc in live:
            if proc.paused:
                self.resume(proc)
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
        for proc in live:
            try:
                code = proc.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.fate = "exited"
                self.fail(
                    f"{proc.label} (pid {proc.pid}) did not exit within 60 s of SIGTERM; log tail:\n{proc.log_tail()}"
                )
                continue
            proc.fate = "stopped"
            if code != 0:
                self.fail(
                    f"{proc.label} (pid {proc.pid}) exited with status {code} after SIGTERM;"
                    f" log tail:\n{proc.log_tail()}"
                )
        for proc in self.procs:
            proc.close()

    # --- the verdict ---------------------------------------------------------------------

    def check(self) -> None:
        r = self.result
        ledger: dict[str, list[LedgerRun]] = defaultdict(list)
        for row in self.db.query(
            "select task_id, worker, pid, kind, attempt, redelivered, started, finished from chaos_ledger"
        ):
            ledger[row[0]].append(LedgerRun(*row))
        dead = {
            str(row[0]): (str(row[1]), str(row[2]))
            for row in self.db.query("select task_id, reason_code, reason from celeriac.dead_letter")
        }
        stuck = self.db.query(
            "select task_id, leased_by::text, attempt, redeliveries, lease_expires from celeriac.message"
        )
        enqueued = set(self.enqueued)
        lost = [t for t in self.enqueued if t not in ledger and t not in dead]
        stuck_ids = {str(row[0]) for row in stuck}
        r.stuck = len(stuck)
        r.lost = len([t for t in lost if t not in stuck_ids])
        r.dead = len(dead)
        if lost:
            sample = ", ".join(lost[:10])
            r.failures.append(
                f"{r.lost} lost task(s) (no ledger row, not dead-lettered, no longer queued): {sample}"
                if r.lost
                else f"{len(lost)} task(s) never ran and are still queued: {sample}"
            )
        if stuck:
            r.failures.append(
                "still in celeriac.message after the run: "
                + "; ".join(
                    f"{t} leased_by={w} attempt={a} redeliveries={n} lease_expires={e}" for t, w, a, n, e in stuck[:10]
                )
            )
        if dead:
            r.failures.append(
                "dead-lettered: " + "; ".join(f"{t} {code}: {reason}" for t, (code, reason) in list(dead.items())[:10])
            )
        unknown = set(ledger) - enqueued
        if unknown:
            r.failures.append(f"ledger rows for task ids never enqueued: {sorted(unknown)[:10]}")
        unexplained: list[str] = []
        for task_id, runs in ledger.items():
            if len(runs) < 2:
                continue
            r.duplicates += 1
            verdict = self.explain(runs)
            if verdict is None:
                r.explained += 1
            else:
                unexplained.append(f"{task_id}: {verdict}")
        if unexplained:
            r.failures.append(
                f"{len(unexplained)} unexplained duplicate(s):\n" + "\n".join("    " + u for u in unexplained[:15])
            )

    def explain(self, runs: list[LedgerRun]) -> str | None:
        """None if every extra run of one task has an allowed cause, else what is wrong.

        Runs a paused worker started before it was resumed are the zombie's (allowed: its lease
        ran out while it was stopped). Of the other runs, in start order, every one but the last
        must have ended within ``KILL_WINDOW`` of a SIGKILL of its worker or overlapped
        ``CRASH_WINDOW`` around an immediate-mode restart: it ran, but its ack (or claim) was lost.
        A run that started later than that after a crash is allowed when the next run is a first
        delivery (the crash undid the claim) and it started within ``PREFETCH_HOLD_TASKS`` of the
        longest task after the server was back (the message waited in the worker's prefetch).
        """
        resumed = {e.label + "@chaos": e.at for e in self.events if e.what == "cont"}
        kills = {e.label + "@chaos": e.at for e in self.events if e.what == "kill"}
        crashes = [(e.at, e.until) for e in self.events if e.what == "pg-immediate"]
        hold = CRASH_WINDOW[1] + PREFETCH_HOLD_TASKS * self.longest_task
        zombie = [run for run in runs if run.started < resumed.get(run.worker, -1.0)]
        others = sorted((run for run in runs if run not in zombie), key=lambda run: run.started)
        if not others:
            return "every run was started by a paused worker: " + describe(runs)
        for run, after in itertools.pairwise(others):
            killed = kills.get(run.worker)
            first_delivery = not after.redelivered and after.attempt in (None, 1)
            if killed is not None and killed - KILL_WINDOW[0] <= run.finished <= killed + KILL_WINDOW[1]:
                self.result.reasons["kill"] += 1
            elif any(run.started <= at + CRASH_WINDOW[1] and run.finished >= at - CRASH_WINDOW[0] for at, _ in crashes):
                self.result.reasons["pg-crash"] += 1
            elif first_delivery and any(at <= run.started <= up + hold for at, up in crashes):
                self.result.reasons["pg-crash-prefetched"] += 1
            else:
                return "a run not explained by a kill, crash or pause: " + describe(runs)
        if zombie:
            self.result.reasons["zombie"] += len(zombie)
        return None


def describe(runs: list[LedgerRun]) -> str:
    def clock(t: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"

    return " | ".join(
        f"{r.worker} pid={r.pid} attempt={r.attempt} redelivered={r.redelivered}"
        f" started={clock(r.started)} finished={clock(r.finished)}"
        for r in sorted(runs, key=lambda r: r.started)
    )


# --------------------------------------------------------------------------------------------
# Scenarios


def scenario_kill(run: Run, fleet: Sequence[str]) -> None:
    """Workers SIGKILLed at random moments while draining, each restarted at once.

    Rescue needs a worker that has heartbeated for a whole lease (the rescuer's health guard), so
    kills pause while nothing is being recorded for ``2 * lease + 2`` seconds: without that, a
    fleet killed faster than it lives never rescues anything (a livelock of the suite, not of
    celeriac). A worker that exits on its own (already a failure) is replaced as well."""
    procs = [run.start(kind) for kind in fleet]
    run.wait_ready(procs)
    run.enqueue(run.sleeps(run.tasks, run.slots()))
    mode = run.mode
    next_kill = time.monotonic() + random.uniform(*mode.kill_gap)
    kills = 0
    recorded, progress_at, checked_at = 0, time.monotonic(), 0.0
    replaced: set[str] = set()

    def tick() -> None:
        nonlocal next_kill, kills, recorded, progress_at, checked_at
        now = time.monotonic()
        if now - checked_at >= 0.5:
            checked_at = now
            count = run.recorded()
            if count is not None and count > recorded:
                recorded, progress_at = count, now
        for proc in run.procs:
            if proc.fate == "exited" and proc.label not in replaced:
                replaced.add(proc.label)
                run.start(proc.kind, proc.slot)
        stalled = now - progress_at > 2 * run.lease + 2
        if kills >= mode.max_kills or now < next_kill or stalled:
            return
        candidates = [p for p in run.live() if p.ready()]
        if not candidates:
            return
        victim = random.choice(candidates)
        run.kill(victim)
        run.start(victim.kind, victim.slot)
        kills += 1
        next_kill = time.monotonic() + random.uniform(*mode.kill_gap)

    run.drain(tick)


MIXED = ("rust", "rust", "python", "celery")


def scenario_kill_rate_limited(run: Run) -> None:
    """``scenario_kill`` with ``chaos.record`` under a fleet-wide rate limit (the tasks' rate
    over the drain target), so workers are killed while they hold, park and take back rate-limited
    messages. Celery workers on the transport ignore fleet-wide limits, so the fleet is celeriac's."""
    rate = max(1, round(run.tasks / run.mode.drain_target))
    run.celeriac("rate-limit", "set", TASK, f"{rate}/s")
    scenario_kill(run, ("rust", "rust", "python"))


def scenario_pg_restart(run: Run, how: str) -> None:
    """PostgreSQL restarted (same port) mid-run; no worker may exit."""
    run.wait_ready([run.start(kind) for kind in MIXED])
    run.enqueue(run.sleeps(run.tasks, run.slots()))
    for i in range(run.mode.restarts):
        target = int(0.8 * (i + 1) / (run.mode.restarts + 1) * run.tasks)
        run.drive(lambda t=target: (run.recorded() or 0) >= t, run.mode.drain_timeout, f"{target} tasks recorded")
        time.sleep(random.uniform(0, 0.3))  # fault moment
        at = time.time()
        run.suite.cluster.restart(how)
        run.event(f"pg-{how}", at, until=time.time())
    run.drain()


def scenario_pg_terminate(run: Run) -> None:
    """A random worker backend killed with pg_terminate_backend every 0.1-0.5 s."""
    run.wait_ready([run.start(kind) for kind in MIXED])
    run.enqueue(run.sleeps(run.tasks, run.slots()))
    next_at = time.monotonic()

    def tick() -> None:
        nonlocal next_at
        if time.monotonic() < next_at:
            return
        next_at = time.monotonic() + random.uniform(0.1, 0.5)
        rows = run.db.maybe(
            "select pg_terminate_backend(pid) from (select pid from pg_stat_activity"
            " where datname = current_database() and application_name = %s and pid <> pg_backend_pid()"
            " order by random() limit 1) victim",
            (WORKER_APPLICATION_NAME,),
        )
        if rows and rows[0][0]:
            run.event("terminate")

    run.drain(tick)


def scenario_outage(run: Run) -> None:
    """The server stopped for longer than the lease while tasks run, then started again."""
    run.lease = run.mode.outage_lease
    run.heartbeat = run.mode.outage_heartbeat
    run.wait_ready([run.start(kind) for kind in MIXED])
    run.enqueue([random.uniform(0.2, 2.0) for _ in range(run.tasks)])
    target = max(1, int(0.15 * run.tasks))
    run.drive(lambda: (run.recorded() or 0) >= target, run.mode.drain_timeout, f"{target} tasks recorded")
    time.sleep(random.uniform(0, 0.5))  # fault moment
    held = run.db.query("select count(*) from celeriac.message where leased_by is not null")[0][0]
    at = time.time()
    run.suite.cluster.stop("fast")
    run.event("pg-stop", at)
    run.note(f"{held} message(s) leased when the server stopped; outage {run.mode.outage:.0f} s, lease {run.lease:g} s")
    deadline = time.monotonic() + run.mode.outage
    while time.monotonic() < deadline:  # the outage itself; workers are watched meanwhile
        run.check_procs()
        time.sleep(POLL)
    run.suite.cluster.start_again()
    run.event("pg-start")
    run.drain()


def scenario_zombie(run: Run, kind: str) -> None:
    """A worker paused (SIGSTOP) past its lease while running tasks, resumed once another worker
    has taken its messages over: its late completions must be refused by the lease fence."""
    long_sleep = 2.0
    # -c 2, prefetch 1: the zombie holds two running and (celeriac) two waiting messages.
    zombie = run.start(kind, "zombie", ["--prefetch-multiplier", "1"], concurrency=2)
    run.wait_ready([zombie])
    run.enqueue([long_sleep] * 4)
    zid = ""

    def zombie_holds() -> bool:
        nonlocal zid
        zid = zid or run.worker_id(zombie) or ""
        rows = run.db.maybe("select count(*) from celeriac.message where leased_by::text = %s", (zid,))
        return bool(zid) and rows is not None and rows[0][0] >= 2

    run.drive(zombie_holds, 60, "the zombie-to-be to hold messages")
    time.sleep(random.uniform(0.3, 1.0))  # fault moment: its tasks are mid-run
    held = [str(r[0]) for r in run.db.query("select task_id from celeriac.message where leased_by::text = %s", (zid,))]
    run.pause(zombie)
    helper = run.start("rust", "helper")
    hid = ""

    def taken_over() -> bool:
        # Rescued (none left with the zombie) and one of them held by the helper, still running.
        nonlocal hid
        hid = hid or run.worker_id(helper) or ""
        rows = run.db.maybe(
            "select count(*) filter (where leased_by::text = %s), count(*) filter (where leased_by::text = %s)"
            " from celeriac.message where task_id = any(%s)",
            (zid, hid, held),
        )
        return bool(hid) and rows is not None and rows[0][0] == 0 and rows[0][1] > 0

    run.drive(taken_over, 4 * run.lease + 60, "the helper to take the zombie's messages over")
    run.resume(zombie)
    resumed = run.events[-1].at
    fenced: set[str] = set()
    violations: set[str] = set()

    def settled() -> bool:
        # One snapshot per poll. A held task whose only recorded run is the zombie's stale one
        # (started before SIGCONT) must still be in the table: the zombie's completion of it was
        # refused, and whoever runs it next writes its ledger row before completing it.
        rows = run.db.maybe(
            "select t.id,"
            " exists (select 1 from chaos_ledger l where l.task_id = t.id and l.worker = %s and l.started < %s),"
            " exists (select 1 from chaos_ledger l where l.task_id = t.id and (l.worker <> %s or l.started >= %s)),"
            " exists (select 1 from celeriac.message m where m.task_id = t.id)"
            " from unnest(%s::text[]) as t(id)",
            (zombie.hostname, resumed, zombie.hostname, resumed, held),
        )
        if rows is None:
            return False
        for task_id, stale, redone, queued in rows:
            if stale and not redone:
                (fenced if queued else violations).add(task_id)
        return all(redone for _, _, redone, _ in rows)

    run.drive(settled, len(held) * (long_sleep + 5) + 60, "the held tasks to run again")
    for task_id in sorted(violations):
        run.fail(
            f"fence: {task_id}'s message left the queue after the zombie's late completion, before its new "
            "delivery was recorded (the zombie's completion was not refused)"
        )
    run.note(
        f"the zombie held {len(held)} message(s) when paused; {len(fenced) + len(violations)} of its late "
        f"completions came in before the new delivery was recorded; the fence refused {len(fenced)} of them"
    )
    if not fenced and not violations:
        run.fail("the zombie completed none of its tasks late: the fence was not exercised")
    refused = sum(int(n) for n in re.findall(r"completion was refused for (\d+) message", zombie.log_text()))
    if refused:
        run.note(f"the zombie's log reports {refused} refused completion(s)")
    run.enqueue(run.sleeps(run.tasks, run.slots()))
    run.drain()


@dataclass(frozen=True)
class Scenario:
    name: str
    body: Callable[[Run], None]
    kill: bool = False
    tasks: Callable[[Mode], int] | None = None


SCENARIOS: list[Scenario] = [
    Scenario("kill-rust", lambda r: scenario_kill(r, ("rust", "rust", "rust")), kill=True),
    Scenario("kill-python", lambda r: scenario_kill(r, ("python", "python")), kill=True),
    Scenario("kill-mixed", lambda r: scenario_kill(r, ("rust", "python", "celery", "celery")), kill=True),
    Scenario("kill-rate-limited", scenario_kill_rate_limited, kill=True),
    Scenario("pg-restart-fast", lambda r: scenario_pg_restart(r, "fast")),
    Scenario("pg-restart-immediate", lambda r: scenario_pg_restart(r, "immediate")),
    Scenario("pg-terminate", scenario_pg_terminate),
    Scenario("outage", scenario_outage, tasks=lambda m: m.outage_tasks),
    Scenario("zombie-rust", lambda r: scenario_zombie(r, "rust"), tasks=lambda m: m.tasks // 4),
    Scenario("zombie-python", lambda r: scenario_zombie(r, "python"), tasks=lambda m: m.tasks // 4),
    Scenario("zombie-celery", lambda r: scenario_zombie(r, "celery"), tasks=lambda m: m.tasks // 4),
]


# --------------------------------------------------------------------------------------------
# The suite


class Suite:
    def __init__(self, mode: Mode, workdir: Path, celeriac_bin: Path, chaos_bin: Path) -> None:
        self.mode = mode
        self.workdir = workdir
        self.celeriac_bin = celeriac_bin
        self.chaos_bin = chaos_bin
        self.cluster = Cluster(workdir / "pg")
        self._bouncer: PgBouncer | None = None
        #: Keep every database (else only those of failed runs).
        self.keep = False

    def bouncer(self) -> PgBouncer:
        if self._bouncer is None:
            self._bouncer = PgBouncer(self.workdir / "pgbouncer", self.cluster)
            print(f"chaos: PgBouncer {self._bouncer.version_text} on port {self._bouncer.port}", flush=True)
        return self._bouncer

    def command(self, kind: str, label: str, run: Run, concurrency: int) -> tuple[list[str], dict[str, str], Path]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CELERY_BROKER_URL", "CELERIAC_DATABASE_URL", "DATABASE_URL", "CELERIAC_PYTHON")
        }
        env.update(
            CHAOS_LEDGER_URL=run.direct_url,
            CHAOS_BROKER_URL="celeriac+" + run.worker_url,
            CHAOS_LEASE_SECONDS=f"{run.lease:g}",
            CHAOS_MAX_REDELIVERIES=str(MAX_REDELIVERIES),
            CHAOS_WORKER=label,
            PYTHONPATH=os.pathsep.join(p for p in (str(CHAOS_DIR), os.environ.get("PYTHONPATH")) if p),
            TMPDIR=str(run.dir),  # where Celery's emergency dumps of unrestorable messages go
            VIRTUAL_ENV=sys.prefix,
        )
        name = f"{label}@chaos"
        common = [
            "worker",
            "--database-url",
            run.worker_url,
            "-Q",
            QUEUE,
            "-n",
            name,
            "-c",
            str(concurrency),
            "--lease-seconds",
            f"{run.lease:g}",
            "--heartbeat-interval",
            f"{run.heartbeat:g}",
            "--poll-interval",
            "0.5",
            "--max-redeliveries",
            str(MAX_REDELIVERIES),
            "--shutdown-timeout",
            "30",
            "--loglevel",
            "INFO",
        ]
        if kind == "rust":
            return [str(self.chaos_bin), *common], env, CHAOS_DIR
        if kind == "python":
            argv = [str(self.celeriac_bin), *common, "-A", "chaos_app", "-P", "prefork", "--python", sys.executable]
            return argv, env, CHAOS_DIR
        if kind == "celery":
            argv = [
                sys.executable, "-m", "celery", "-A", "chaos_app", "worker", "-P", "prefork",
                "-c", str(concurrency), "-n", name, "-Q", QUEUE, "--loglevel=INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            return argv, env, CHAOS_DIR
        raise ValueError(kind)

    def run(self, scenario: Scenario, round_no: int, tasks: int, *, pgbouncer: bool) -> Result:
        name = scenario.name + ("+pgbouncer" if pgbouncer else "")
        run = Run(self, name, round_no, tasks, pgbouncer=pgbouncer)
        started = time.monotonic()
        try:
            run.setup()
            scenario.body(run)
        except ScenarioFailure:
            pass
        except Exception as exc:  # noqa: BLE001 - any driver error is a finding of this run, not the end of the suite
            run.fail(f"driver error: {exc!r}\n{traceback.format_exc()}")
        finally:
            run.shutdown()
        run.result.seconds = time.monotonic() - started
        try:
            if self.cluster_down():
                self.cluster.start_again()
            run.check()
        except Exception as exc:  # noqa: BLE001 - reported with the run
            run.fail(f"could not check the ledger: {exc!r}")
        finally:
            run.db.close()
        if run.result.failed or run.result.failures:
            run.result.notes.extend(log_digest(run))
        elif not self.keep:
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.cluster.url, autocommit=True) as conn:
                conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(run.dbname)))
        return run.result

    def cluster_down(self) -> bool:
        try:
            with psycopg.connect(self.cluster.url, connect_timeout=3):
                return False
        except psycopg.OperationalError:
            return not (self.cluster.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self._bouncer is not None:
            self._bouncer.stop()
        self.cluster.shutdown()


NOISE = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\b\d+(\.\d+)?\b|\[[^\]]*\]")


def log_digest(run: Run, top: int = 8) -> list[str]:
    """The most frequent warning/error lines of the run's worker logs (numbers and ids folded)."""
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for proc in run.procs:
        for line in proc.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if re.search(r"WARN|ERROR|CRITICAL|Traceback|rror:", line):
                key = NOISE.sub("#", line)[:200]
                counts[key] += 1
                example.setdefault(key, f"{proc.label}: {line.strip()[:300]}")
    return [f"log x{n}: {example[key]}" for key, n in counts.most_common(top)]


def table(results: list[Result]) -> str:
    grouped: dict[str, list[Result]] = {}
    for r in results:
        grouped.setdefault(r.scenario, []).append(r)
    header = ("scenario", "rounds", "tasks", "lost", "duplicates", "explained", "dead", "time", "faults", "result")
    rows = [header]
    for name, rs in grouped.items():
        faults: Counter[str] = Counter()
        for r in rs:
            faults.update(r.faults)
        failed = any(r.failed for r in rs)
        verdict = "FAIL" if failed else "PASS"
        rows.append((
            name,
            str(len(rs)),
            str(sum(r.tasks for r in rs)),
            str(sum(r.lost + r.stuck for r in rs)),
            str(sum(r.duplicates for r in rs)),
            str(sum(r.explained for r in rs)),
            str(sum(r.dead for r in rs)),
            f"{sum(r.seconds for r in rs):.0f}s",
            " ".join(f"{k}={v}" for k, v in sorted(faults.items())) or "-",
            verdict,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short", action="store_const", const="short", dest="mode", help="CI mode (default)")
    group.add_argument("--long", action="store_const", const="long", dest="mode", help="20 rounds of 10,000 tasks")
    parser.add_argument("--scenario", help="comma-separated scenario names (see --list); +pgbouncer suffix allowed")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario (default: the mode's)")
    parser.add_argument("--tasks", type=int, help="tasks per scenario (default: the mode's)")
    parser.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and its cluster")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    mode = {"short": SHORT, "long": LONG}[args.mode or os.environ.get("CHAOS_MODE") or "short"]
    if args.list:
        for s in SCENARIOS:
            print(s.name)
        return 0
    if args.scenario:
        wanted = [w.strip() for w in args.scenario.split(",") if w.strip()]
    else:
        wanted = [s.name for s in SCENARIOS if not s.name.startswith("zombie-")]
        wanted += [f"zombie-{kind}" for kind in mode.zombies]
        wanted += [f"{s.name}+pgbouncer" for s in SCENARIOS if "*" in mode.pgbouncer or s.name in mode.pgbouncer]
    by_name = {s.name: s for s in SCENARIOS}
    plan: list[tuple[Scenario, bool]] = []
    for w in wanted:
        base, _, suffix = w.partition("+")
        if base not in by_name or suffix not in ("", "pgbouncer"):
            parser.error(f"unknown scenario {w!r} (see --list)")
        plan.append((by_name[base], suffix == "pgbouncer"))
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    random.seed(args.seed)

    celeriac_bin = Path(os.environ.get("CELERIAC_BIN") or REPO / "target/debug/celeriac")
    chaos_bin = Path(os.environ.get("CHAOS_WORKER_BIN") or REPO / "target/debug/examples/chaos_worker")
    for binary in (celeriac_bin, chaos_bin):
        if not os.access(binary, os.X_OK):
            parser.error(f"{binary} is not built (scripts/chaos builds it)")

    workdir = Path(tempfile.mkdtemp(prefix="celeriac-chaos.", dir=os.environ.get("TMPDIR", "/tmp")))
    workdir.chmod(0o755)  # the postgres user must reach the cluster directory
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    suite = Suite(mode, workdir, celeriac_bin, chaos_bin)
    suite.keep = args.keep
    results: list[Result] = []
    interrupted = False
    started = time.monotonic()
    print(f"chaos: {mode.name} mode, seed {args.seed}, work directory {workdir}", flush=True)
    try:
        suite.cluster.start()
        for scenario, pgbouncer in plan:
            rounds = args.rounds or (mode.kill_rounds if scenario.kill else mode.rounds)
            tasks = args.tasks or (
                scenario.tasks(mode) if scenario.tasks else (mode.kill_tasks if scenario.kill else mode.tasks)
            )
            for round_no in range(1, rounds + 1):
                result = suite.run(scenario, round_no, tasks, pgbouncer=pgbouncer)
                results.append(result)
                verdict = "FAILED" if result.failed else "ok"
                print(
                    f"chaos: {result.scenario} round {round_no}/{rounds}: {result.tasks} tasks, lost {result.lost},"
                    f" stuck {result.stuck}, dead {result.dead}, duplicates {result.duplicates}"
                    f" (explained {result.explained}: {dict(result.reasons)}), {result.seconds:.1f} s: {verdict}",
                    flush=True,
                )
    except (KeyboardInterrupt, SystemExit) as exc:
        interrupted = True
        print(f"chaos: interrupted ({exc!r}); the results so far follow", flush=True)
    finally:
        suite.close()
    elapsed = time.monotonic() - started

    print()
    print(table(results))
    failed = [r for r in results if r.failed]
    for r in results:
        if r.failed or r.notes:
            title = f"{r.scenario} round {r.round}"
            if r.failed:
                title += " FAILED"
            print(f"\n== {title} (logs: {r.workdir})")
            for failure in r.failures:
                print("  - " + failure.replace("\n", "\n    "))
            for note in r.notes:
                print("  * " + note)
    print(f"\nchaos: {len(results)} run(s) in {elapsed:.0f} s; {len(failed)} failed")
    if failed or args.keep or interrupted:
        print(f"chaos: logs kept in {workdir}")
        if failed or args.keep:
            which = "every run's database" if args.keep else "the failed runs' databases"
            print(f"chaos: {which}: scripts/pg start {workdir / 'pg'} (databases chaos_<scenario>_<round>)")
        else:
            shutil.rmtree(workdir / "pg", ignore_errors=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
