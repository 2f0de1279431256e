"""The message brokers' processes, for counting their CPU (PostgreSQL's are in ``common``)."""

from __future__ import annotations

import os

from .common import process_tree

#: Process names (``/proc/PID/comm``) of each broker's top process.
BROKER_COMMANDS = {"rabbitmq": ("beam.smp",), "redis": ("redis-server",)}


def broker_pids(server: str) -> list[int]:
    """Every process of the broker (and its children), found by command name."""
    names = BROKER_COMMANDS[server]
    roots = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in names:
                        roots.append(int(entry))
            except OSError:
                pass
    return process_tree(roots)
