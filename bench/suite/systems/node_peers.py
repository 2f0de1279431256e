"""The Node.js peers, from the Node project ``bench/suite/node`` (``npm ci`` there):

- graphile-worker: its schema from ``graphile-worker --schema-only``; the worker is ``run()`` with
  one task (``node/graphile_worker.js``); the producer calls graphile-worker's SQL API from Python,
  ``graphile_worker.add_job`` for one job and ``graphile_worker.add_jobs`` for a batch.
- pg-boss: its schema from its own migrations (``start()``) plus ``createQueue``
  (``node/pgboss_prepare.js``); the worker is ``work()`` (``node/pgboss_worker.js``); pg-boss has
  no Python client, so the producer is a Node child process (``node/pgboss_producer.js``) using
  ``send`` for one job and ``insert`` for a batch, spoken to over a pipe.

Both tasks call ``node/record.js`` (the twin of ``record.py``) with the job's payload ``{"n": n}``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

import psycopg

from ..common import Ctx, Producer, System, stop_processes

#: graphile-worker's task identifier (the worker's task list has this one task).
GRAPHILE_TASK = "record"

GRAPHILE_ADD_JOB = (
    "select id from graphile_worker.add_job(%s, json_build_object('n', %s::bigint))"
)

#: add_jobs takes an array of ``graphile_worker.job_spec`` (identifier, payload, queue_name, run_at,
#: max_attempts, job_key, priority, flags): no queue_name (a named queue runs its jobs one at a time),
#: the rest defaulted as in add_job.
GRAPHILE_ADD_JOBS = """
select count(*) from graphile_worker.add_jobs(array(
    select row(%s, json_build_object('n', n), null, null, null, null, null, null)::graphile_worker.job_spec
    from unnest(%s::bigint[]) as n))
"""


def node_bin() -> str | None:
    return shutil.which("node")


def run_node(ctx: Ctx, args: Sequence[str], what: str) -> None:
    """Runs a Node command to completion; raises with its output's tail when it fails."""
    out = subprocess.run(
        [node_bin() or "node", *args],
        check=False,
        capture_output=True,
        cwd=ctx.work_dir,
        env=ctx.env(),
    )
    if out.returncode != 0:
        tail = (out.stdout + out.stderr).decode(errors="replace")[-1500:]
        raise RuntimeError(f"{what} failed (exit code {out.returncode}): {tail}")


class GraphileProducer(Producer):
    """graphile-worker's SQL API over one autocommit connection: each call is its own transaction."""

    def __init__(self, ctx: Ctx) -> None:
        self.conn: psycopg.Connection[Any] = psycopg.connect(
            ctx.db_url, autocommit=True
        )

    def send(self, numbers: Sequence[int]) -> None:
        if len(numbers) == 1:
            self.conn.execute(GRAPHILE_ADD_JOB, (GRAPHILE_TASK, numbers[0]))
        elif numbers:
            self.conn.execute(GRAPHILE_ADD_JOBS, (GRAPHILE_TASK, list(numbers)))

    def close(self) -> None:
        self.conn.close()


class PgBossProducer(Producer):
    """A long-running ``node pgboss_producer.js``: one JSON array per line in, ``ok`` per line out."""

    def __init__(self, ctx: Ctx, node: str) -> None:
        log = ctx.log("pgboss-producer")
        self.proc = subprocess.Popen(
            [node, str(ctx.node_dir / "pgboss_producer.js")],
            env=ctx.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            cwd=ctx.work_dir,
        )
        log.close()
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if line != word:
            code = self.proc.poll()
            raise RuntimeError(
                f"pg-boss producer answered {line!r} instead of {word!r} (exit code {code}); see pgboss-producer.log"
            )

    def send(self, numbers: Sequence[int]) -> None:
        if not numbers:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(list(numbers)).encode() + b"\n")
        self.proc.stdin.flush()
        self._expect("ok")

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            stop_processes([self.proc], timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class NodePeer(System):
    language = "node"
    server = "postgres"
    #: The npm package (in ``ctx.node_dir/node_modules``).
    package = ""

    def unavailable(self, ctx: Ctx) -> str | None:
        node = node_bin()
        if node is None:
            return "node is not on PATH (Node.js 20 or newer is needed)"
        version = subprocess.run(
            [node, "--version"], check=False, capture_output=True, text=True
        ).stdout.strip()
        if int(version.lstrip("v").partition(".")[0] or 0) < 20:
            return f"node {version} is too old: Node.js 20 or newer is needed"
        if shutil.which("npm") is None:
            return "npm is not on PATH (needed to install the Node peers: npm ci in bench/suite/node)"
        if not (
            ctx.node_dir / "node_modules" / self.package / "package.json"
        ).is_file():
            return f"{self.package} is not installed: run `npm ci` in {ctx.node_dir}"
        return None

    def versions(self, ctx: Ctx) -> dict[str, str]:
        with open(ctx.node_dir / "node_modules" / self.package / "package.json") as f:
            version = json.load(f)["version"]
        node = subprocess.run(
            [node_bin() or "node", "--version"],
            check=False,
            capture_output=True,
            text=True,
        )
        return {self.package: version, "node": node.stdout.strip().lstrip("v")}

    def node(self) -> str:
        node = node_bin()
        assert node is not None, "node is not on PATH"
        return node

    def run_script(self, ctx: Ctx, script: str, **env: str) -> subprocess.Popen[bytes]:
        log = ctx.log(self.name)
        try:
            return subprocess.Popen(
                [self.node(), str(ctx.node_dir / script)],
                env=ctx.env(**env),
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=ctx.work_dir,
            )
        finally:
            log.close()


class GraphileWorker(NodePeer):
    name = "graphile-worker"
    package = "graphile-worker"
    settings = "run(), concurrency C, LISTEN/NOTIFY (2 s poll for future jobs), finished jobs deleted"

    def prepare(self, ctx: Ctx) -> None:
        cli = ctx.node_dir / "node_modules" / "graphile-worker" / "dist" / "cli.js"
        run_node(
            ctx,
            [str(cli), "--connection", ctx.db_url, "--schema-only"],
            "graphile-worker --schema-only",
        )

    def producer(self, ctx: Ctx) -> Producer:
        return GraphileProducer(ctx)

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        # NO_LOG_SUCCESS: graphile-worker's documented switch for its per-job "Completed task" info
        # line (the other systems run at log level WARNING).
        return [self.run_script(ctx, "graphile_worker.js", NO_LOG_SUCCESS="1")]

    def queue_tables(self, ctx: Ctx) -> list[str]:
        return ["graphile_worker._private_jobs"]


class PgBoss(NodePeer):
    package = "pg-boss"

    def __init__(self, name: str = "pg-boss", batch_size: int | None = None) -> None:
        """``batch_size``: work()'s batchSize; None means C (the batch is the C concurrent jobs).
        A bigger batch is fetched in one query and run at most C jobs at a time."""
        self.name = name
        self.batch_size = batch_size
        batch = (
            "batchSize C, batch run at once"
            if batch_size is None
            else f"batchSize {batch_size}, C at a time"
        )
        self.settings = (
            f"work() {batch}; polls every 2 s (no NOTIFY), refetches at once after a full batch "
            "(notifyWorker); completed jobs kept (archived after 12 h)"
        )

    def prepare(self, ctx: Ctx) -> None:
        run_node(
            ctx,
            [str(ctx.node_dir / "pgboss_prepare.js")],
            "pg-boss migrations and createQueue",
        )

    def producer(self, ctx: Ctx) -> Producer:
        return PgBossProducer(ctx, self.node())

    def start_worker(self, ctx: Ctx) -> list[subprocess.Popen[bytes]]:
        extra = (
            {}
            if self.batch_size is None
            else {"BENCH_PGBOSS_BATCH_SIZE": str(self.batch_size)}
        )
        return [self.run_script(ctx, "pgboss_worker.js", **extra)]

    def queue_tables(self, ctx: Ctx) -> list[str]:
        # pg-boss 10 partitions pgboss.job by queue: createQueue makes the table j<sha224(name)>.
        partition = "j" + hashlib.sha224(ctx.queue.encode()).hexdigest()
        return [f"pgboss.{partition}", "pgboss.archive"]


# pg-boss 10 fetches by sorting every ready job (no index serves its order): with work()'s batchSize
# at C it ran 48 tasks/s on a 20,000-task backlog. A batch of 100 (still C at a time) is how a user
# would run a backlog, and what the suite measures.
SYSTEMS = [GraphileWorker(), PgBoss("pg-boss", 100)]
