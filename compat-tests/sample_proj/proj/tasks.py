"""Tasks that exercise a Celery worker's semantics; every side effect goes to the signal log
(``PROJ_SIGNAL_LOG``) so the tests can observe it from outside the worker."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

from celery import Task, chain, signals
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from celery.utils.log import get_task_logger

from proj.celery import app

logger = get_task_logger(__name__)
plain_logger = logging.getLogger("proj.plain")


def record(event: str, **fields: Any) -> None:
    """Appends one JSON line to the signal log (one write: lines of concurrent processes do
    not interleave)."""
    path = os.environ.get("PROJ_SIGNAL_LOG")
    if not path:
        return
    line = json.dumps({"event": event, "pid": os.getpid(), **fields}, default=repr) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# --- basics -----------------------------------------------------------------------------------


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def noop() -> None:
    return None


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task
def on_error(request: Any, exc: BaseException, traceback: Any, tag: str = "") -> None:
    """An errback in the form Celery documents, ``(request, exc, traceback)``: Celery calls it
    in-process; it records what it was given."""
    record(
        "errback",
        tag=tag,
        request_id=request.id,
        request_task=request.task,
        request_args=list(request.args or ()),
        exc_type=type(exc).__name__,
        exc_args=list(exc.args),
        traceback=str(traceback),
    )


@app.task
def on_error_id(task_id: str) -> None:
    """An errback taking the failed task's id (Celery publishes it with the id)."""
    record("errback_id", task_id=task_id)


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(bind=True, max_retries=5)
def retry_until(self: Task, succeed_at: int) -> dict[str, Any]:
    record("retry_until", task_id=self.request.id, retries=self.request.retries)
    if self.request.retries < succeed_at:
        raise self.retry(countdown=0.2)
    return {"retries": self.request.retries, "id": self.request.id}


@app.task(bind=True, max_retries=2)
def retry_forever(self: Task) -> None:
    raise self.retry(countdown=0.1)


@app.task(
    bind=True,
    autoretry_for=(KeyError,),
    retry_backoff=1,
    retry_backoff_max=4,
    retry_jitter=False,
    max_retries=2,
)
def autoretry(self: Task) -> None:
    record("autoretry", task_id=self.request.id, retries=self.request.retries, at=time.time())
    raise KeyError("always")


@app.task(bind=True)
def progress(self: Task, steps: int) -> int:
    for i in range(steps):
        self.update_state(state="PROGRESS", meta={"current": i + 1, "total": steps})
        # What a client polling AsyncResult sees while the task runs.
        seen = self.AsyncResult(self.request.id)
        record("progress", task_id=self.request.id, state=seen.state, info=seen.info)
    return steps


class HookedTask(Task):
    """A base class with every hook Celery calls."""

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        record("before_start", task_id=task_id)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        record("on_success", task_id=task_id, retval=retval)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        record("on_failure", task_id=task_id, exc=type(exc).__name__)

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        record("on_retry", task_id=task_id, exc=type(exc).__name__)

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        record("after_return", task_id=task_id, status=status)


@app.task(base=HookedTask, bind=True, max_retries=1)
def hooked(self: Task, mode: str) -> str:
    if mode == "fail":
        raise RuntimeError("hooked failure")
    if mode == "retry" and self.request.retries == 0:
        raise self.retry(countdown=0.1)
    return mode


# --- request context and publishing -----------------------------------------------------------


@app.task(bind=True)
def request_info(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    r = self.request
    return {
        "id": r.id,
        "retries": r.retries,
        "eta": r.eta,
        "expires": r.expires,
        "root_id": r.root_id,
        "parent_id": r.parent_id,
        "group": r.group,
        "delivery_info": r.delivery_info,
        "hostname": r.hostname,
        "args": list(r.args),
        "kwargs": r.kwargs,
        "timelimit": list(r.timelimit) if r.timelimit else None,
        "custom_header": (r.headers or {}).get("custom_header")
        if isinstance(r.headers, dict)
        else getattr(r, "custom_header", None),
        "is_eager": r.is_eager,
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
    }


@app.task
def types_of(*args: Any, **kwargs: Any) -> list[str]:
    """The type names of its arguments as the task received them (keyword ones as ``k=type``)."""
    return [type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in sorted(kwargs.items())]


@app.task(bind=True)
def fan_out(self: Task, n: int) -> list[str]:
    """Publishes subtasks: n ``add`` calls and a chain; returns their ids."""
    ids = [add.delay(i, i).id for i in range(n)]
    c = chain(add.s(1, 1), add.s(10)).apply_async()
    ids.append(c.id)
    return ids


@app.task
def reject_it(requeue: bool) -> None:
    raise Reject("rejected on purpose", requeue=requeue)


@app.task(acks_late=True)
def reject_late(requeue: bool) -> None:
    raise Reject("rejected on purpose", requeue=requeue)


@app.task
def ignore_it() -> None:
    raise Ignore()


@app.task(acks_late=True, acks_on_failure_or_timeout=False)
def fail_late_no_ack() -> None:
    raise ValueError("late failure, not acked")


# --- process behaviour ------------------------------------------------------------------------


@app.task
def pid() -> int:
    return os.getpid()


@app.task
def process_state() -> dict[str, Any]:
    """The pool child as a task sees it: signal dispositions, ``sys.path``, the interpreter."""
    import signal

    return {
        "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
        "sigterm_ignored": signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
        "cwd_on_sys_path": any(os.path.abspath(entry or ".") == os.getcwd() for entry in sys.path),
        "executable": sys.executable,
    }


_leak: list[bytes] = []


@app.task
def leak(mb: int) -> int:
    block = os.urandom(1) * (mb * 1024 * 1024)
    _leak.append(bytearray(block))  # type: ignore[arg-type]
    return os.getpid()


@app.task
def segfault() -> None:
    ctypes.string_at(0)


@app.task
def exit_now(code: int) -> None:
    os._exit(code)


@app.task
def system_exit(code: int) -> None:
    sys.exit(code)


@app.task
def environments() -> dict[str, str]:
    """This process's environment and that of a process it starts, as text."""
    script = "import json, os; print(json.dumps(dict(os.environ)))"
    started = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    with open("/proc/self/environ", "rb") as f:  # the environment as it was at exec
        at_exec = dict(kv.split("=", 1) for kv in f.read().decode(errors="replace").split("\0") if "=" in kv)
    return {"task": json.dumps(dict(os.environ)), "at_exec": json.dumps(at_exec), "subprocess": started.stdout}


@app.task
def hold(seconds: float) -> float:
    record("hold", pid=os.getpid(), seconds=seconds)
    time.sleep(seconds)
    return seconds


@app.task(acks_late=True, reject_on_worker_lost=True)
def exit_late(code: int) -> None:
    record("exit_late", pid=os.getpid())
    os._exit(code)


@app.task(soft_time_limit=0.5)
def soft(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        record("soft_caught")
        return "soft limit caught"
    return "finished"


@app.task(time_limit=0.5)
def hard(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@app.task
def logs(word: str) -> str:
    logger.warning("task logger says %s", word)
    plain_logger.warning("plain logger says %s", word)
    print(f"print says {word}")
    return word


@app.task
def meet(directory: str, name: str, n: int, timeout: float) -> int:
    """Waits until ``n`` tasks have arrived in ``directory``: succeeds only if they run at once."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w"):
        pass
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(directory))} of {n} tasks ran at once")
        time.sleep(0.01)
    return os.getpid()


@app.task
def describe(value: Any) -> str:
    """Says what arrived: a tuple only survives a pickle body."""
    return f"{type(value).__name__}:{sorted(value)!r}"


@app.task(name="examples.add")
def python_examples_add(x: int, y: int) -> str:
    """Same name as a Rust example handler: with ``--example-handlers`` the Rust one runs."""
    return "python"


# --- signals ----------------------------------------------------------------------------------


def _task_id(kwargs: dict[str, Any]) -> Any:
    if kwargs.get("task_id"):
        return kwargs["task_id"]
    sender = kwargs.get("sender")
    request = getattr(sender, "request", None)
    return getattr(request, "id", None)


def _connect(signal: Any, name: str) -> None:
    def receiver(*args: Any, **kwargs: Any) -> None:
        record(f"signal:{name}", task_id=_task_id(kwargs))

    signal.connect(receiver, weak=False)


for _name in (
    "task_prerun",
    "task_postrun",
    "task_success",
    "task_failure",
    "task_retry",
    "task_revoked",
    "worker_init",
    "worker_process_init",
    "worker_ready",
    "worker_shutdown",
    "worker_process_shutdown",
):
    _connect(getattr(signals, _name), _name)


if os.environ.get("PROJ_CHILD_START_DELAY"):
    # A slow app start in pool children (a fault the tests inject): each child is that much
    # longer between its start and its first task.
    def _start_slowly(**_: Any) -> None:
        time.sleep(float(os.environ["PROJ_CHILD_START_DELAY"]))

    signals.worker_process_init.connect(_start_slowly, weak=False)


# --- rate limits (test_rate_limits.py) ---------------------------------------------------------


@app.task(rate_limit="2/s")
def limited(tag: str = "") -> float:
    """Celery's per-worker limit: returns when it started."""
    return time.time()


@app.task(global_rate_limit="2/s")
def limited_globally(tag: str = "") -> float:
    """celeriac's fleet-wide limit (a task option Celery keeps as an attribute)."""
    return time.time()


@app.task
def stamp(tag: str = "") -> float:
    """No limit unless a setting or an operator gives it one."""
    return time.time()
