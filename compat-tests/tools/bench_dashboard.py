"""The dashboard on a big database: response times of every page and search, and the database's
load while one browser keeps the overview open.

Seeds a fresh database (default 5,000,000 queued messages over four queues, 10,000,000
``celery_taskmeta`` rows with extended columns, 100,000 dead letters), starts ``celeriac
dashboard`` on it, requests each page ``--requests`` times in turn and prints p50, p95 and max
per page as a markdown table; then reloads the overview every 10 s for ``--idle-seconds`` (what
the page's own refresh does) and prints the transactions and rows the database served per
reload. Used by ``scripts/bench-dashboard``; the figures go in the README and the notes, never
in tests.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

ENVELOPE = (
    b'{"body": "W1s0LCA0XSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwg'
    b'ImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", '
    b'"headers": {"lang": "py", "task": "proj.tasks.add", "id": "ID", "retries": 0, "root_id": "ID", '
    b'"parent_id": null, "group": null, "argsrepr": "(4, 4)", "kwargsrepr": "{}"}, '
    b'"properties": {"correlation_id": "ID", "delivery_mode": 2, "delivery_info": {"exchange": "", '
    b'"routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "t"}}'
)

TASKMETA = """
create sequence if not exists task_id_sequence;
create table celery_taskmeta (
    id integer not null primary key default nextval('task_id_sequence'),
    task_id varchar(155) unique, status varchar(50), result bytea, date_done timestamp,
    traceback text, children bytea, name varchar(155), args bytea, kwargs bytea,
    worker varchar(155), retries integer, queue varchar(155));
"""


def seed(url: str, messages: int, results: int, dead: int) -> dict[str, str]:
    """Fills the database; returns ids and names the page requests use."""
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.monotonic()
        # Four queues: most messages in one, a tenth of another's delayed, some held.
        # As enqueues write them: eta = created_at for a message that runs now (so only the
        # delayed ones, 2 %, are in the delayed-task index), eta an hour ahead for the others.
        conn.execute(
            """insert into celeriac.message (queue, task_name, task_id, eta, payload, created_at)
               select case when g %% 100 < 80 then 'celery' when g %% 100 < 96 then 'emails'
                           when g %% 100 < 99 then 'reports' else 'slow' end,
                      'proj.tasks.t' || (g %% 20), gen_random_uuid()::text,
                      case when g %% 100 between 80 and 81 then now() + interval '1 hour' else t end,
                      %s, t
               from generate_series(1, %s) g, lateral (select now() - make_interval(secs => (%s - g) / 1000.0) t) c""",
            (ENVELOPE, messages, messages),
        )
        conn.execute(
            """update celeriac.message set leased_by = gen_random_uuid(), lease_expires = now() + interval '1 hour'
               where id in (select id from celeriac.message where queue = 'slow' limit 2000)"""
        )
        print(f"seed: {messages:,} messages in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        t0 = time.monotonic()
        conn.execute(TASKMETA)
        conn.execute(
            """insert into celery_taskmeta (task_id, status, result, date_done, traceback, name, args, kwargs,
                                            worker, retries, queue)
               select gen_random_uuid()::text, case when g %% 20 = 0 then 'FAILURE' else 'SUCCESS' end,
                      convert_to('{"value": ' || g || '}', 'UTF8'),
                      (now() - make_interval(secs => (%s - g) / 100.0)) at time zone 'UTC',
                      case when g %% 20 = 0 then 'Traceback (most recent call last):\n  ValueError: boom' end,
                      'proj.tasks.t' || (g %% 20), convert_to('[4, 4]', 'UTF8'), convert_to('{}', 'UTF8'),
                      'celery@bench', 0, 'celery'
               from generate_series(1, %s) g""",
            (results, results),
        )
        print(f"seed: {results:,} result rows in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        conn.execute(
            """insert into celeriac.dead_letter (queue, task_name, task_id, payload, reason_code, reason)
               select case when g %% 2 = 0 then 'celery' else 'emails' end, 'proj.tasks.t' || (g %% 20),
                      gen_random_uuid()::text, %s,
                      case when g %% 3 = 0 then 'not_registered' else 'rejected' end, 'seeded'
               from generate_series(1, %s) g""",
            (ENVELOPE, dead),
        )
        conn.execute("vacuum analyze")
        (finished,) = conn.execute("select task_id from celery_taskmeta where id = %s", (results // 2,)).fetchone() or (
            "",
        )
        (failed,) = conn.execute(
            "select task_id from celery_taskmeta where status = 'FAILURE' order by id desc limit 1"
        ).fetchone() or ("",)
        (queued,) = conn.execute(
            "select task_id from celeriac.message where queue = 'reports' order by id limit 1"
        ).fetchone() or ("",)
        (delayed,) = conn.execute(
            "select task_id from celeriac.message where eta > now() order by id desc limit 1"
        ).fetchone() or ("",)
        size = conn.execute(
            "select pg_size_pretty(pg_total_relation_size('celeriac.message')), "
            "pg_size_pretty(pg_total_relation_size('celery_taskmeta'))"
        ).fetchone()
        print(f"seed: message table {size[0]}, celery_taskmeta {size[1]}", file=sys.stderr)
    return {"finished": finished, "failed": failed, "queued": queued, "delayed": delayed}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fetch(url: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, (time.perf_counter() - t0) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="an empty database (it is filled)")
    parser.add_argument("--celeriac", required=True, help="the celeriac binary")
    parser.add_argument("--messages", type=int, default=5_000_000)
    parser.add_argument("--results", type=int, default=10_000_000)
    parser.add_argument("--dead-letters", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--idle-seconds", type=int, default=60)
    args = parser.parse_args()

    subprocess.run([args.celeriac, "migrate", "--database-url", args.database_url], check=True, capture_output=True)
    ids = seed(args.database_url, args.messages, args.results, args.dead_letters)
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-dashboard-{port}.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [args.celeriac, "dashboard", "--database-url", args.database_url, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if fetch(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the dashboard did not start; see {log}")
            time.sleep(0.1)
        pages = [
            ("overview", "/"),
            ("queues", "/queues"),
            ("workers", "/workers"),
            ("schedules", "/schedules"),
            ("metrics", "/metrics"),
            ("tasks, no filter", "/tasks"),
            ("tasks, 2nd page", "/tasks?before=2500000&rbefore=5000000"),
            ("tasks by name", "/tasks?name=proj.tasks.t7"),
            ("tasks by name, rare", "/tasks?name=proj.tasks.nothing"),
            ("tasks delayed in a queue", "/tasks?state=delayed&queue=emails"),
            ("tasks FAILURE", "/tasks?state=FAILURE"),
            ("task page, finished", f"/tasks/{ids['finished']}"),
            ("task page, failed", f"/tasks/{ids['failed']}"),
            ("task page, delayed", f"/tasks/{ids['delayed']}"),
            ("task page, ready (scan)", f"/tasks/{ids['queued']}"),
            ("dead letters", "/dead-letters"),
            ("dead letters by reason", "/dead-letters?reason=not_registered&queue=emails"),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in pages}
        statuses: dict[str, set[int]] = {name: set() for name, _ in pages}
        for _name, path in pages:  # warm-up: one of each
            fetch(base + path)
        for _ in range(args.requests):
            for name, path in pages:
                # Past the 2 s cache of per-queue counts for every overview request.
                if path in ("/", "/queues", "/metrics"):
                    time.sleep(2.1 / 3)
                status, ms = fetch(base + path)
                statuses[name].add(status)
                times[name].append(ms)
        print(
            f"\n{args.messages:,} queued messages, {args.results:,} result rows, {args.dead_letters:,} dead letters; "
            f"{args.requests} requests per page\n"
        )
        print("| page | p50 ms | p95 ms | max ms | status |")
        print("|---|---|---|---|---|")
        for name, _ in pages:
            t = sorted(times[name])
            p95 = t[min(len(t) - 1, round(0.95 * (len(t) - 1)))]
            print(f"| {name} | {statistics.median(t):.0f} | {p95:.0f} | {t[-1]:.0f} | {sorted(statuses[name])} |")

        # One browser on the overview: a reload every 10 s.
        with psycopg.connect(args.database_url, autocommit=True) as conn:

            def counters() -> tuple[int, int, int]:
                row = conn.execute(
                    "select xact_commit + xact_rollback, tup_returned + tup_fetched, blks_hit + blks_read "
                    "from pg_stat_database where datname = current_database()"
                ).fetchone()
                assert row is not None
                return row[0], row[1], row[2]

            conn.execute("select pg_stat_clear_snapshot()")
            before = counters()
            reloads = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.idle_seconds:
                fetch(base + "/")
                reloads += 1
                time.sleep(10)
            time.sleep(1)
            conn.execute("select pg_stat_clear_snapshot()")
            after = counters()
        n = max(reloads, 1)
        print(
            f"\nidle, one browser on the overview ({reloads} reloads in {args.idle_seconds} s): per reload "
            f"{(after[0] - before[0]) / n:.0f} transactions, {(after[1] - before[1]) / n:,.0f} rows read, "
            f"{(after[2] - before[2]) / n:,.0f} buffer pages touched"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
