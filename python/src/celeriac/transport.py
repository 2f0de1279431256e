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

Remote control, its replies and events cross processes through ``celeriac.broadcast``: a
message to a fanout exchange (Celery's ``celery.pidbox``), to a topic exchange no local queue
is bound to (events, ``celeryev``), or to a queue declared transient (``durable=False,
auto_delete=True``: a reply queue, a pidbox or event receiver's queue) is a broadcast row, which
every queue bound to that exchange reads from where it stood when it was bound. So
``celery inspect``, ``celery control``, ``app.control.revoke`` and ``celery events`` work with
Python Celery workers and ``celeriac worker`` alike. A ``revoke`` broadcast is also recorded in
``celeriac.revoked``: a claimed message whose task is revoked reaches a Python Celery worker
already marked revoked (Celery then stores REVOKED and skips it), even after the worker restarted.

Transport options (``broker_transport_options``): ``polling_interval`` (seconds),
``lease_seconds`` (default 30), ``max_redeliveries`` (default 3), ``max_connections`` (default 4),
``connect_timeout`` (default 5 s), ``durable`` (default True: a publish returns once the message is
flushed to disk; False is faster and, like RabbitMQ without publisher confirms, can lose the last
~0.6 s of publishes to a PostgreSQL crash).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import sys
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

#: Broadcasts read at once for one queue.
BROADCAST_BATCH = 200

#: How long a gap in broadcast positions is waited for, after the row behind it was first seen:
#: a row whose id was taken before it but which committed later is still read, once.
BROADCAST_REORDER_WINDOW = 2.0

#: How often a broadcast queue with gaps reads them again.
BROADCAST_RECHECK = 0.2

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


def _revocation(exchange: str, message: dict[str, Any]) -> dict[str, Any] | None:
    """What a pidbox ``revoke``, ``terminate`` or ``revoke_by_stamped_headers`` command revokes,
    to record it durably with the broadcast; None for other commands (and for commands this
    transport cannot read: they are broadcast unrecorded, with a warning)."""
    try:
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        if message.get("content-type") != "application/json":
            logger.warning(
                "celeriac: a %s control command is not recorded (only JSON commands are read)",
                message.get("content-type"),
            )
            return None
        command = loads(body)
        method = command.get("method")
        arguments = command.get("arguments") or {}
        expires = float(os.environ.get("CELERY_WORKER_REVOKE_EXPIRES", 10800))
        signal = arguments.get("signal")
        if method in ("revoke", "terminate"):
            ids = arguments.get("task_id")
            ids = [ids] if isinstance(ids, str) else [str(i) for i in ids or ()]
            terminate = method == "terminate" or bool(arguments.get("terminate"))
            return {"task_ids": ids, "terminate": terminate, "signal": signal, "expires": expires}
        if method == "revoke_by_stamped_headers":
            headers = arguments.get("headers") or {}
            if isinstance(headers, list):  # the CLI's ``key=value`` form
                headers = dict(h.split("=", 1) for h in headers if isinstance(h, str) and "=" in h)
            stamps = []
            for header, values in headers.items():
                for value in values if isinstance(values, (list, tuple)) else [values]:
                    stamps.append((str(header), value if isinstance(value, str) else dumps(value)))
            terminate = bool(arguments.get("terminate"))
            return {"stamps": stamps, "terminate": terminate, "signal": signal, "expires": expires}
    except Exception as exc:  # not a command this transport can read: broadcast it unrecorded
        logger.warning("celeriac: a control command on %r is not recorded: %r", exchange, exc)
    return None


def _mark_revoked(raw: dict[str, Any]) -> None:
    """Adds a revoked message's task id to the Celery worker's revoked set (in a worker process)."""
    state = sys.modules.get("celery.worker.state")
    headers = raw.get("headers")
    if state is None or not isinstance(headers, dict) or not headers.get("id"):
        return
    state.revoked.add(headers["id"])


class _BroadcastQueue:
    """A queue that reads broadcasts: its bindings, and its position in ``celeriac.broadcast``.

    Positions are consecutive ids. New rows are read after the highest id handed out; the rows
    between the position and it are read again now and then (every ``BROADCAST_RECHECK``
    seconds) while gaps remain, so a row whose publisher committed after a later one is still
    handed out, once. A gap (a row of another exchange, a rolled-back publish) is given up
    ``BROADCAST_REORDER_WINDOW`` seconds after the row behind it was first seen."""

    def __init__(self) -> None:
        #: Rows up to here were handed out, or are older than the queue.
        self.position = 0
        #: Rows after ``position`` handed out, with when.
        self.seen: dict[int, float] = {}
        #: ``(exchange, kind, routing_key, compiled topic pattern)``.
        self.bindings: list[tuple[str, str, str, re.Pattern[str] | None]] = []
        #: Per exchange, the newest row when it was bound (older ones are not for this queue).
        self.since: dict[str, int] = {}
        self.last_recheck = 0.0
        #: Messages of rows already read, beyond what the last read handed out (a row of
        #: events holds many).
        self.pending: deque[dict[str, Any]] = deque()
        self.lock = threading.Lock()

    def bind(
        self, exchange: str, kind: str, routing_key: str, pattern: str | None, head: int
    ) -> None:
        compiled = re.compile(pattern) if kind == "topic" and pattern else None
        binding = (exchange, kind, routing_key, compiled)
        with self.lock:
            if binding not in self.bindings:
                self.bindings.append(binding)
            if exchange not in self.since:
                self.since[exchange] = head
                if not self.seen and self.position < head and len(self.since) == 1:
                    self.position = head

    def exchanges(self) -> list[str]:
        return sorted(self.since)

    def takes(self, row_id: int, exchange: str, routing_key: str) -> bool:
        if row_id <= self.since.get(exchange, row_id):
            return False
        for bound, kind, key, pattern in self.bindings:
            if bound != exchange:
                continue
            if kind == "fanout":
                return True
            if pattern is not None:
                if pattern.match(routing_key):
                    return True
            elif key == routing_key:
                return True
        return False

    def _messages(
        self, row_id: int, exchange: str, routing_key: str, payload: bytes
    ) -> list[dict[str, Any]]:
        """The message of one row, if this queue takes it. (A celeriac worker's task events
        come as one message per flush, routed ``task.multi``, its body the list of them, as
        Celery's prefork worker sends its buffered task events.)"""
        if not self.takes(row_id, exchange, routing_key):
            return []
        try:
            decoded = loads(payload)
        except Exception:
            decoded = None
        if not isinstance(decoded, dict):
            logger.warning("celeriac: broadcast %s on %r is not a kombu message", row_id, exchange)
            return []
        return [decoded]

    def read(self, store: _native.Store, limit: int = BROADCAST_BATCH) -> list[dict[str, Any]]:
        """The broadcasts for this queue not handed out yet, oldest first, at most ``limit``."""
        with self.lock:
            if self.pending:
                return [self.pending.popleft() for _ in range(min(limit, len(self.pending)))]
            now = monotonic()
            top = max(self.seen, default=self.position)
            recheck = top > self.position and now - self.last_recheck >= BROADCAST_RECHECK
            if recheck:
                self.last_recheck = now
            after = self.position if recheck else top
            out: list[dict[str, Any]] = []
            exchanges = self.exchanges()
            while len(out) < limit:
                rows = store.broadcast_read(exchanges, after, BROADCAST_BATCH)
                for row_id, exchange, routing_key, payload in rows:
                    after = row_id
                    if row_id <= self.position or row_id in self.seen:
                        continue
                    if len(out) >= limit:
                        break  # not handed out: read again next time
                    self.seen[row_id] = now
                    out.extend(self._messages(row_id, exchange, routing_key, payload))
                if len(rows) < BROADCAST_BATCH:
                    break
            for row_id in sorted(self.seen):
                if (
                    row_id != self.position + 1
                    and now - self.seen[row_id] <= BROADCAST_REORDER_WINDOW
                ):
                    break  # a gap not old enough to give up on
                self.position = row_id
                del self.seen[row_id]
            if len(out) > limit:
                self.pending.extend(out[limit:])
                del out[limit:]
            return out


#: Queues read from ``celeriac.broadcast``, by name, for the whole process (kombu keeps the
#: bindings of virtual transports for the whole process too).
_readers: dict[str, _BroadcastQueue] = {}
#: Queues declared transient (``durable=False, auto_delete=True``).
_transient: set[str] = set()
_readers_lock = threading.Lock()


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
    # Fanout exchanges (and topics, replies) reach other processes through broadcasts.
    supports_fanout = True

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
        if queue in _readers:
            info = message.get("properties", {}).get("delivery_info", {})
            self._publish_broadcast(
                info.get("exchange") or "", info.get("routing_key") or "", message
            )
            return
        payload = dumps(message).encode("utf-8")
        message_row = _native.message_from_envelope(payload, queue)
        self.store.insert(message_row, durable=self.connection.durable)

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        """Publishes as kombu's virtual channel does, except that a message no queue of this
        process takes (a reply, an event, a broadcast) goes to ``celeriac.broadcast`` for the
        queues of other processes bound to its exchange."""
        if exchange and self._for_broadcast(exchange, routing_key):
            self._inplace_augment_message(message, exchange, routing_key)
            self._publish_broadcast(exchange, routing_key, message)
            return None
        return super().basic_publish(message, exchange, routing_key, **kwargs)

    def _for_broadcast(self, exchange: str, routing_key: str) -> bool:
        kind = self.typeof(exchange).type
        if kind == "fanout":
            return False  # FanoutExchange.deliver calls _put_fanout
        try:
            table = self.get_table(exchange)
        except KeyError:
            table = []
        queues = self.typeof(exchange).lookup(table, exchange, routing_key, None)
        return not queues or all(q in _transient or q in _readers for q in queues)

    def _put_fanout(
        self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any
    ) -> None:
        self._publish_broadcast(exchange, routing_key, message)

    def _publish_broadcast(self, exchange: str, routing_key: str, message: dict[str, Any]) -> None:
        revoke = _revocation(exchange, message) if exchange.endswith(".pidbox") else None
        self.store.broadcast_publish(
            exchange, routing_key or "", dumps(message).encode("utf-8"), revoke=revoke
        )

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
        queues = list(queues)
        readers = [q for q in queues if q in _readers]
        if readers:
            if not self._claimed:
                for queue in readers:
                    for raw in self._read_broadcasts(_readers[queue]):
                        self._claimed.append((raw, queue))
            queues = [q for q in queues if q not in _readers]
        if not self._claimed and queues:
            limit = self.qos.can_consume_max_estimate()
            if limit is None:
                limit = UNLIMITED_CLAIM
            if limit <= 0:
                raise Empty()
            consumer = self.consumer()
            rows = self._claim(consumer, list(dict.fromkeys(queues)), limit)
            for row_id, attempt, redelivered, queue, payload, revoked in rows:
                raw = self._to_raw(consumer, row_id, attempt, redelivered, queue, payload, revoked)
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
    ) -> list[tuple[int, int, bool, str, bytes, bool]]:
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
        reader = _readers.get(queue)
        if reader is not None:
            for raw in self._read_broadcasts(reader, limit=1):
                return raw
            raise Empty()
        consumer = self.consumer()
        while True:
            rows = consumer.claim([queue], 1)
            if not rows:
                raise Empty()
            row_id, attempt, redelivered, queue_name, payload, revoked = rows[0]
            raw = self._to_raw(consumer, row_id, attempt, redelivered, queue_name, payload, revoked)
            if raw is not None:
                return raw

    def _read_broadcasts(
        self, reader: _BroadcastQueue, limit: int = BROADCAST_BATCH
    ) -> list[dict[str, Any]]:
        """A broadcast queue's new messages; none while the database cannot be reached (as
        claims: a connection error would make kombu reset the connection and give back the
        messages of the tasks still running)."""
        try:
            return reader.read(self.store, limit)
        except _native.ConnectError:
            return []

    def _to_raw(
        self,
        consumer: _native.Consumer,
        row_id: int,
        attempt: int,
        redelivered: bool,
        queue: str,
        payload: bytes,
        revoked: bool = False,
    ) -> dict[str, Any] | None:
        """The kombu message of a claimed row; an unreadable envelope is dead-lettered. The id
        of a revoked task is added to the Celery worker's revoked set first (when this process
        is one), so Celery discards it as revoked and stores REVOKED."""
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
        if revoked:
            _mark_revoked(raw)
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
        if lease is None:
            # A broadcast (a control command, a reply, an event): given to this queue once, not
            # published again to every queue bound to its exchange.
            return
        if self._consumer is None:
            super()._restore(message)
            return
        self._consumer.restore(*lease)

    def _size(self, queue: str) -> int:
        if queue in _transient or queue in _readers:
            return 0
        return self.store.ready_count(queue)

    def _purge(self, queue: str) -> int:
        if queue in _transient or queue in _readers:
            return 0
        return self.store.purge(queue)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        if kwargs.get("durable") is False and kwargs.get("auto_delete"):
            with _readers_lock:
                _transient.add(queue)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str | None, queue: str) -> None:
        """Called for every binding (the channel supports fanout): a queue bound to a fanout
        exchange, or declared transient (a reply queue, a pidbox or event receiver's queue),
        reads that exchange's broadcasts. Durable queues stay queues, whatever their exchange."""
        kind = self.typeof(exchange).type
        if kind != "fanout" and queue not in _transient:
            return
        head = self.store.broadcast_head()
        with _readers_lock:
            reader = _readers.setdefault(queue, _BroadcastQueue())
        reader.bind(exchange, kind, routing_key, pattern, head)
        self.connection.subscribe(reader.exchanges())

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        reader = _readers.get(queue)
        if reader is not None:  # bound on another connection of this process
            self.connection.subscribe(reader.exchanges())
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        # Queues exist only as the `queue` of their messages; deleting a queue's declaration
        # leaves its messages in place (use purge to drop them). A broadcast reader just stops.
        with _readers_lock:
            _readers.pop(queue, None)
            _transient.discard(queue)

    def wait(self, timeout: float) -> bool:
        """Blocks until a message may be ready for this channel, or ``timeout`` seconds."""
        subscriber = self.connection.subscriber
        if any(q not in _readers for q in self._active_queues):
            return self.consumer().wait(timeout, subscriber)
        if subscriber is not None:
            return subscriber.wait(timeout)
        return False

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
        exchange_type=frozenset(["direct", "topic", "fanout"]),
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
        #: Wake-ups for the broadcast exchanges this connection's queues read (None until one
        #: is bound).
        self.subscriber: _native.Subscriber | None = None
        self._subscribed: set[str] = set()

    def subscribe(self, exchanges: Iterable[str]) -> None:
        """Wakes this connection's waits for broadcasts to ``exchanges`` too."""
        new = set(exchanges) - self._subscribed
        if not new:
            return
        self._subscribed |= new
        if self.subscriber is None:
            self.subscriber = _native.Subscriber(self.store, sorted(self._subscribed))
        else:
            self.subscriber.set_exchanges(sorted(self._subscribed))

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)
        finally:
            subscriber, self.subscriber = self.subscriber, None
            if subscriber is not None:
                subscriber.close()

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
            elif self.subscriber is not None and any(
                q in _readers for c in self.channels for q in c._active_queues
            ):
                self.subscriber.wait(wait)
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
