"""A chord of N no-op header tasks: the time from ``chord(header)(body)`` until the body's result
is readable, for

* **celeriac**: ``celeriac worker --example-handlers -c 2`` running the header (``examples.noop``)
  and the body (``examples.echo``) as Rust handlers, results in ``celery_taskmeta`` on the queue
  database, the chord counted by ``celery.chord_unlock``, which the worker runs itself; the
  producer is an unmodified Celery 5.7 app on celeriac's kombu transport;
* **Celery on Redis**: ``celery worker -P prefork -c 2`` running the same task names in Python,
  with Redis as broker and result backend (Celery's native chord counting in Redis keys), the
  common native-chord setup.

The body is waited for through its own ``AsyncResult`` (the chord's result without its parent
group, whose ``get()`` would query every header member on each poll). Both systems run on this
machine, one after the other in each round (the order alternates), on a
fresh database or an empty Redis each time. Each run checks the body's result: a list of N
``None``s, so a wrong answer cannot be fast. Prints one line per run and the ratio per round
(Celery's time / celeriac's: above 1, celeriac is faster).

    python bench_chord.py --database-url ADMIN_URL --redis-server PATH --celeriac-bin PATH [--size N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

APP = """
from celery import Celery

app = Celery("chordbench", broker={broker!r}, backend={backend!r})
app.conf.update(worker_prefetch_multiplier=4, result_expires=3600)


@app.task(name="examples.noop")
def noop():
    return None


@app.task(name="examples.echo")
def echo(value):
    return value
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"bench_chord: timed out waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_chord(app_dir: Path, broker: str, backend: str, size: int) -> float:
    """Sends the chord from a fresh client process and returns the seconds until the body's result."""
    code = f"""
import sys, time
sys.path.insert(0, {str(app_dir)!r})
from celery import Celery, chord, signature
app = Celery("client", broker={broker!r}, backend={backend!r}, set_as_current=False)
noop = signature("examples.noop", app=app)
echo = signature("examples.echo", app=app)
started = time.perf_counter()
result = chord([noop.clone() for _ in range({size})])(echo)
# The body's own result: an AsyncResult without the header as its parent, whose get() would
# check the {size} members' states on every poll (one query each on the database backend).
value = app.AsyncResult(result.id).get(timeout=600, interval=0.05)
elapsed = time.perf_counter() - started
assert value == [None] * {size}, (type(value), len(value) if isinstance(value, list) else value)
print(elapsed)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=900)
    return float(out.stdout.strip().splitlines()[-1])


def celeriac_run(admin_url: str, celeriac_bin: Path, size: int, log_dir: Path) -> float:
    dbname = f"chordbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{dbname}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{dbname}"
    try:
        subprocess.run([str(celeriac_bin), "migrate", "--database-url", url], check=True, capture_output=True)
        backend = "db+" + url.replace("postgresql://", "postgresql+psycopg://", 1)
        log = open(log_dir / "celeriac-worker.log", "ab")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(
            [
                str(celeriac_bin),
                "worker",
                "--database-url",
                url,
                "--example-handlers",
                "-c",
                "2",
                "--result-backend",
                f"db+{url}",
                "-l",
                "WARNING",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # The worker creates celery_taskmeta at start; the client's engine must not race it.
            def table_ready() -> bool:
                with psycopg.connect(url) as c:
                    row = c.execute("select to_regclass('celery_taskmeta') is not null").fetchone()
                return bool(row and row[0])

            wait_until(table_ready, 30, "the worker to create celery_taskmeta")
            return run_chord(log_dir, f"celeriac+{url}", backend, size)
        finally:
            stop(worker)
            log.close()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{dbname}" with (force)')


def celery_run(redis_server: str, size: int, log_dir: Path) -> float:
    port = free_port()
    redis_dir = Path(tempfile.mkdtemp(prefix="chordbench-redis-", dir=log_dir))
    redis_log = open(log_dir / "redis.log", "ab")  # noqa: SIM115 - closed below
    redis = subprocess.Popen(
        [
            redis_server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(redis_dir),
        ],
        stdout=redis_log,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    app_dir = Path(tempfile.mkdtemp(prefix="chordbench-app-", dir=log_dir))
    (app_dir / "chordbench.py").write_text(APP.format(broker=url, backend=url))
    try:
        import redis as redis_client

        client = redis_client.Redis(host="127.0.0.1", port=port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis_client.ConnectionError:
                return False

        wait_until(up, 10, "redis-server")
        log_path = log_dir / "celery-worker.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed below
        env = {**os.environ, "PYTHONPATH": str(app_dir)}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "chordbench",
                "worker",
                "-P",
                "prefork",
                "-c",
                "2",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "INFO",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=app_dir,
        )
        try:
            wait_until(lambda: b" ready." in log_path.read_bytes(), 60, "the Celery worker")
            return run_chord(app_dir, url, url, size)
        finally:
            stop(worker)
            log.close()
    finally:
        stop(redis)
        redis_log.close()
        shutil.rmtree(redis_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="admin URL of a PostgreSQL (…/postgres)")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--celeriac-bin", type=Path, required=True)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-chord-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"chord of {args.size} no-op header tasks, -c 2, time until the body's result (logs in {log_dir})")
    ratios = []
    for round_ in range(1, args.rounds + 1):
        order = ["celeriac", "celery"] if round_ % 2 else ["celery", "celeriac"]
        times = {}
        for system in order:
            if system == "celeriac":
                times[system] = celeriac_run(args.database_url, args.celeriac_bin, args.size, log_dir)
            else:
                times[system] = celery_run(args.redis_server, args.size, log_dir)
            print(f"round {round_} {system:<9} {times[system]:8.2f} s", flush=True)
        ratio = times["celery"] / times["celeriac"]
        ratios.append(ratio)
        print(f"round {round_} Celery on Redis / celeriac: {ratio:.2f}", flush=True)
    print("ratios: " + ", ".join(f"{r:.2f}" for r in ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
