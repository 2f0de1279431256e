"""celeriac: Celery-compatible task queue in PostgreSQL.

- ``Client``: enqueue tasks (one, or thousands per round trip) into celeriac's queue.
- ``enqueue``: enqueue inside the application's own database transaction.
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
]
