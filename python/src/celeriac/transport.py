"""kombu transport for celeriac's queue: ``broker_url = "celeriac+postgresql://user@host/db"``.

Producers (``task.delay``, ``apply_async``, ``send_task``, canvas) write each Celery message
into ``celeriac.message``, where ``celeriac worker`` and Python Celery workers on this transport
both consume it. A Python Celery worker gets celeriac's delivery guarantees:

- Claims are leases (``SKIP LOCKED``), renewed by a heartbeat on a background thread while the
  worker holds the message, so a long task is never handed to another worker.
- ``ack`` deletes the row (batched in the background, fenced by the lease).
- ``reject(requeue=True)`` puts the message back at once, marked redelivered;
  ``reject(requeue=False)`` moves it to ``celeriac.dead_letter`` with its bytes, not away.
- Warm shutdown gives unacked messages back (the same rows, not copies): nothing is lost and
  nothing runs twice. After a crash (SIGKILL, OOM) the lease runs out and the message is
  redelivered, marked ``redelivered``, by whichever worker runs the rescuer.
- New messages wake consumers through LISTEN/NOTIFY; ``polling_interval`` (default 1 s) is
  the safety net and bounds how late an ETA task can start.
- Losing the database (a restart, a killed backend, an outage) does not reset the kombu
  connection: claims fail, the transport logs it and polls again, and the tasks still running
  keep their messages. Their leases are renewed again as soon as the database answers and their
  acks are written then, so they do not run a second time. (A broker connection lost by Celery
  on RabbitMQ redelivers every unacked message instead.) ``?pooler=transaction`` on the URL
  works behind PgBouncer in transaction mode (no prepared statements, no LISTEN: polling).

Like kombu's SQLAlchemy transport it has no fanout exchange, so remote control (``inspect``,
``revoke`` broadcasts) and events do not cross processes.

Transport options (``broker_transport_options``): ``polling_interval`` (seconds),
``lease_seconds`` (default 30), ``max_redeliveries`` (default 3), ``max_connections`` (default 4),
``connect_timeout`` (default 5 s), ``durable`` (default True: a publish returns once the message is
flushed to disk; False is faster and, like RabbitMQ without publisher confirms, can lose the last
~0.6 s of publishes to a PostgreSQL crash).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Iterable
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import virtual
from kombu.utils.json import dumps, loads

from celeriac import _native

#: Claim at most this many messages at once when the channel has no prefetch limit.
UNLIMITED_CLAIM = 100

logger = logging.getLogger(__name__)

_stores: dict[tuple[str, int, float], _native.Store] = {}
_stores_lock = threading.Lock()


def _store(url: str, max_connections: int, connect_timeout: float) -> _native.Store:
    """One pool per database and process, shared by all kombu connections (Celery keeps many)."""
    key = (url, max_connections, connect_timeout)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _native.Store(
                url, max_connections=max_connections, connect_timeout=connect_timeout
            )
            _stores[key] = store
        return store


#: Full connection strings, by the password-less form that stands for them in a broker URL.
_registered_urls: dict[str, str] = {}


def register_url(url: str) -> None:
    """Lets ``celeriac+<url without its password>`` connect with ``url``'s password.

    celeriac's pool children get the broker URL in their environment without the password (every
    process a task starts inherits that environment) and the full URL through this call."""
    _registered_urls[_native.redact_url(url)] = url


def _flag(value: Any) -> bool:
    """A boolean transport option, also from URL query text (``durable=false``)."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def _delivery_tag(row_id: int, attempt: int) -> str:
    return f"celeriac:{row_id}:{attempt}"


def _lease(delivery_tag: Any) -> tuple[int, int] | None:
    """``(id, attempt)`` of a delivery tag this transport issued, else None."""
    if isinstance(delivery_tag, str) and delivery_tag.startswith("celeriac:"):
        _, row_id, attempt = delivery_tag.split(":")
        return int(row_id), int(attempt)
    return None


class Channel(virtual.Channel):
    """A kombu channel on celeriac's queue."""

    # Queues are rows' `queue` values: nothing to declare or bind in the database.
    do_restore = True

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._consumer: _native.Consumer | None = None
        #: Claimed messages not delivered yet, ``(message, queue)``: still leased to this
        #: channel's consumer (heartbeated; given back by ``Consumer.close`` if never delivered).
        self._claimed: deque[tuple[dict[str, Any], str]] = deque()
        #: Since when claims fail because the database cannot be reached (None: they succeed).
        self._unreachable_since: float | None = None

    @property
    def store(self) -> _native.Store:
        return self.connection.store

    def consumer(self) -> _native.Consumer:
        """This channel's registered consumer (created on first claim)."""
        if self._consumer is None:
            options = self.connection.client.transport_options
            self._consumer = _native.Consumer(
                self.store,
                f"kombu@{socket.gethostname()} pid={os.getpid()}",
                concurrency=int(self.qos.prefetch_count or 1),
                lease_seconds=float(options.get("lease_seconds", 30.0)),
                max_redeliveries=int(options.get("max_redeliveries", 3)),
            )
        return self._consumer

    # --- publishing -------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        payload = dumps(message).encode("utf-8")
        message_row = _native.message_from_envelope(payload, queue)
        self.store.insert(message_row, durable=self.connection.durable)

    # --- consuming --------------------------------------------------------------------------

    def _get_many(self, queues: Iterable[str], timeout: float | None = None) -> None:
        """Delivers one message. When none is left from the last claim, first claims as many as
        the prefetch window allows, from all consumed queues at once (priority first, then eta,
        then age).

        One delivery per call, as kombu's own virtual transports do: Celery's prefork worker
        blocks in the delivery callback until a pool process is free, and checks for a warm
        shutdown only between calls, so delivering a whole claim at once would run every
        claimed message before shutting down instead of giving the unstarted ones back.
        """
        if not self._claimed:
            limit = self.qos.can_consume_max_estimate()
            if limit is None:
                limit = UNLIMITED_CLAIM
            if limit <= 0:
                raise Empty()
            consumer = self.consumer()
            rows = self._claim(consumer, list(dict.fromkeys(queues)), limit)
            for row_id, attempt, redelivered, queue, payload in rows:
                raw = self._to_raw(consumer, row_id, attempt, redelivered, queue, payload)
                if raw is not None:
                    self._claimed.append((raw, queue))
            if not self._claimed:
                raise Empty()
        while self._claimed:
            raw, queue = self._claimed.popleft()
            lease = _lease(raw["properties"]["delivery_tag"])
            if lease is not None and self._consumer is not None and self._consumer.expired(*lease):
                # Claimed while the database was reachable, and its lease ran out unrenewed since:
                # another worker may run it already. Give it back instead of starting it.
                logger.warning("celeriac: message %s:%s not delivered: its lease ran out", *lease)
                self._consumer.restore(*lease)
                continue
            self.connection._deliver(raw, queue)
            return
        raise Empty()

    def _claim(
        self, consumer: _native.Consumer, queues: list[str], limit: int
    ) -> list[tuple[int, int, bool, str, bytes]]:
        """Claims for delivery; while the database cannot be reached, nothing (the caller
        polls again) rather than a connection error: kombu would close the channel, and its
        ``restore_unacked`` would give back the messages of the tasks still running, which then
        run twice while their own acks are lost."""
        try:
            rows = consumer.claim(queues, limit)
        except _native.ConnectError as exc:
            if self._unreachable_since is None:
                self._unreachable_since = monotonic()
                logger.warning(
                    "celeriac: cannot claim, the database is unreachable (%s); polling until it "
                    "answers; running tasks keep their messages",
                    exc,
                )
            return []
        if self._unreachable_since is not None:
            logger.warning(
                "celeriac: the database answers again after %.1f s; claiming",
                monotonic() - self._unreachable_since,
            )
            self._unreachable_since = None
        return rows

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        consumer = self.consumer()
        while True:
            rows = consumer.claim([queue], 1)
            if not rows:
                raise Empty()
            row_id, attempt, redelivered, queue_name, payload = rows[0]
            raw = self._to_raw(consumer, row_id, attempt, redelivered, queue_name, payload)
            if raw is not None:
                return raw

    def _to_raw(
        self,
        consumer: _native.Consumer,
        row_id: int,
        attempt: int,
        redelivered: bool,
        queue: str,
        payload: bytes,
    ) -> dict[str, Any] | None:
        """The kombu message of a claimed row; an unreadable envelope is dead-lettered."""
        try:
            raw = loads(payload)
            properties = raw["properties"]
            if not isinstance(properties, dict):
                raise TypeError("properties is not an object")
        except Exception as exc:
            consumer.dead_letter(
                row_id,
                attempt,
                "undecodable",
                f"not a kombu envelope: {exc.__class__.__name__}: {exc}",
            )
            return None
        properties["delivery_tag"] = _delivery_tag(row_id, attempt)
        delivery_info = properties.setdefault("delivery_info", {})
        if isinstance(delivery_info, dict):
            delivery_info.setdefault("exchange", "")
            delivery_info.setdefault("routing_key", queue)
        if redelivered:
            raw["redelivered"] = True
            # Where Celery reads it (`Request.delivery_info`, `task.request.delivery_info`,
            # `worker_deduplicate_successful_tasks`), as kombu's Redis transport marks it.
            if isinstance(delivery_info, dict):
                delivery_info["redelivered"] = True
        return raw

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        lease = _lease(delivery_tag)
        if lease is not None and self._consumer is not None:
            self._consumer.ack(*lease)
        super().basic_ack(delivery_tag, multiple=multiple)
        if self.connection is not None:  # None once the channel is closed
            self.connection.capacity_freed.set()

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        lease = _lease(delivery_tag)
        if lease is None or self._consumer is None:
            super().basic_reject(delivery_tag, requeue=requeue)
            return
        if requeue:
            self._consumer.requeue(*lease)
        else:
            self._consumer.dead_letter(
                *lease, "rejected", "rejected by a kombu consumer (basic_reject, requeue=False)"
            )
        self.qos.reject(delivery_tag, requeue=False)
        if self.connection is not None:
            self.connection.capacity_freed.set()

    def _restore(self, message: Any) -> None:
        """Gives an unacked message back (warm shutdown, ``basic_recover``): the same row is
        released, so it is neither lost nor duplicated."""
        lease = _lease(message.delivery_tag)
        if lease is None or self._consumer is None:
            super()._restore(message)
            return
        self._consumer.restore(*lease)

    def _size(self, queue: str) -> int:
        return self.store.ready_count(queue)

    def _purge(self, queue: str) -> int:
        return self.store.purge(queue)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        pass

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        # Queues exist only as the `queue` of their messages; deleting a queue's declaration
        # leaves its messages in place (use purge to drop them).
        pass

    def wait(self, timeout: float) -> bool:
        """Blocks until a message may be ready for this channel, or ``timeout`` seconds."""
        return self.consumer().wait(timeout)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._claimed.clear()  # still leased: Consumer.close gives them back
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                consumer.close()


class Transport(virtual.Transport):
    """kombu transport on celeriac's PostgreSQL queue (``celeriac+postgresql://...``)."""

    Channel = Channel

    # The database URL after `celeriac+` is handed over whole, as SQLAlchemy's transport does.
    can_parse_url = True
    default_port = 5432
    driver_type = "postgresql"
    driver_name = "celeriac"
    polling_interval = 1.0

    connection_errors = (*virtual.Transport.connection_errors, _native.ConnectError)
    channel_errors = (*virtual.Transport.channel_errors, _native.DatabaseError)
    # Only an unreachable server is worth retrying; a missing schema or a refused statement
    # will not fix itself (kombu would otherwise retry every channel error).
    recoverable_connection_errors = (_native.ConnectError,)
    recoverable_channel_errors = ()

    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic"]),
        heartbeats=False,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = client.transport_options
        url = client.hostname or ""
        url = _registered_urls.get(url, url)
        if "://" not in url and "=" not in url:
            raise _native.ConnectError(
                "celeriac transport needs a database URL: celeriac+postgresql://user@host/dbname"
            )
        self.store = _store(
            url,
            int(options.get("max_connections", 4)),
            float(options.get("connect_timeout", 5.0)),
        )
        #: Whether publishes wait for the WAL flush (``durable`` transport option, default True).
        self.durable = _flag(options.get("durable", True))
        #: Set whenever a delivered message is acked or given back: a consumer whose prefetch
        #: window was full may claim again.
        self.capacity_freed = threading.Event()

    def establish_connection(self) -> Any:
        # Fail at connect time with a clear message (unreachable, schema missing), not at the
        # first publish.
        self.store.check()
        return super().establish_connection()

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            self.capacity_freed.clear()
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = self.polling_interval
            if deadline is not None:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                wait = min(wait, remaining)
            channel = self._waiting_channel()
            if channel is not None:
                channel.wait(wait)
            else:
                self.capacity_freed.wait(wait)

    def _waiting_channel(self) -> Channel | None:
        """A channel that consumes and has room in its prefetch window, if any."""
        for channel in self.channels:
            if channel._consumers and channel.qos.can_consume():
                return channel
        return None

    def verify_connection(self, connection: Any) -> bool:
        # kombu asks before every publish (`Connection.connected`); the pool reconnects by
        # itself, so this must not cost a round trip. Errors surface from the statement.
        return True

    def driver_version(self) -> str:
        return _native.__version__
