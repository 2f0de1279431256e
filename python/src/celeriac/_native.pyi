"""Type stubs of ``celeriac._native``, the Rust extension (conversion and database access)."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__version__: str
#: The single-row enqueue for DB-API drivers: seven ``%s`` parameters, see ``Message.dbapi_params``.
MESSAGE_INSERT_SQL: str
#: The version of the frames between a worker and its pool children (celeriac._pool_child).
POOL_PROTOCOL: int

class CeleriacError(Exception):
    """Base class of every error celeriac raises."""

class EncodeError(CeleriacError):
    """A task could not be encoded; nothing was written."""

class DatabaseError(CeleriacError):
    """PostgreSQL failed or refused a statement."""

class ConnectError(DatabaseError):
    """The database could not be reached (refused, timed out, bad URL or credentials)."""

class SchemaMissingError(DatabaseError):
    """celeriac's tables are not in this database: run ``celeriac migrate``."""

class EnqueueError(DatabaseError):
    """An enqueue failed; nothing of it was written."""

class Message:
    """One encoded message: the envelope plus the columns the queue table indexes."""

    @property
    def task_id(self) -> str | None: ...
    @property
    def task_name(self) -> str | None: ...
    @property
    def queue(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def eta(self) -> str | None: ...
    @property
    def expires(self) -> str | None: ...
    @property
    def payload(self) -> bytes: ...
    def dbapi_params(
        self,
    ) -> tuple[str, int, str | None, str | None, str | None, str | None, bytes]: ...

def encode_task(
    name: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue: str = "celery",
    countdown: float | None = None,
    eta: datetime | None = None,
    expires: float | datetime | None = None,
    priority: int | None = None,
    task_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    ignore_result: bool = False,
    shadow: str | None = None,
    retries: int = 0,
    parent_id: str | None = None,
    root_id: str | None = None,
    origin: str = "celeriac",
    reply_to: str | None = None,
    serializer: str = "json",
) -> Message: ...
def encode_simple(items: list[Any], origin: str, reply_to: str | None) -> list[Message | None]: ...
def message_from_envelope(payload: bytes, queue: str | None = None) -> Message: ...

class Store:
    """A pool of connections to a database holding celeriac's schema (fork-safe)."""

    def __init__(
        self, url: str, *, max_connections: int = 4, connect_timeout: float = 5.0
    ) -> None: ...
    def migrate(self) -> list[int]: ...
    def check(self) -> None: ...
    def insert(self, message: Message, *, durable: bool = True) -> int: ...
    def begin_insert(self, *, durable: bool = True) -> InsertStream: ...
    def ready_count(self, queue: str) -> int: ...
    def purge(self, queue: str) -> int: ...
    def schedule_beat_claim(self, name: str) -> tuple[str, float | None]: ...
    def broadcast_publish(
        self,
        exchange: str,
        routing_key: str,
        payload: bytes,
        *,
        revoke: dict[str, Any] | None = None,
    ) -> int: ...
    def broadcast_read(
        self, exchanges: Sequence[str], after: int, limit: int
    ) -> list[tuple[int, str, str, bytes]]: ...
    def broadcast_head(self) -> int: ...
    def revoke(
        self,
        task_ids: Sequence[str],
        *,
        terminate: bool = False,
        signal: str | None = None,
        expires: float | None = None,
        namespace: str = "celery",
    ) -> int: ...
    def close(self) -> None: ...

class InsertStream:
    """One transaction of inserts written in the background; nothing is visible until commit."""

    def add(self, messages: Sequence[Message]) -> None: ...
    def commit(self) -> int: ...
    def abort(self) -> None: ...

class Consumer:
    """A registered consumer: leased claims, heartbeats, batched acks."""

    def __init__(
        self,
        store: Store,
        hostname: str,
        *,
        concurrency: int = 1,
        lease_seconds: float = 30.0,
        max_redeliveries: int = 3,
    ) -> None: ...
    @property
    def id(self) -> str: ...
    def claim(
        self, queues: Sequence[str], limit: int
    ) -> list[tuple[int, int, bool, str, bytes, bool]]: ...
    def ack(self, id: int, attempt: int) -> None: ...
    def expired(self, id: int, attempt: int) -> bool: ...
    def flush(self, timeout: float | None = 10.0) -> bool: ...
    def requeue(self, id: int, attempt: int) -> bool: ...
    def restore(self, id: int, attempt: int) -> bool: ...
    def dead_letter(self, id: int, attempt: int, reason_code: str, reason: str) -> bool: ...
    def wait(self, timeout: float | None, also: Subscriber | None = None) -> bool: ...
    def close(self) -> None: ...

class Subscriber:
    """Wake-ups for broadcasts to some exchanges (no consumer registered)."""

    def __init__(self, store: Store, exchanges: Sequence[str]) -> None: ...
    def set_exchanges(self, exchanges: Sequence[str]) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def close(self) -> None: ...

def redact_url(url: str) -> str: ...
def run_pool_child(
    *,
    protocol: int,
    index: int,
    pool: str,
    threads: int,
    hostname: str,
    app: str,
    loglevel: str,
) -> int:
    """Runs a worker's pool child on the socket that is standard input; returns the exit code."""
