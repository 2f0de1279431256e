"""What every benchmark task does: append ``"<n> <unix ns>\\n"`` to this process's record file.

The driver reads the files of a measurement to check that every task ran exactly once and to
time completions (steady-state latency is the record time minus the send time). Every system
does this same write per task, so "no-op" costs the same everywhere: one ``write`` syscall on a
file opened once per process (reopened after a fork).
"""

from __future__ import annotations

import os
import time

_fd = -1
_pid = -1


def record(n: int) -> None:
    """Appends one line for task ``n`` to ``$BENCH_RECORD_DIR/<pid>.log``."""
    global _fd, _pid
    pid = os.getpid()
    if pid != _pid:
        path = os.path.join(os.environ["BENCH_RECORD_DIR"], f"{pid}.log")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _pid = pid
    os.write(_fd, f"{n} {time.time_ns()}\n".encode())
