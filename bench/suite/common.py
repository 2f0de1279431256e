"""The benchmark suite's shared parts: what a system under test provides (``System``), what a
measurement gives it (``Ctx``), and the tools to watch processes and databases.

A system is one way of running the benchmark task ("append ``n`` and the time to this
process's record file", ``record.py``): a queue, a worker with its settings, and a producer.
The driver (``run.py``) creates a fresh database per measurement, asks the system to create its
schema, to send tasks, and to start and stop its worker; it counts the records itself.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

SUITE = Path(__file__).resolve().parent
REPO = SUITE.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass
class Ctx:
    """Everything one measurement needs to know."""

    #: The fresh database of this measurement (``postgresql://…/bench_…``).
    db_url: str
    #: The PostgreSQL server's admin URL (database ``postgres``).
    admin_url: str
    #: A directory of this measurement's own (logs, config files).
    work_dir: Path
    #: Where tasks write their records: ``BENCH_RECORD_DIR`` for every worker process.
    record_dir: Path
    #: Worker concurrency (``-c``): tasks run at once, in whatever form the system has.
    concurrency: int
    #: The queue name every system uses.
    queue: str
    #: The Python interpreter of the suite's environment (peers and Celery are installed in it).
    python: str
    #: The ``celeriac`` binary (release build).
    celeriac_bin: str
    #: The Node.js project with graphile-worker and pg-boss installed (``node_modules`` inside).
    node_dir: Path
    #: RabbitMQ and Redis, when started (else empty).
    amqp_url: str = ""
    redis_url: str = ""

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a worker or producer process of this measurement."""
        env = dict(os.environ)
        env["BENCH_RECORD_DIR"] = str(self.record_dir)
        env["BENCH_DATABASE_URL"] = self.db_url
        env["BENCH_QUEUE"] = self.queue
        env["BENCH_CONCURRENCY"] = str(self.concurrency)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO / "bench"), env.get("PYTHONPATH", "")])
        )
        env.update(extra)
        return env

    def log(self, name: str) -> Any:
        """A log file in the work directory (for a process's stdout and stderr)."""
        return open(self.work_dir / f"{name}.log", "ab")


class Producer:
    """Sends benchmark tasks. ``send`` returns once the tasks are enqueued (committed)."""

    def send(self, numbers: Sequence[int]) -> None:
        """Enqueues one task per number, in one batch if the system has a batch call."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases connections and processes."""


class System:
    """One system under test. Subclasses set the class attributes and implement the methods."""

    #: Short name used in tables and ``--systems`` (e.g. ``procrastinate``).
    name: str = ""
    #: The language of the task the worker runs: ``rust``, ``python`` or ``node``.
    language: str = ""
    #: The server holding the queue: ``postgres``, ``rabbitmq`` or ``redis`` (its CPU is counted).
    server: str = "postgres"
    #: How the worker runs tasks, for the results' settings column (e.g. ``prefork -c 2``).
    settings: str = ""

    def unavailable(self, ctx: Ctx) -> str | None:
        """Why this system cannot run here (e.g. a package missing), or None."""
        return None

    def versions(self, ctx: Ctx) -> dict[str, str]:
        """Package versions to record with the results."""
        return {}

    def prepare(self, ctx: Ctx) -> None:
        """Creates the system's schema in ``ctx.db_url`` (a new, empty database)."""

    def producer(self, ctx: Ctx) -> Producer:
        """A producer sending to this system."""
        raise NotImplementedError

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        """Starts the worker process(es), each in a new session (``start_new_session=True``), so
        their whole process tree can be found and stopped. Returns at once."""
        raise NotImplementedError

    def stop_worker(self, ctx: Ctx, procs: list[subprocess.Popen[bytes]]) -> None:
        """Stops the workers: SIGTERM, then SIGKILL to the process group after 30 s."""
        stop_processes(procs)

    def queue_tables(self, ctx: Ctx) -> list[str]:
        """The tables (schema-qualified) that hold the queue, for size and bloat figures."""
        return []


def stop_processes(
    procs: Sequence[subprocess.Popen[bytes]], timeout: float = 30.0
) -> None:
    """SIGTERM to each process, then SIGKILL to each one's process group if it lingers."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(10)


# --- Processes -------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; the rest follows its closing parenthesis.
    return data[data.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                tree.setdefault(int(st[1]), []).append(int(entry))
    return tree


def process_tree(roots: Sequence[int]) -> list[int]:
    """The given processes and all their descendants."""
    tree = children_map()
    out: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds of each process (its own threads, not its children)."""
    out: dict[int, float] = {}
    for pid in pids:
        st = _stat(pid)
        if st is not None:
            out[pid] = (int(st[11]) + int(st[12])) / CLK_TCK
    return out


def rss_bytes(pids: Sequence[int]) -> int:
    """Summed resident memory of the processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def pss_bytes(pids: Sequence[int]) -> int:
    """Summed proportional set size (shared pages divided among their users)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


class CpuMeter:
    """CPU seconds spent by a changing set of processes between ``start`` and ``stop``.

    Processes are sampled whenever ``sample`` is called; one that exits between samples loses
    the CPU it used since its last sample (sampling every 100 ms keeps that small).
    """

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def sample(self, pids: Sequence[int]) -> None:
        for pid, secs in cpu_seconds(pids).items():
            self.first.setdefault(pid, secs if not self.last else 0.0)
            self.last[pid] = secs

    def start(self, pids: Sequence[int]) -> None:
        self.first = cpu_seconds(pids)
        self.last = dict(self.first)

    def total(self) -> float:
        return sum(self.last[p] - self.first.get(p, 0.0) for p in self.last)


# --- Records ---------------------------------------------------------------------------------


class Records:
    """Reads the record files of a measurement as they grow."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[str, int] = {}
        self.partial: dict[str, bytes] = {}
        self.counts: Counter[int] = Counter()
        self.times: dict[int, int] = {}
        self.lines = 0

    def poll(self) -> int:
        """Reads what was appended since the last call; returns the number of records so far."""
        for path in self.directory.glob("*.log"):
            key = path.name
            with open(path, "rb") as f:
                f.seek(self.offsets.get(key, 0))
                data = self.partial.pop(key, b"") + f.read()
                self.offsets[key] = f.tell()
            *complete, rest = data.split(b"\n")
            if rest:
                self.partial[key] = rest
            for line in complete:
                n_text, t_text = line.split()
                n = int(n_text)
                self.counts[n] += 1
                self.times.setdefault(n, int(t_text))
                self.lines += 1
        return self.lines

    def check(self, expected: Sequence[int]) -> tuple[int, int]:
        """(missing, extra) against the numbers sent: numbers never recorded, and records beyond
        one per number sent (duplicates, or numbers nobody sent)."""
        sent = set(expected)
        missing = len(sent - self.counts.keys())
        extra = sum(
            c - 1 if n in sent else c
            for n, c in self.counts.items()
            if c > 1 or n not in sent
        )
        return missing, extra


# --- PostgreSQL ------------------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    """``url`` with its database name replaced."""
    base, _, rest = url.rpartition("/")
    query = rest.partition("?")[2]
    return f"{base}/{database}" + (f"?{query}" if query else "")


@contextmanager
def connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(url, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def postgres_pids(admin_url: str) -> list[int]:
    """The PostgreSQL server's processes: the postmaster and all its children."""
    with connect(admin_url) as conn:
        row = conn.execute(
            "select pg_postmaster_start_time(), current_setting('data_directory')"
        ).fetchone()
    assert row is not None
    with open(Path(row[1]) / "postmaster.pid") as f:
        postmaster = int(f.readline())
    return process_tree([postmaster])


def table_figures(db_url: str, tables: Sequence[str]) -> dict[str, int]:
    """Heap bytes, index bytes, live and dead tuples of the tables, summed (with TOAST); a
    partitioned table counts as all its partitions."""
    out = {"table_bytes": 0, "index_bytes": 0, "live_tuples": 0, "dead_tuples": 0}
    if not tables:
        return out
    with connect(db_url) as conn:
        for table in tables:
            rows = conn.execute(
                """select pg_table_size(c.oid), pg_indexes_size(c.oid),
                          coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0)
                   from pg_class c left join pg_stat_user_tables s on s.relid = c.oid
                   where (c.oid = to_regclass(%s)
                          or c.oid in (select relid from pg_partition_tree(to_regclass(%s))))
                     and c.relkind = 'r'""",
                (table, table),
            ).fetchall()
            for row in rows:
                out["table_bytes"] += row[0]
                out["index_bytes"] += row[1]
                out["live_tuples"] += row[2]
                out["dead_tuples"] += row[3]
    return out


def pip_version(python: str, package: str) -> str:
    """The installed version of a distribution in ``python``'s environment, or ``-``."""
    out = subprocess.run(
        [
            python,
            "-c",
            f"import importlib.metadata as m; print(m.version({package!r}))",
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else "-"


def wait_for(what: str, condition: Any, timeout: float, interval: float = 0.05) -> Any:
    """Polls ``condition()`` until it returns something true; raises TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
