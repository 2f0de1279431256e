"""celeriac: Celery-compatible task queue in PostgreSQL.

- ``Client``: enqueue tasks (one, or thousands per round trip) into celeriac's queue.
- ``enqueue``: enqueue inside the application's own database transaction.
- ``revoke``: revoke tasks for good (recorded in the database; workers hear it at once).
- The kombu transport ``celeriac+postgresql://``: an unmodified Celery app publishes to, and a
  Python Celery worker consumes from, the same queue that ``celeriac worker`` runs.
"""

from __future__ import annotations

from celeriac import _kombu_entry  # noqa: F401  (registers the kombu transport alias)
from celeriac._native import (
    CeleriacError,
    ConnectError,
    DatabaseError,
    EncodeError,
    EnqueueError,
    Message,
    SchemaMissingError,
    __version__,
)
from celeriac.client import Client, TaskSpec
from celeriac.enqueue import enqueue


def revoke(
    url: str,
    task_ids: str | list[str],
    *,
    terminate: bool = False,
    signal: str | None = None,
    expires: float | None = None,
    control_exchange: str = "celery",
) -> None:
    """Revokes tasks for good on the queue database at ``url`` (see ``Client.revoke``)."""
    with Client(url) as client:
        client.revoke(
            task_ids,
            terminate=terminate,
            signal=signal,
            expires=expires,
            control_exchange=control_exchange,
        )


__all__ = [
    "CeleriacError",
    "Client",
    "ConnectError",
    "DatabaseError",
    "EncodeError",
    "EnqueueError",
    "Message",
    "SchemaMissingError",
    "TaskSpec",
    "__version__",
    "enqueue",
    "revoke",
]
