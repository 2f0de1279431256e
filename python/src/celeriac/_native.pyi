"""Type stubs of ``celeriac._native``, the Rust extension (conversion and database access)."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Optional, Union

__version__: str
#: The single-row enqueue for DB-API drivers: seven ``%s`` parameters, see ``Message.dbapi_params``.
MESSAGE_INSERT_SQL: str

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
    def task_id(self) -> Optional[str]: ...
    @property
    def task_name(self) -> Optional[str]: ...
    @property
    def queue(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def eta(self) -> Optional[str]: ...
    @property
    def expires(self) -> Optional[str]: ...
    @property
    def payload(self) -> bytes: ...
    def dbapi_params(
        self,
    ) -> tuple[str, int, Optional[str], Optional[str], Optional[str], Optional[str], bytes]: ...

def encode_task(
    name: str,
    args: Optional[Sequence[Any]] = None,
    kwargs: Optional[Mapping[str, Any]] = None,
    *,
    queue: str = "celery",
    countdown: Optional[float] = None,
    eta: Optional[datetime] = None,
    expires: Union[float, datetime, None] = None,
    priority: Optional[int] = None,
    task_id: Optional[str] = None,
    headers: Optional[Mapping[str, Any]] = None,
    time_limit: Optional[float] = None,
    soft_time_limit: Optional[float] = None,
    ignore_result: bool = False,
    shadow: Optional[str] = None,
    retries: int = 0,
    parent_id: Optional[str] = None,
    root_id: Optional[str] = None,
    origin: str = "celeriac",
    reply_to: Optional[str] = None,
    serializer: str = "json",
) -> Message: ...
def message_from_envelope(payload: bytes, queue: Optional[str] = None) -> Message: ...

class Store:
    """A pool of connections to a database holding celeriac's schema (fork-safe)."""

    def __init__(
        self, url: str, *, max_connections: int = 4, connect_timeout: float = 5.0
    ) -> None: ...
    def migrate(self) -> list[int]: ...
    def check(self) -> None: ...
    def insert(self, message: Message) -> int: ...
    def insert_many(self, messages: Sequence[Message]) -> int: ...
    def ready_count(self, queue: str) -> int: ...
    def purge(self, queue: str) -> int: ...
    def close(self) -> None: ...

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
    def claim(self, queues: Sequence[str], limit: int) -> list[tuple[int, int, bool, str, bytes]]: ...
    def ack(self, id: int, attempt: int) -> None: ...
    def flush(self, timeout: float = 10.0) -> bool: ...
    def requeue(self, id: int, attempt: int) -> bool: ...
    def restore(self, id: int, attempt: int) -> bool: ...
    def dead_letter(self, id: int, attempt: int, reason_code: str, reason: str) -> bool: ...
    def wait(self, timeout: float) -> bool: ...
    def held_count(self) -> int: ...
    def close(self) -> None: ...
