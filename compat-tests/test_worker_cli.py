"""``celeriac worker`` takes a ``celery worker`` command line as it is: every flag and the
``CELERY_*`` environment variables of ``celery worker`` (and of ``celery`` itself: ``-b``,
``--result-backend``, ``--loader``, ``--config``, ``--workdir``, ``-q``, ``-C``,
``--skip-checks``) are accepted, implemented where they mean something on PostgreSQL, and
warned about in one line where they do not. The README's table lists them all.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from tools.celeriac_testkit import wait_for
from tools.sample_proj import RESULT_TIMEOUT, SAMPLE_PROJ, Proj, ProjWorker, child_pids

EXTRA_TASKS = """
from proj.celery import app


@app.task(name="extra.double")
def double(x):
    return 2 * x
"""


def _worker(celeriac_bin: Path, proj: Proj, tmp_path: Path, name: str, *args: str, **env: str) -> ProjWorker:
    """``celeriac worker ARGS`` in the sample project (no database flag unless given), started
    and ready."""
    worker_env = {**proj.env, "PYTHONPATH": str(tmp_path), **env}
    for unset in ("CELERIAC_DATABASE_URL", "DATABASE_URL", "CELERY_BROKER_URL"):
        if unset not in env:
            worker_env.pop(unset, None)
    worker = ProjWorker([str(celeriac_bin), "worker", "-n", f"{name}@%h", *args], tmp_path / f"{name}.log",
                        cwd=SAMPLE_PROJ, env=worker_env)  # fmt: skip
    worker.wait_for(lambda: "ready." in worker.log(), 60, "the worker to load the app")
    return worker


def test_flags_without_a_meaning_here_are_accepted_with_one_warning_each(
    celeriac_bin: Path, proj: Proj, tmp_path: Path
) -> None:
    worker = _worker(
        celeriac_bin, proj, tmp_path, "accepting",
        "-A", "proj", "--database-url", proj.database_url, "-c", "auto", "-P", "processes", "-O", "fair",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-S", str(tmp_path / "state.db"),
        "--pool-start-method", "fork", "-s", str(tmp_path / "celerybeat-schedule"), "--scheduler",
        "django_celery_beat.schedulers:DatabaseScheduler", "--events", "--heartbeat-interval", "5",
        "--disable-prefetch", "--prefetch-multiplier", "4", "-q", "-C", "--skip-checks",
        "--loader", "celery.loaders.app:AppLoader", "--config", "proj.celery", "-l", "info",
    )  # fmt: skip
    try:
        assert proj.get(proj.send("add", 2, 3)) == 5
    finally:
        worker.stop()
    log = worker.log()
    for flag in ("--without-gossip", "--without-mingle", "-S/--statedb", "--pool-start-method fork",
                 "-s/--schedule-filename", "--scheduler"):  # fmt: skip
        assert sum(1 for line in log.splitlines() if "WARN" in line and flag in line) == 1, (flag, log)
    assert not os.path.exists(tmp_path / "state.db")
    assert "[config]" not in log, "-q: no banner"


def test_the_start_up_banner_shows_what_celerys_does(celeriac_bin: Path, proj: Proj, tmp_path: Path) -> None:
    worker = _worker(
        celeriac_bin, proj, tmp_path, "banner",
        "-A", "proj", "--database-url", proj.database_url, "-c", "2", "-Q", "celery,extra", "-l", "INFO",
    )  # fmt: skip
    try:
        log = worker.log()
    finally:
        worker.stop()
    banner = log.split("ready.")[0]
    top = next(line for line in banner.splitlines() if line.startswith(" -------------- banner@"))
    assert "(celeriac; Celery 5." in top, banner
    assert re.search(r"^- \*\* ---------- \.> app:         proj:0x[0-9a-f]+$", banner, re.MULTILINE), banner
    assert ".> transport:   postgresql://" in banner, banner
    # The app's backend as Celery names it (`as_uri()`), its password masked.
    results = r"^- \*\* ---------- \.> results:     postgresql\+psycopg://\w+:\*\*@"
    assert re.search(results, banner, re.MULTILINE), banner
    assert ".> concurrency: 2 (prefork)\n" in banner, banner
    assert ".> task events: OFF (enable -E to monitor tasks in this worker)\n" in banner, banner
    assert ".> celery           exchange=celery(direct) key=celery\n" in banner, banner
    assert ".> extra            exchange=extra(direct) key=extra\n" in banner, banner
    # At INFO the app's tasks, not Celery's own.
    tasks = banner.split("[tasks]\n")[1].split("\n\n")[0].splitlines()
    assert "  . proj.tasks.add" in tasks, banner
    assert tasks == sorted(tasks), banner
    assert not any(t.startswith("  . celery.") for t in tasks), banner
    password = urlsplit(proj.database_url).password
    assert password, proj.database_url
    assert password not in log, "the banner shows no password"


def test_queues_purge_include_broker_and_environment(celeriac_bin: Path, proj: Proj, tmp_path: Path) -> None:
    (tmp_path / "extra_tasks.py").write_text(EXTRA_TASKS)
    stale = proj.send("add", 1, 1)
    assert proj.query("select count(*) from celeriac.message")[0][0] == 1
    # No database flag: -b gives it. The app and the concurrency come from Celery's variables.
    worker = _worker(
        celeriac_bin, proj, tmp_path, "purging",
        "-b", f"celeriac+{proj.database_url}", "--purge", "-Q", "celery,other", "-X", "other",
        "-I", "extra_tasks",
        CELERY_APP="proj", CELERY_WORKER_CONCURRENCY="3",
    )  # fmt: skip
    try:
        assert "purge: Erased 1 message from the queue." in worker.log()
        assert proj.query("select queues, concurrency from celeriac.worker where hostname like %s", "purging@%") == [
            (["celery"], 3)
        ]
        assert proj.get(proj.app.send_task("extra.double", args=(21,))) == 42
        assert stale.state == "PENDING"  # purged, never ran
    finally:
        worker.stop()

    # No database flag at all: the app's own broker_url, as `celery worker` uses it.
    worker = _worker(
        celeriac_bin, proj, tmp_path, "appbroker", "-A", "proj", PROJ_BROKER_URL=f"celeriac+{proj.database_url}"
    )
    try:
        assert proj.get(proj.send("add", 4, 4)) == 8
    finally:
        worker.stop()

    # A broker that is not celeriac's is refused with the reason.
    done = subprocess.run(
        [str(celeriac_bin), "worker", "-A", "proj", "-b", "amqp://guest@localhost//"],
        cwd=SAMPLE_PROJ, env=proj.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "-b/--broker must be a celeriac+postgresql:// URL" in done.stderr


def test_logfile_pidfile_umask_and_privileges(celeriac_bin: Path, proj: Proj, tmp_path: Path) -> None:
    logfile, pidfile = tmp_path / "logs" / "w1.log", tmp_path / "w1.pid"
    logfile.parent.mkdir()
    argv = [
        str(celeriac_bin), "worker", "-A", "proj", "--database-url", proj.database_url, "-n", "w1@%h",
        "-c", "1", "--logfile", str(tmp_path / "logs" / "%n.log"), "--pidfile", str(tmp_path / "%n.pid"),
        "--umask", "077", "--uid", str(os.getuid()), "--gid", str(os.getgid()),
    ]  # fmt: skip
    # Everything goes to the log file: what the process itself writes to stderr stays empty.
    worker = ProjWorker(argv, tmp_path / "w1.stderr", cwd=SAMPLE_PROJ, env=proj.env)
    try:
        worker.wait_for(lambda: logfile.exists() and "ready." in logfile.read_text(), 60, "ready in the log file")
        assert pidfile.read_text().strip() == str(worker.proc.pid)
        assert stat.S_IMODE(logfile.stat().st_mode) == 0o600
        assert proj.get(proj.send("add", 1, 2)) == 3
        # The pool's children log there too (Celery's "succeeded" line comes from the child).
        wait_for(lambda: "succeeded in" in logfile.read_text(), RESULT_TIMEOUT, "the child's log line")
        # A second worker with the same pid file refuses to start.
        second = subprocess.run(
            [str(celeriac_bin), "worker", "-A", "proj", "--database-url", proj.database_url, "-n", "w1@%h",
             "--pidfile", str(tmp_path / "%n.pid")],
            cwd=SAMPLE_PROJ, env=proj.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"Pidfile ({pidfile}) already exists." in second.stderr
        assert f"(pid: {worker.proc.pid})" in second.stderr
    finally:
        worker.stop()
    assert not pidfile.exists()
    # Only the start-up banner (Celery prints it to standard output whatever the log file).
    out = worker.log()
    assert "[config]" in out, out
    assert not any(word in out for word in ("ready.", "WARN", "ERROR")), out
    # A user that does not exist: refused before anything starts.
    done = subprocess.run(
        [str(celeriac_bin), "worker", "--database-url", proj.database_url, "--uid", "no-such-user-celeriac"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert 'no such user: "no-such-user-celeriac"' in done.stderr


def test_detach_runs_in_the_background_until_signalled(celeriac_bin: Path, proj: Proj, tmp_path: Path) -> None:
    logfile, pidfile = tmp_path / "bg.log", tmp_path / "bg.pid"
    # A relative --workdir (applied once, by the detached copy) and -D among other short flags.
    done = subprocess.run(
        [str(celeriac_bin), "worker", "-A", "proj", "--database-url", proj.database_url, "-c", "1", "-n", "bg@%h",
         "-ED", "--workdir", SAMPLE_PROJ.name, "--logfile", str(logfile), "--pidfile", str(pidfile)],
        cwd=SAMPLE_PROJ.parent, env=proj.env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wait_for(lambda: logfile.exists() and "ready." in logfile.read_text(), 60, "the detached worker to be ready")
    pid = int(pidfile.read_text())
    assert os.getsid(pid) == pid  # a session of its own, no terminal
    try:
        assert proj.get(proj.send("add", 20, 22)) == 42
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pidfile.exists(), 30, "the detached worker to stop and remove its pid file")
    assert "Warm shutdown" in logfile.read_text()


def test_autoscale_grows_the_pool_under_load_and_shrinks_it_after(
    celeriac_bin: Path, proj: Proj, tmp_path: Path
) -> None:
    worker = _worker(
        celeriac_bin, proj, tmp_path, "scaling", "-A", "proj", "--database-url", proj.database_url,
        "--autoscale", "3,1",
    )  # fmt: skip
    try:
        children: Callable[[], int] = lambda: len(child_pids(worker))  # noqa: E731
        assert children() == 1
        results = [proj.send("sleep", 3) for _ in range(6)]
        worker.wait_for(lambda: children() == 3, RESULT_TIMEOUT, "the pool to grow to 3")
        for result in results:
            proj.get(result)
        # Celery's keepalive: no shrinking within 30 s of growing.
        worker.wait_for(lambda: children() == 1, 90, "the pool to shrink back to 1")
        assert "Scaling up" in worker.log()
        assert "Scaling down" in worker.log()
    finally:
        worker.stop()
