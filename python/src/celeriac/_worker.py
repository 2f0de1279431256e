"""The Python half of ``celeriac worker -A proj``: runs inside each pool child.

The ``celeriac`` worker's pool children are the app's own interpreter running
``celeriac._pool_child``, whose task loop, in ``celeriac._native``, calls this module. It loads
the Celery app the way ``celery -A`` does and runs every message through Celery's own worker
code, split the way a Celery prefork worker splits it:

- the child half, ``celery.app.trace.fast_trace_task`` (signals, ``Task`` hooks, result
  storage, retries, links and chains);
- the half Celery's MainProcess runs, the ``Request`` callbacks (``on_accepted``,
  ``on_success``, ``on_failure``, ``on_timeout``, ``revoked``), with the message's ack and
  reject replaced by a recorder. The Rust side applies the recorded decision to the row.

Not a public API: the extension's task loop and this module ship in one wheel and change
together; the worker and the extension agree on ``celeriac._native.POOL_PROTOCOL``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from typing import Any

#: Decisions returned to the binary (what Celery's ack/reject would have done to the message).
ACK = "ack"
REJECT = "reject"
REQUEUE = "requeue"
NONE = "none"

_state: _ChildState | None = None


class _ChildState:
    """What ``init`` set up: the app, its tasks and the worker's identity."""

    def __init__(self, app: Any, hostname: str, pool: str, index: int) -> None:
        from celery.app.trace import fast_trace_task
        from celery.worker import state as worker_state

        self.app = app
        self.hostname = hostname
        self.pool = pool
        self.index = index
        self.pid = os.getpid()
        self.fast_trace_task = fast_trace_task
        self.revoked_tasks = worker_state.revoked
        self.accept = _prepare_accept(app)
        # Bodies Celery would decode with kombu's own JSON decoder (an app may register
        # another for the content type): the common case decodes them without it.
        self.plain_json_bodies = "application/json" in self.accept and _kombu_decodes_json()
        self.request_classes: dict[str, Any] = {}
        # Set while a task runs on this process's main thread: the soft time limit signal
        # raises only then (a late signal for a finished task is ignored).
        self.running = False


def _kombu_decodes_json() -> bool:
    from kombu.serialization import registry
    from kombu.utils import json as kombu_json

    return registry._decoders.get("application/json") is kombu_json.loads


def _prepare_accept(app: Any) -> set[str]:
    from kombu.serialization import prepare_accept_content

    return prepare_accept_content(app.conf.accept_content)


class _WorkerStub:
    """What worker signals get as ``sender`` (Celery sends its ``WorkController``)."""

    def __init__(self, app: Any, hostname: str, pool: str, concurrency: int, loglevel: int) -> None:
        self.app = app
        self.hostname = hostname
        self.concurrency = concurrency
        self.pool_cls = pool
        self.loglevel = loglevel
        self.pid = os.getpid()

    def __repr__(self) -> str:
        return f"<celeriac worker: {self.hostname} (pool={self.pool_cls})>"


class AppLoadError(Exception):
    """The ``-A`` spec could not be turned into a Celery app (Celery's three messages)."""


def load_app(spec: str) -> Any:
    """Imports the app named by ``spec`` exactly as ``celery -A spec`` does.

    Raises:
        AppLoadError: with the text Celery's command line prints.
    """
    import traceback

    from celery import Celery
    from celery.app.utils import find_app

    try:
        app = find_app(spec)
    except ModuleNotFoundError as e:
        if e.name != spec:
            raise AppLoadError(
                "Unable to load celery application.\n"
                f"While trying to load the module {spec} the following error occurred:\n"
                f"{traceback.format_exc()}"
            ) from e
        raise AppLoadError(
            f"Unable to load celery application.\nThe module {e.name} was not found."
        ) from e
    except AttributeError as e:
        raise AppLoadError(
            f"Unable to load celery application.\n{str(e.args[0]).capitalize()}"
        ) from e
    except Exception as e:
        raise AppLoadError(
            "Unable to load celery application.\n"
            f"While trying to load the module {spec} the following error occurred:\n"
            f"{traceback.format_exc()}"
        ) from e
    if not isinstance(app, Celery):
        raise AppLoadError(
            f"Unable to load celery application.\n{spec!r} is a {type(app).__name__}, "
            "not a Celery application."
        )
    return app


def _include(app: Any) -> None:
    """``celeriac worker -I a,b`` (``CELERIAC_INCLUDE``): Celery's ``setup_includes``, which
    adds the modules to ``include`` and imports them for their tasks."""
    modules = [m.strip() for m in os.environ.get("CELERIAC_INCLUDE", "").split(",") if m.strip()]
    if not modules:
        return
    app.conf.include = (*tuple(app.conf.include or ()), *modules)
    for module in modules:
        app.loader.import_task_module(module)


def _limit(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def _rate(value: Any) -> str | None:
    """A rate limit as the worker parses it (Celery's syntax, as text); None for no limit."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    return str(value)


def init(
    spec: str,
    hostname: str,
    loglevel: str,
    pool: str,
    index: int,
    concurrency: int,
) -> dict[str, Any]:
    """Sets this child up as Celery's ``process_initializer`` sets up a pool child.

    Returns the hello the binary reads: versions, the app's tasks with their limits, and the
    app settings the worker uses as defaults.
    """
    global _state
    import multiprocessing

    import celery
    from celery import signals
    from celery.app import trace
    from celery.utils.log import mlevel
    from celery.worker import state as worker_state

    import celeriac

    if pool == "prefork":
        multiprocessing.current_process().name = f"ForkPoolWorker-{index + 1}"
    app = load_app(spec)
    _include(app)
    level = mlevel(loglevel)
    stub = _WorkerStub(app, hostname, pool, concurrency, level)
    app.loader.init_worker()
    signals.worker_init.send(sender=stub)
    app.loader.init_worker_process()
    conf = app.conf
    app.log.setup(
        level,
        None,
        bool(conf.worker_redirect_stdouts),
        str(conf.worker_redirect_stdouts_level),
        hostname=hostname,
    )
    _tag_task_log_lines(app)
    trace.setup_worker_optimizations(app, hostname)
    for name, task in app.tasks.items():
        task.__trace__ = trace.build_tracer(name, task, app.loader, hostname, app=app)
    worker_state.reset_state()
    _state = _ChildState(app, hostname, pool, index)
    if pool != "threads":
        signal.signal(signal.SIGUSR1, _soft_time_limit_handler)
    signals.worker_process_init.send(sender=None)
    tasks = {}
    for name, task in app.tasks.items():
        tasks[name] = {
            "soft_time_limit": _limit(task.soft_time_limit),
            "time_limit": _limit(task.time_limit),
            "acks_late": bool(task.acks_late),
            "rate_limit": _rate(getattr(task, "rate_limit", None)),
            "global_rate_limit": _rate(getattr(task, "global_rate_limit", None)),
            "ignore_result": bool(getattr(task, "ignore_result", False)),
            "track_started": bool(getattr(task, "track_started", False)),
        }
    return {
        "pid": os.getpid(),
        "python": ".".join(map(str, sys.version_info[:3])),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "celery": celery.__version__,
        "celeriac": celeriac.__version__,
        "app": str(app.main or spec),
        "tasks": tasks,
        "banner": _banner(app),
        "config": {
            "accept_content": list(conf.accept_content or ()),
            "task_default_queue": conf.task_default_queue,
            "queues": list(app.amqp.queues.keys()),
            "worker_concurrency": conf.worker_concurrency,
            "worker_prefetch_multiplier": conf.worker_prefetch_multiplier,
            "worker_disable_prefetch": bool(conf.get("worker_disable_prefetch")),
            "task_time_limit": _limit(conf.task_time_limit),
            "task_soft_time_limit": _limit(conf.task_soft_time_limit),
            "worker_max_tasks_per_child": conf.worker_max_tasks_per_child,
            "worker_max_memory_per_child": conf.worker_max_memory_per_child,
            "worker_disable_rate_limits": bool(conf.worker_disable_rate_limits),
            "celeriac_global_rate_limits": {
                str(name): str(rate)
                for name, rate in (conf.get("celeriac_global_rate_limits") or {}).items()
                if _rate(rate) is not None
            },
            "results": _results_settings(app),
            **_routes_settings(app),
            "control_exchange": str(conf.control_exchange or "celery"),
            "event_exchange": str(conf.event_exchange or "celeryev"),
            "worker_send_task_events": bool(conf.worker_send_task_events),
            "conf": _conf_tables(app),
        },
    }


def _banner(app: Any) -> dict[str, Any]:
    """What ``celery worker``'s start-up banner shows of the app, as Celery formats it."""
    import platform

    from celery.loaders.app import AppLoader
    from celery.utils.imports import qualname

    described = f"{app.main or '__main__'}:{id(app):#x}"
    if not isinstance(app.loader, AppLoader):
        loader = qualname(app.loader)
        # As Celery: the package's name cut off, its dot kept (``(.default.Loader)``).
        described += f" ({loader[14:] if loader.startswith('celery.loaders') else loader})"
    try:
        results = str(app.backend.as_uri())
    except Exception as exc:  # a backend that cannot load says so when the first task stores
        results = f"(cannot load: {exc!r})"
    queues = {}
    for name, queue in app.amqp.queues.items():
        exchange = queue.exchange
        queues[str(name)] = (
            str(exchange.name if exchange is not None else ""),
            str(exchange.type if exchange is not None else "direct"),
            str(queue.routing_key),
        )
    return {
        "app": described,
        "platform": platform.platform(),
        "results": results,
        "queues": queues,
    }


def _conf_tables(app: Any) -> list[Any]:
    """What ``celery inspect conf`` answers, without and with Celery's defaults (its
    ``conf`` control command, computed once: the app's settings do not change while it runs)."""
    try:
        from celery.utils.functional import jsonify  # type: ignore[attr-defined]
        from celery.utils.saferepr import saferepr
        from celery.worker.control import _wanted_config_key

        return [
            jsonify(
                app.conf.table(with_defaults=with_defaults),
                keyfilter=_wanted_config_key,
                unknown_type_filter=saferepr,
            )
            for with_defaults in (False, True)
        ]
    except Exception:  # an old Celery without these helpers: no conf answer
        return []


def _queue_name(value: Any) -> str | None:
    """A route's or a task's queue: a name, a kombu ``Queue``, or a route dict naming one."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        return _queue_name(value.get("queue")) or _queue_name(value.get("routing_key"))
    name = getattr(value, "name", None)
    return name if isinstance(name, str) and name else None


def _routes_settings(app: Any) -> dict[str, Any]:
    """``task_routes`` as the worker evaluates them for what Rust handlers publish: the map
    routers (exact names, and patterns as the sources of the regular expressions Celery's
    ``MapRoute`` matches: ``fnmatch.translate`` of a key with ``*``, or the app's own), each to
    a queue; the tasks' own ``queue`` attributes (which beat the routes, as in
    ``Task.apply_async``); and a description of the routers it cannot evaluate (functions,
    import paths)."""
    import fnmatch
    import re
    from collections.abc import Mapping

    routes = app.conf.task_routes
    if routes is None:
        routers: list[Any] = []
    elif isinstance(routes, (list, tuple)):
        routers = list(routes)
    else:
        routers = [routes]
    maps: list[dict[str, Any]] = []
    skipped: list[str] = []
    flags = {re.IGNORECASE: "i", re.MULTILINE: "m", re.DOTALL: "s", re.VERBOSE: "x"}
    for router in routers:
        if not isinstance(router, Mapping):
            skipped.append(repr(router))
            continue
        exact: dict[str, str] = {}
        patterns: list[list[str]] = []
        for key, value in router.items():
            queue = _queue_name(value)
            if queue is None:
                skipped.append(f"{key!r}: {value!r}")
            elif isinstance(key, re.Pattern):
                inline = "".join(letter for flag, letter in flags.items() if key.flags & flag)
                source = str(key.pattern)
                patterns.append([f"(?{inline}){source}" if inline else source, queue])
            elif not isinstance(key, str):
                skipped.append(f"{key!r}: {value!r}")
            elif "*" in key:
                patterns.append([fnmatch.translate(key), queue])
            else:
                exact[key] = queue
        maps.append({"exact": exact, "patterns": patterns})
    declared = {}
    for name, task in app.tasks.items():
        queue = _queue_name(getattr(task, "queue", None))
        if queue is not None:
            declared[str(name)] = queue
    return {"task_routes": maps, "task_routes_skipped": skipped, "task_queues": declared}


def _seconds(value: Any) -> float | None:
    """``result_expires`` in seconds (a timedelta or a number); None for no expiry."""
    if value is None:
        return None
    seconds = value.total_seconds() if hasattr(value, "total_seconds") else value
    try:
        f = float(seconds)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def _django_database_url() -> str | None:
    """The Django project's default database as a libpq URL (django-db results), if PostgreSQL."""
    try:
        from django.conf import settings

        db = settings.DATABASES["default"]
    except Exception:
        return None
    if "postgresql" not in str(db.get("ENGINE", "")):
        return None
    from urllib.parse import quote

    user = quote(str(db.get("USER") or ""), safe="")
    password = quote(str(db.get("PASSWORD") or ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = str(db.get("HOST") or "")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    name = quote(str(db.get("NAME") or ""), safe="")
    if host.startswith("/"):
        query = f"?host={quote(host, safe='')}" + (f"&port={db['PORT']}" if db.get("PORT") else "")
        return f"postgresql://{auth}/{name}{query}"
    return f"postgresql://{auth}{host or 'localhost'}{port}/{name}"


def _results_settings(app: Any) -> dict[str, Any] | None:
    """The app's result backend settings, for the results the worker itself stores (Rust handlers,
    unregistered and expired tasks); None without a backend."""
    conf = app.conf
    backend = conf.result_backend
    if not backend or not isinstance(backend, str) or backend == "disabled":
        return None
    tables = conf.get("database_table_names") or {}
    schemas = conf.get("database_table_schemas") or {}
    transport = conf.get("result_backend_transport_options") or {}
    create = conf.get("database_create_tables_at_setup")
    return {
        "backend": backend,
        "extended": bool(conf.result_extended),
        "expires": _seconds(conf.result_expires),
        "track_started": bool(conf.task_track_started),
        "ignore_result": bool(conf.task_ignore_result),
        "serializer": str(conf.result_serializer),
        "table": tables.get("task"),
        "schema": schemas.get("task"),
        "create_tables": True if create is None else bool(create),
        "redis_key_prefix": transport.get("global_keyprefix"),
        "redis_chord_ordered": bool(transport.get("result_chord_ordered", True)),
        "django_database_url": _django_database_url() if backend == "django-db" else None,
        "redis_ssl": _redis_ssl(conf.get("redis_backend_use_ssl")),
    }


def _redis_ssl(options: Any) -> dict[str, str | None]:
    """``redis_backend_use_ssl`` as text: ``ssl_cert_reqs`` by name, and the three file paths."""
    if not isinstance(options, dict):
        return {}
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and not isinstance(reqs, str):
        reqs = {0: "none", 1: "optional", 2: "required"}.get(int(reqs), "required")

    def path(key: str) -> str | None:
        value = options.get(key)
        return None if value is None else str(value)

    return {
        "cert_reqs": reqs,
        "ca_certs": path("ssl_ca_certs"),
        "certfile": path("ssl_certfile"),
        "keyfile": path("ssl_keyfile"),
    }


class _TaskAwareFormatter(logging.Formatter):
    """Formats a record with ``worker_task_log_format`` while a task runs (so ``logging`` calls
    and redirected ``print`` output carry the task's name and id), else as before. Celery's own
    loggers keep their format, as in a Celery worker."""

    def __init__(self, outside: logging.Formatter, inside: logging.Formatter) -> None:
        super().__init__()
        self.outside = outside
        self.inside = inside

    def format(self, record: logging.LogRecord) -> str:
        from celery._state import get_current_task

        # Celery's own lines ("Task x[id] succeeded in ...") name the task already; redirected
        # print output is the task's.
        own = record.name == "celery" or record.name.startswith("celery.")
        if own and record.name != "celery.redirected":
            return self.outside.format(record)
        task = get_current_task()
        if task is not None and getattr(task.request, "id", None):
            return self.inside.format(record)
        return self.outside.format(record)


def _tag_task_log_lines(app: Any) -> None:
    """Where Celery set up the root logger itself (no ``setup_logging`` receivers, root logger
    hijacked), lines logged during a task get the task's name and id."""
    from celery import signals
    from celery.app.log import TaskFormatter

    if signals.setup_logging.receivers or not app.conf.worker_hijack_root_logger:
        return
    for handler in logging.getLogger().handlers:
        outside = handler.formatter or logging.Formatter()
        use_color = bool(getattr(outside, "use_color", False))
        inside = TaskFormatter(app.conf.worker_task_log_format, use_color=use_color)
        handler.setFormatter(_TaskAwareFormatter(outside, inside))


def _soft_time_limit_handler(signum: int, frame: Any) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    if _state is not None and _state.running:
        raise SoftTimeLimitExceeded()


def _child() -> _ChildState:
    if _state is None:
        raise RuntimeError("celeriac._worker.init() has not run in this process")
    return _state


class _Recorder:
    """Stands in for the message's ack/reject: remembers the first decision."""

    __slots__ = ("decision",)

    def __init__(self) -> None:
        self.decision = NONE

    def ack(self, logger: Any, errors: Any) -> None:
        if self.decision == NONE:
            self.decision = ACK

    def reject(self, logger: Any, errors: Any, requeue: bool = False) -> None:
        if self.decision == NONE:
            self.decision = REQUEUE if requeue else REJECT


class _Undecodable(Exception):
    pass


def _request(envelope: bytes, queue: str, redelivered: bool, recorder: _Recorder) -> Any:
    """The ``Request`` Celery's consumer would build for this stored envelope."""
    from celery.utils.imports import symbol_by_name
    from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2
    from kombu.message import Message
    from kombu.utils.json import loads

    st = _child()
    try:
        payload = loads(envelope)
        properties = payload["properties"]
        body = payload.get("body")
        if body and properties.get("body_encoding") == "base64":
            body = base64.b64decode(body)
        delivery_info = dict(properties.get("delivery_info") or {})
    except Exception as exc:
        raise _Undecodable(f"unreadable envelope: {exc!r}") from exc
    delivery_info.setdefault("routing_key", queue)
    delivery_info["redelivered"] = redelivered
    message = Message(
        body=body,
        content_type=payload.get("content-type"),
        content_encoding=payload.get("content-encoding"),
        headers=payload.get("headers"),
        properties=properties,
        delivery_info=delivery_info,
        postencode="utf-8",
        accept=st.accept,
    )
    if message.errors:
        raise _Undecodable(f"cannot decompress the body: {message.errors[0][1]!r}")
    headers = message.headers
    try:
        if "task" in headers:
            decoded_body, decoded, utc = message.decode(), True, st.app.uses_utc_timezone()
        elif "args" in message.payload:
            decoded_body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            decoded_body, headers, decoded, utc = proto1_to_proto2(message, message.payload)
    except Exception as exc:
        raise _Undecodable(f"cannot decode the body: {exc!r}") from exc
    name = headers.get("task")
    task = st.app.tasks.get(name)
    if task is None:
        raise _Undecodable(f"NotRegistered({name!r})")
    cls = st.request_classes.get(name)
    if cls is None:
        cls = st.request_classes[name] = symbol_by_name(task.Request)
    return cls(
        message,
        on_ack=recorder.ack,
        on_reject=recorder.reject,
        app=st.app,
        hostname=st.hostname,
        task=task,
        body=decoded_body,
        headers=headers,
        decoded=decoded,
        utc=utc,
    )


def run(
    envelope: bytes, queue: str, redelivered: bool, revoked: bool = False
) -> tuple[str, str, str]:
    """Runs one delivery as a Celery worker would; returns ``(decision, state, detail)``.
    ``revoked``: its task id is revoked (``celeriac.revoked``); Celery's ``Request`` then
    discards it as revoked.

    ``state`` is what became of the task (``SUCCESS``, ``FAILURE``, ``RETRY``, ``REJECTED``,
    ``IGNORED``, ``REVOKED``); ``detail`` is a reason for a ``reject`` decision. Raises
    ``SystemExit`` when the task asked the process to exit.

    The common case, a protocol-2 message that has not expired, goes straight to
    ``fast_trace_task`` with the request dict Celery's ``Request`` would build; the ``Request``
    itself (and its callbacks) is only built when the outcome needs it: a task that did not
    succeed, or any other message.
    """
    st = _child()
    try:
        payload = _json_loads(envelope)
        headers = payload["headers"]
        properties = payload["properties"]
        name = headers["task"]
        task_id = headers["id"]
    except Exception:
        return _run_with_request(envelope, queue, redelivered)
    if revoked:
        st.revoked_tasks.add(task_id)
    errback = headers.get("celeriac_errback")
    if isinstance(errback, dict) and name in st.app.tasks:
        return _call_errback(st.app.tasks[name], errback)
    if (
        headers.get("expires")
        or headers.get("compression")
        or name not in st.app.tasks
        or task_id in st.revoked_tasks
    ):
        return _run_with_request(envelope, queue, redelivered)
    body = payload.get("body")
    if body and properties.get("body_encoding") == "base64":
        body = base64.b64decode(body)
    delivery_info = properties.get("delivery_info") or {}
    request = dict(headers)
    request["properties"] = properties
    request["reply_to"] = properties.get("reply_to")
    request["correlation_id"] = properties.get("correlation_id")
    request["hostname"] = st.hostname
    request["delivery_info"] = {
        "exchange": delivery_info.get("exchange"),
        "routing_key": delivery_info.get("routing_key", queue),
        "priority": properties.get("priority"),
        "redelivered": redelivered,
    }
    content_type = payload.get("content-type")
    encoding = payload.get("content-encoding")
    if content_type == "application/json" and st.plain_json_bodies:
        decoded = _plain_json(body)
        if decoded is not _KOMBU:
            # What kombu's decoder returns for it; without a content type, ``fast_trace_task``
            # takes the body as decoded.
            body, content_type = decoded, None
    trace_args = (name, task_id, request, body, content_type, encoding)
    settled, result, time_accepted = _trace(envelope, queue, redelivered, trace_args)
    if settled is not None:
        return settled
    if not result[0]:
        # ``(0, saferepr(result), runtime)``: the repr goes to the worker for task events.
        return ACK, "SUCCESS", result[1] if isinstance(result[1], str) else ""
    return _settle_failure(envelope, queue, redelivered, time_accepted, result)


def _call_errback(task: Any, call: dict[str, Any]) -> tuple[str, str, str]:
    """An errback of a task that failed in a Rust handler, given what Celery's
    ``_call_task_errbacks`` has at hand: the errback's signature, the failed task's request (as
    a ``Context``), its exception (rebuilt by the result backend) and its traceback text. As
    there, an errback whose function takes them is called in-process with ``(request, exc,
    traceback)`` (nothing is stored for it; what it raises is logged), and any other is
    published with the failed task's id."""
    from functools import partial

    from celery.app.task import Context
    from celery.utils.functional import arity_greater
    from celery.utils.log import get_logger

    logger = get_logger("celery.backends.base")
    app = task.app
    try:
        errback = app.signature(call["signature"])
        request = Context(call["request"])
        exc = app.backend.exception_to_python(call["exc"])
    except Exception:
        logger.exception("Errback %r: cannot read the failed task's details", task.name)
        return ACK, "FAILURE", ""
    header = getattr(errback.type, "__header__", None)
    in_process = header is not None and not isinstance(header, partial)
    if in_process:
        # Celery 5.7 counts only the arguments the signature leaves unbound; earlier versions
        # the function's.
        arity = getattr(app.backend, "_errback_arity_greater", None)
        in_process = bool(arity(errback, 1) if arity is not None else arity_greater(header, 1))
    try:
        if in_process:
            errback(request, exc, call.get("traceback"))
        else:
            root_id = request.root_id or request.id
            errback.apply_async((request.id,), parent_id=request.id, root_id=root_id)
    except Exception:
        logger.exception("Errback %r raised an exception", errback.name)
        return ACK, "FAILURE", ""
    return ACK, "SUCCESS", ""


def _trace(
    envelope: bytes, queue: str, redelivered: bool, trace_args: tuple[Any, ...]
) -> tuple[tuple[str, str, str] | None, Any, float]:
    """Runs ``fast_trace_task(*trace_args)`` with the soft time limit armed. Returns
    ``(settled, result, time_accepted)``: ``settled`` is the outcome if an exception escaped the
    tracer (billiard hands it to the error callback), else ``None``. ``SystemExit`` and
    ``KeyboardInterrupt`` propagate: the process exits, as a billiard child does."""
    st = _child()
    time_accepted = time.monotonic()
    main = threading.current_thread() is threading.main_thread()
    if main:
        st.running = True
    try:
        result = st.fast_trace_task(*trace_args)
    except BaseException as exc:
        if main:
            st.running = False
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise
        return _settle_error(envelope, queue, redelivered, time_accepted), None, time_accepted
    if main:
        st.running = False
    return None, result, time_accepted


def _json_loads(data: bytes) -> Any:
    """``kombu.utils.json.loads(data)``."""
    decoded = _plain_json(data)
    if decoded is not _KOMBU:
        return decoded
    from kombu.utils.json import loads

    return loads(data)


#: What :func:`_plain_json` returns when kombu's JSON decoder must decode the text.
_KOMBU: Any = object()

#: The escapes that can spell a character of ``__type__`` in a JSON string (``\u005f`` is
#: ``_``, ``\u0074`` is ``t``).
_NAME_ESCAPES = ("\\u005", "\\u006", "\\u007")


def _plain_json(data: Any) -> Any:
    """``data`` (UTF-8 bytes or text) decoded by the C JSON decoder alone, when kombu's
    decoder would give the same: the text names no ``__type__`` key (kombu's object hook turns
    ``{"__type__": …, "__value__": …}`` into datetimes, UUIDs, decimals and registered types),
    not even with escapes, and decodes without error. Else :data:`_KOMBU`, and kombu decodes it
    (its errors included).

    The hook runs in Python for every object of the text: with it, decoding was about a fifth
    of a no-op task's time in the child.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return _KOMBU
    elif isinstance(data, str):
        text = data
    else:
        return _KOMBU
    if not text or "__type__" in text or any(e in text for e in _NAME_ESCAPES):
        return _KOMBU
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _KOMBU


def _settle_failure(
    envelope: bytes, queue: str, redelivered: bool, time_accepted: float, result: Any
) -> tuple[str, str, str]:
    """What Celery's MainProcess does with ``(1, ExceptionInfo, runtime)`` from the pool."""
    from celery.exceptions import Ignore, Reject, Retry

    st = _child()
    recorder = _Recorder()
    req = _request(envelope, queue, redelivered, recorder)
    req.on_accepted(st.pid, time_accepted)
    exc = result[1].exception
    exc = getattr(exc, "exc", exc)
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        raise exc
    req.on_success(result)
    decision = recorder.decision
    # On an ack, the exception and its traceback go to the worker for task events.
    detail = f"{exc!r}\x1e{result[1].traceback or ''}" if decision == ACK else ""
    return decision, _state_of(exc, Reject, Ignore, Retry), detail


def _settle_error(
    envelope: bytes, queue: str, redelivered: bool, time_accepted: float
) -> tuple[str, str, str]:
    """An exception escaped the tracer: billiard hands it to the error callback."""
    from billiard.einfo import ExceptionInfo
    from celery.exceptions import Ignore, Reject, Retry

    einfo = ExceptionInfo()
    st = _child()
    recorder = _Recorder()
    req = _request(envelope, queue, redelivered, recorder)
    req.on_accepted(st.pid, time_accepted)
    req.on_failure(einfo)
    return recorder.decision, _state_of(einfo.exception, Reject, Ignore, Retry), ""


def _run_with_request(envelope: bytes, queue: str, redelivered: bool) -> tuple[str, str, str]:
    """The general path: Celery's ``Request`` first (protocol 1 and hybrid messages, expiry,
    compression, unknown tasks), then the tracer and the callbacks."""
    st = _child()
    recorder = _Recorder()
    try:
        req = _request(envelope, queue, redelivered, recorder)
    except _Undecodable as exc:
        return REJECT, "UNDECODABLE", str(exc)
    if (req.expires or req.id in st.revoked_tasks) and req.revoked():
        return recorder.decision, "REVOKED", ""
    trace_args = (
        req.type,
        req.id,
        req.request_dict,
        req.body,
        req.content_type,
        req.content_encoding,
    )
    settled, result, time_accepted = _trace(envelope, queue, redelivered, trace_args)
    if settled is not None:
        return settled
    if not result[0]:
        req.on_accepted(st.pid, time_accepted)
        req.on_success(result)
        return recorder.decision, "SUCCESS", result[1] if isinstance(result[1], str) else ""
    return _settle_failure(envelope, queue, redelivered, time_accepted, result)


def _state_of(exc: BaseException, reject: type, ignore: type, retry: type) -> str:
    if isinstance(exc, retry):
        return "RETRY"
    if isinstance(exc, reject):
        return "REJECTED"
    if isinstance(exc, ignore):
        return "IGNORED"
    return "FAILURE"


def post_mortem(
    envelope: bytes, queue: str, redelivered: bool, cause: str, detail: str, hard_limit: float
) -> tuple[str, str, str]:
    """Settles a delivery whose child died: ``cause`` is ``lost`` (the process exited, ``detail``
    says how), ``timeout`` (killed at the hard time limit ``hard_limit``) or ``terminated``
    (killed by a revoke with ``terminate=True``, ``detail`` the signal number); or, in a threads or
    solo pool, whose task raised ``SystemExit`` (``cause`` ``in_process``, ``detail`` its repr).

    Runs Celery's MainProcess handling: ``WorkerLostError`` through ``on_failure`` (which
    covers ``acks_late``, ``reject_on_worker_lost`` and ``retry_on_worker_lost``), or for a hard
    time limit what billiard runs: before Celery 5.7, ``on_failure`` with ``TimeLimitExceeded``
    (the pool's error callback: result, ``task_failure``, the ack or requeue) then
    ``on_timeout(soft=False)``; from 5.7 on, whose ``on_timeout`` runs the failure hooks and
    sends ``task_failure`` itself, ``on_timeout`` alone, so the signal is sent once.
    """
    from billiard.einfo import ExceptionInfo
    from billiard.exceptions import WorkerLostError

    st = _child()
    recorder = _Recorder()
    try:
        req = _request(envelope, queue, redelivered, recorder)
    except _Undecodable as exc:
        return REJECT, "UNDECODABLE", str(exc)
    req.on_accepted(st.pid, time.monotonic())
    if cause == "terminated":
        # Killed by ``revoke(terminate=True)`` with signal ``detail``: billiard reports
        # ``Terminated(-signum)``, and Celery's ``on_failure`` stores REVOKED ('terminated'),
        # sends ``task_revoked`` and acknowledges.
        from billiard.exceptions import Terminated

        try:
            raise Terminated(-int(detail or 0))
        except Terminated:
            req.on_failure(ExceptionInfo())
        return recorder.decision, "REVOKED", ""
    if cause == "timeout":
        if not _on_timeout_runs_failure_hooks():
            from billiard.exceptions import TimeLimitExceeded

            try:
                raise TimeLimitExceeded(hard_limit)
            except TimeLimitExceeded:
                req.on_failure(ExceptionInfo())
        req.on_timeout(False, hard_limit)
        return recorder.decision, "FAILURE", ""
    # ``in_process``: a threads or solo pool task raised SystemExit; Celery's ``apply_target``
    # turns it into ``WorkerLostError(repr(exc))`` and the pool goes on.
    message = detail if cause == "in_process" else f"Worker exited prematurely: {detail}."
    try:
        raise WorkerLostError(message)
    except WorkerLostError:
        einfo = ExceptionInfo()
    req.on_failure(einfo)
    return recorder.decision, "FAILURE", ""


def _on_timeout_runs_failure_hooks() -> bool:
    """Whether this Celery's ``Request.on_timeout`` runs ``on_failure`` and sends
    ``task_failure`` for a hard time limit (5.7 and later)."""
    import celery

    return tuple(celery.VERSION[:2]) >= (5, 7)


def max_rss_kib() -> int:
    """Peak resident set size of this process in KiB (what billiard compares with
    ``worker_max_memory_per_child``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def ready() -> None:
    """Sends ``worker_ready`` (the binary calls it in one child, once every child is up)."""
    from celery import signals

    st = _child()
    signals.worker_ready.send(sender=_WorkerStub(st.app, st.hostname, st.pool, 0, 0))


def shutdown(exitcode: int, announce_worker: bool) -> None:
    """Sends ``worker_process_shutdown`` and, in one child, ``worker_shutdown``."""
    from celery import signals

    st = _child()
    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=exitcode)
    if announce_worker:
        signals.worker_shutdown.send(sender=_WorkerStub(st.app, st.hostname, st.pool, 0, 0))
