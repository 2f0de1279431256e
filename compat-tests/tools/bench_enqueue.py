#!/usr/bin/env python3
"""Enqueue throughput from Python: celeriac's client and kombu transport against Celery 5.7 on
RabbitMQ and on kombu's SQLAlchemy transport, measured side by side in one run.

    bench_enqueue.py --database-url postgresql://postgres@127.0.0.1:5432/postgres \\
        [--amqp-url amqp://guest:guest@127.0.0.1:5672//] [--rounds 3] [--send-task-n 20000] \\
        [--send-many-n 100000] [--send-many-batch 1000] [--celery-n 20000] [--warmup 200] [--json]

``--database-url`` is an admin URL (CREATE DATABASE must work): two fresh databases,
``bench_celeriac_<hex>`` (with ``celeriac.Client(url).migrate()`` applied) and
``bench_sqla_<hex>`` (kombu creates its tables), are created on that server and dropped at the end.

Systems (every message is the task ``bench.add`` with ``args=(i, i)``, to the default queue
``celery``; no worker runs):

- ``send_task``: ``celeriac.Client.send_task`` one message per call (one durable commit each).
- ``send_task-nondurable``: the same with ``Client(url, durable=False)``: each commit returns
  before its WAL flush, the guarantee RabbitMQ gives Celery's default (unconfirmed) publishes.
- ``send_many``: ``celeriac.Client.send_many`` with ``--send-many-batch`` messages per call.
- ``celeriac-transport``: Celery ``apply_async`` with ``broker="celeriac+postgresql://..."``.
- ``celery-rabbitmq``: Celery ``apply_async`` on RabbitMQ (``--amqp-url``) with Celery's default
  py-amqp transport and default settings: no publisher confirms, so ``apply_async`` returns once
  the frames are written to the socket, and the messages are fsynced by RabbitMQ later.
- ``celery-sqla``: Celery ``apply_async`` on kombu's SQLAlchemy transport
  (``sqla+postgresql+psycopg://...``, same PostgreSQL server, its own database).

Method: each round measures every system once, round-robin, starting one system later each
round. A measurement empties the system's queue (TRUNCATE, or ``queue_purge`` on RabbitMQ),
issues a CHECKPOINT on the PostgreSQL server, sends ``--warmup`` untimed messages, then times
sending N messages (``time.perf_counter`` around the sending calls only), and afterwards checks
that warmup + N messages are in the queue (``count(*)`` of ``celeriac.message`` /
``kombu_message``; RabbitMQ: ``queue_declare(passive=True)``'s message_count, polled for up to
60 s since unconfirmed publishes may still be in flight). A wrong count exits with status 1.

Output (stdout; progress and errors on stderr):

    env: <machine, PostgreSQL settings, RabbitMQ/Celery/kombu/celeriac/Python versions>
    round <r>/<R> <system> <N> msgs in <s> s = <rate> msg/s [, all in the queue <ms> ms later]
    ... (one line per measurement; "all in the queue" only for RabbitMQ)
    median <system> <rate> msg/s (rounds: <rate>, <rate>, ...)     # or "<system> not run (...)"
    ratio <a> / <b> = <x> (median of per-round ratios; rounds: <x>, <x>, ...)   # or "... not run"
    {"rounds": ..., "systems": {...}, "ratios": {...}, "env": {...}}  # with --json, the last line

Ratios: send_task / celery-rabbitmq, send_task-nondurable / celery-rabbitmq,
send_many / celery-rabbitmq,
celeriac-transport / celery-rabbitmq, celeriac-transport / celery-sqla (>1: the first is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import celeriac
import celery
import kombu
import psycopg
from celery import Celery
from kombu import Connection

TASK_NAME = "bench.add"
QUEUE = "celery"
#: How long RabbitMQ may take to show all unconfirmed publishes in the queue.
ARRIVAL_TIMEOUT_S = 60.0

SYSTEMS = (
    "send_task",
    "send_task-nondurable",
    "send_many",
    "celeriac-transport",
    "celery-rabbitmq",
    "celery-sqla",
)
RATIOS = (
    ("send_task", "celery-rabbitmq"),
    ("send_task-nondurable", "celery-rabbitmq"),
    ("send_many", "celery-rabbitmq"),
    ("celeriac-transport", "celery-rabbitmq"),
    ("celeriac-transport", "celery-sqla"),
)


class BenchError(Exception):
    """A measurement that did not deliver what it should have."""


def log(message: str) -> None:
    print(f"bench_enqueue: {message}", file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="admin URL of a PostgreSQL server (CREATE DATABASE)")
    parser.add_argument("--amqp-url", help="RabbitMQ URL; without it celery-rabbitmq is not run")
    parser.add_argument("--rounds", type=_positive_int, default=3, help="rounds over all systems (default 3)")
    parser.add_argument("--send-task-n", type=_positive_int, default=20_000, help="messages timed for send_task")
    parser.add_argument("--send-many-n", type=_positive_int, default=100_000, help="messages timed for send_many")
    parser.add_argument("--send-many-batch", type=_positive_int, default=1_000, help="messages per send_many call")
    parser.add_argument("--celery-n", type=_positive_int, default=20_000, help="messages timed per Celery system")
    parser.add_argument("--warmup", type=_non_negative_int, default=200, help="untimed messages before each timing")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return parser.parse_args(argv)


def with_database(url: str, dbname: str) -> str:
    """``url`` (``postgresql://...``) pointing at database ``dbname``."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise SystemExit(f"bench_enqueue: --database-url must be a postgresql:// URL, not {url!r}")
    return urlunsplit(("postgresql", parts.netloc, "/" + dbname, parts.query, ""))


# --- systems ---------------------------------------------------------------------------------


class Target(Protocol):
    """One way of enqueueing, with its queue's counter."""

    key: str
    where: str

    def clear(self) -> None: ...

    def send(self, start: int, count: int) -> None: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


class Sql:
    """An autocommit connection to one benchmark database (counting, truncating)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def scalar(self, query: str) -> Any:
        row = self.conn.execute(query).fetchone()  # type: ignore[arg-type]
        return None if row is None else row[0]

    def execute(self, query: str) -> None:
        self.conn.execute(query)  # type: ignore[arg-type]

    def close(self) -> None:
        self.conn.close()


class SendTask:
    key = "send_task"
    where = "celeriac.message"

    def __init__(self, url: str, durable: bool = True) -> None:
        self.client = celeriac.Client(url, durable=durable)
        self.sql = Sql(url)
        if not durable:
            self.key = "send_task-nondurable"

    def clear(self) -> None:
        self.sql.execute("truncate celeriac.message")

    def send(self, start: int, count: int) -> None:
        send_task = self.client.send_task
        for i in range(start, start + count):
            send_task(TASK_NAME, (i, i))

    def count(self) -> int:
        return int(self.sql.scalar("select count(*) from celeriac.message"))

    def close(self) -> None:
        self.client.close()
        self.sql.close()


class SendMany(SendTask):
    key = "send_many"

    def __init__(self, url: str, batch: int) -> None:
        super().__init__(url)
        self.batch = batch

    def send(self, start: int, count: int) -> None:
        send_many = self.client.send_many
        end = start + count
        for low in range(start, end, self.batch):
            send_many([(TASK_NAME, (i, i)) for i in range(low, min(low + self.batch, end))])


def celery_app(key: str, broker_url: str) -> tuple[Celery, Any]:
    """A Celery app with default settings and the task ``bench.add`` (never run here)."""
    app = Celery(f"bench-{key}", broker=broker_url, set_as_current=False)

    @app.task(name=TASK_NAME, shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app, add


class CeleryTarget:
    """Celery ``apply_async`` on a broker whose queue is a PostgreSQL table."""

    def __init__(self, key: str, broker_url: str, db_url: str, table: str) -> None:
        self.key = key
        self.where = table
        self.table = table
        self.app, self.task = celery_app(key, broker_url)
        self.sql = Sql(db_url)

    def clear(self) -> None:
        # kombu's SQLAlchemy transport creates its tables on first use.
        if self.sql.scalar(f"select to_regclass('{self.table}')") is not None:
            self.sql.execute(f"truncate {self.table}")

    def send(self, start: int, count: int) -> None:
        apply_async = self.task.apply_async
        for i in range(start, start + count):
            apply_async(args=(i, i))

    def count(self) -> int:
        if self.sql.scalar(f"select to_regclass('{self.table}')") is None:
            return 0
        return int(self.sql.scalar(f"select count(*) from {self.table}"))

    def close(self) -> None:
        self.app.close()
        self.sql.close()


class CeleryRabbit:
    """Celery ``apply_async`` on RabbitMQ (py-amqp, default settings: no publisher confirms)."""

    key = "celery-rabbitmq"
    where = f"RabbitMQ queue {QUEUE!r}"

    def __init__(self, amqp_url: str) -> None:
        self.app, self.task = celery_app(self.key, amqp_url)
        # A connection of our own for declaring, purging and counting.
        self.admin = Connection(amqp_url)
        self.admin.ensure_connection(max_retries=3)
        self.channel = self.admin.channel()
        # Celery's own declaration of its default queue (exchange, queue, binding), so the
        # first apply_async finds it as Celery would have declared it.
        self.app.amqp.queues[QUEUE](self.channel).declare()

    def server_version(self) -> str:
        properties = getattr(self.admin.connection, "server_properties", {}) or {}
        version = properties.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)

    def clear(self) -> None:
        self.channel.queue_purge(QUEUE)

    def send(self, start: int, count: int) -> None:
        apply_async = self.task.apply_async
        for i in range(start, start + count):
            apply_async(args=(i, i))

    def count(self) -> int:
        _, message_count, _ = self.channel.queue_declare(QUEUE, passive=True)
        return int(message_count)

    def close(self) -> None:
        self.app.close()
        self.channel.close()
        self.admin.release()


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Measurement:
    round: int
    n: int
    seconds: float
    rate: float
    arrival_s: float  # from the last send returning until the queue showed every message


@dataclass
class Result:
    key: str
    n: int
    not_run: str | None = None
    measurements: list[Measurement] = field(default_factory=list)

    def rates(self) -> list[float]:
        return [m.rate for m in self.measurements]

    def median(self) -> float | None:
        return statistics.median(self.rates()) if self.measurements else None


def measure(
    target: Target, n: int, warmup: int, checkpoint: Callable[[], None], round_no: int, arrival_timeout: float
) -> Measurement:
    target.clear()
    if target.count() != 0:
        raise BenchError(f"{target.key}: {target.where} is not empty after clearing it")
    checkpoint()
    target.send(0, warmup)
    started = time.perf_counter()
    target.send(warmup, n)
    finished = time.perf_counter()
    expected = warmup + n
    deadline = finished + arrival_timeout
    while True:
        seen = target.count()
        if seen >= expected or time.perf_counter() > deadline:
            break
        time.sleep(0.005)
    arrived = time.perf_counter()
    if seen != expected:
        raise BenchError(
            f"{target.key}: expected {expected} messages ({warmup} warm-up + {n}) in {target.where}, found {seen}"
        )
    seconds = finished - started
    return Measurement(round_no, n, seconds, n / seconds, arrived - finished)


def format_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def environment(admin: Sql, rabbit: CeleryRabbit | None) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "postgresql": admin.scalar("select current_setting('server_version')"),
        "fsync": admin.scalar("select current_setting('fsync')"),
        "synchronous_commit": admin.scalar("select current_setting('synchronous_commit')"),
        "rabbitmq": rabbit.server_version() if rabbit is not None else None,
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "celeriac": celeriac.__version__,
        "python": platform.python_version(),
    }


def ratio_rows(results: dict[str, Result], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for a, b in RATIOS:
        ra, rb = results[a], results[b]
        row: dict[str, Any] = {"name": f"{a} / {b}", "median": None, "rounds": None, "not_run": None}
        missing = [r for r in (ra, rb) if r.not_run is not None]
        if missing:
            row["not_run"] = "; ".join(f"{r.key} not run ({r.not_run})" for r in missing)
        else:
            by_round_a = {m.round: m.rate for m in ra.measurements}
            by_round_b = {m.round: m.rate for m in rb.measurements}
            per_round = [by_round_a[r] / by_round_b[r] for r in range(1, rounds + 1)]
            row["rounds"] = per_round
            row["median"] = statistics.median(per_round)
        rows.append(row)
    return rows


def run(opts: argparse.Namespace) -> int:
    suffix = secrets.token_hex(4)
    celeriac_db, sqla_db = f"bench_celeriac_{suffix}", f"bench_sqla_{suffix}"
    admin = Sql(opts.database_url)
    created: list[str] = []
    targets: dict[str, Target] = {}
    try:
        for name in (celeriac_db, sqla_db):
            admin.execute(f"create database {name}")
            created.append(name)
        celeriac_url = with_database(opts.database_url, celeriac_db)
        sqla_url = with_database(opts.database_url, sqla_db)
        with celeriac.Client(celeriac_url) as client:
            client.migrate()
        log(f"databases {celeriac_db} (celeriac schema) and {sqla_db} created")

        results = {
            "send_task": Result("send_task", opts.send_task_n),
            "send_task-nondurable": Result("send_task-nondurable", opts.send_task_n),
            "send_many": Result("send_many", opts.send_many_n),
            "celeriac-transport": Result("celeriac-transport", opts.celery_n),
            "celery-rabbitmq": Result("celery-rabbitmq", opts.celery_n),
            "celery-sqla": Result("celery-sqla", opts.celery_n),
        }
        targets["send_task"] = SendTask(celeriac_url)
        targets["send_task-nondurable"] = SendTask(celeriac_url, durable=False)
        targets["send_many"] = SendMany(celeriac_url, opts.send_many_batch)
        targets["celeriac-transport"] = CeleryTarget(
            "celeriac-transport", "celeriac+" + celeriac_url, celeriac_url, "celeriac.message"
        )
        rabbit: CeleryRabbit | None = None
        if opts.amqp_url:
            rabbit = CeleryRabbit(opts.amqp_url)
            targets["celery-rabbitmq"] = rabbit
        else:
            results["celery-rabbitmq"].not_run = "no --amqp-url"
        sqla_broker = "sqla+" + sqla_url.replace("postgresql://", "postgresql+psycopg://", 1)
        targets["celery-sqla"] = CeleryTarget("celery-sqla", sqla_broker, sqla_url, "kombu_message")

        env = environment(admin, rabbit)
        print(
            f"env: {env['cores']} cores; PostgreSQL {env['postgresql']} (fsync={env['fsync']}, "
            f"synchronous_commit={env['synchronous_commit']}); RabbitMQ {env['rabbitmq'] or 'not run'}; "
            f"celery {env['celery']}, kombu {env['kombu']}, celeriac {env['celeriac']}, Python {env['python']}; "
            f"warm-up {opts.warmup} msgs; send_many batch {opts.send_many_batch}",
            flush=True,
        )

        def checkpoint() -> None:
            admin.execute("checkpoint")

        order = [key for key in SYSTEMS if key in targets]
        for round_no in range(1, opts.rounds + 1):
            shift = (round_no - 1) % len(order)
            for key in order[shift:] + order[:shift]:
                result = results[key]
                log(f"round {round_no}/{opts.rounds}: {key}, {result.n} messages")
                m = measure(targets[key], result.n, opts.warmup, checkpoint, round_no, ARRIVAL_TIMEOUT_S)
                result.measurements.append(m)
                arrival = f", all in the queue {m.arrival_s * 1000:.0f} ms later" if key == "celery-rabbitmq" else ""
                print(
                    f"round {round_no}/{opts.rounds} {key:<18} {m.n:>7} msgs in {m.seconds:7.2f} s = "
                    f"{format_rate(m.rate):>7} msg/s{arrival}",
                    flush=True,
                )
                targets[key].clear()

        for key in SYSTEMS:
            result = results[key]
            median = result.median()
            if median is None:
                print(f"median {key:<18} not run ({result.not_run})")
            else:
                rounds = ", ".join(format_rate(r) for r in result.rates())
                print(f"median {key:<18} {format_rate(median):>7} msg/s (rounds: {rounds})")
        ratios = ratio_rows(results, opts.rounds)
        for row in ratios:
            if row["median"] is None:
                print(f"ratio {row['name']:<39} not run: {row['not_run']}")
            else:
                rounds = ", ".join(f"{r:.2f}" for r in row["rounds"])
                print(f"ratio {row['name']:<39} {row['median']:6.2f} (median of per-round ratios; rounds: {rounds})")
        if opts.json:
            summary = {
                "rounds": opts.rounds,
                "warmup": opts.warmup,
                "send_many_batch": opts.send_many_batch,
                "systems": {
                    key: {
                        "n": r.n,
                        "median_rate": r.median(),
                        "rates": r.rates(),
                        "seconds": [m.seconds for m in r.measurements],
                        "arrival_seconds": [m.arrival_s for m in r.measurements],
                        "not_run": r.not_run,
                    }
                    for key, r in results.items()
                },
                "ratios": {row["name"]: {k: row[k] for k in ("median", "rounds", "not_run")} for row in ratios},
                "env": env,
            }
            print(json.dumps(summary, sort_keys=True))
        return 0
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        for target in targets.values():
            try:
                target.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the result or skip the drops
                log(f"closing {target.key}: {exc.__class__.__name__}: {exc}")
        for name in created:
            admin.execute(f"drop database if exists {name} with (force)")
        admin.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
