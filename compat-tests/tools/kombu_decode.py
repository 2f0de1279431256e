#!/usr/bin/env python3
"""Decode kombu virtual-transport envelopes exactly the way a real Celery 5.7 worker does.

Usage::

    kombu_decode.py [--accept pickle,msgpack] [FILE ...]      # or envelopes on stdin, one a line

Each input is one envelope JSON text (what kombu's SQLAlchemy transport keeps in
``kombu_message.payload``). A FILE holds either one JSON document (possibly pretty-printed) or one
envelope per line; ``-`` is stdin. For every envelope this prints one JSON line (encoded with
``kombu.utils.json.dumps``, so special values keep kombu's ``__type__`` markers and NaN/Infinity
stay bare, exactly like kombu emits them)::

    {"ok": true, "protocol": 2, "headers": {...}, "properties": {...}, "args": [...],
     "kwargs": {...}, "embed": {...}, "body_text": "..."|null, "body_b64": "...",
     "eta": "<iso>"|null, "expires": "<iso>"|null, "time_limits": [hard, soft], "request": {...}}
    {"ok": false, "error": "ContentDisallowed: ..."}

Exit status 0 when every envelope was accepted, 1 otherwise (2 for usage errors).

The path mirrors the worker: stdlib ``json.loads`` of the payload (kombu's SQLAlchemy ``_get``),
``channel.message_to_python`` of kombu's virtual channel (base64 ``body_encoding``, ``compression``
header), ``Message.decode`` under the ``accept`` list (default ``['json']``, Celery's default
``accept_content``), then Celery's consumer/strategy logic (``headers['task']`` ⇒ protocol 2, else
decode the v1/hybrid dict and convert with ``celery.worker.strategy``) and finally
``celery.worker.request.Request`` (parses eta/expires/timelimit, unpacks ``[args, kwargs, embed]``
and builds the task ``Context``). A dummy task is registered for whatever name a message carries
(so ``NotRegistered`` never happens here).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import InvalidTaskError
from celery.worker.request import Request
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2
from kombu import Connection
from kombu.serialization import prepare_accept_content
from kombu.transport.virtual import Channel as VirtualChannel
from kombu.transport.virtual import Message as VirtualMessage
from kombu.utils.json import dumps as kombu_dumps

__all__ = ["Decoder", "decode_envelope", "dumps_value", "main"]

#: The worker's default ``accept_content``.
DEFAULT_ACCEPT: tuple[str, ...] = ("json",)


def dumps_value(value: Any) -> str | None:
    """``kombu.utils.json.dumps(value)``, or None when kombu's JSON cannot represent it."""
    try:
        return kombu_dumps(value)
    except (TypeError, ValueError):
        return None


def _jsonable(value: Any) -> Any:
    """``value`` if kombu's JSON can encode it, else a ``{"__unrepresentable__": repr}`` stand-in.

    (Never a ``__type__`` marker: those must only ever be real kombu markers.)
    """
    if dumps_value(value) is not None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return {"__unrepresentable__": repr(value)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Decoder:
    """Holds one Celery app and one kombu virtual channel; decodes many envelopes."""

    def __init__(self, accept: Iterable[str] = DEFAULT_ACCEPT) -> None:
        self.accept_names = list(accept)
        self.app = Celery("kombu_decode", broker="memory://", set_as_current=False)
        self.app.conf.accept_content = self.accept_names
        self.accept = prepare_accept_content(self.accept_names)
        self.connection = Connection("memory://")
        channel = self.connection.default_channel
        assert isinstance(channel, VirtualChannel)
        self.channel: VirtualChannel = channel

    def close(self) -> None:
        self.connection.release()

    def _task_for(self, name: str) -> Any:
        tasks = self.app.tasks
        if name not in tasks:

            def _dummy(*args: Any, **kwargs: Any) -> None:
                return None

            self.app.task(name=name, shared=False)(_dummy)
        return tasks[name]

    def decode(self, text: str) -> dict[str, Any]:
        """Decode one envelope text; raises on anything a worker would reject."""
        # kombu.transport.sqlalchemy.Channel._get: loads(bytes_to_str(msg.payload)) (stdlib json).
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise InvalidTaskError(f"envelope is not a JSON object: {type(raw).__name__}")
        message = self.channel.message_to_python(raw)
        assert isinstance(message, VirtualMessage)
        # kombu.Consumer._receive_callback sets the consumer's accept list on every message.
        message.accept = self.accept
        if message.errors:
            # e.g. failed decompression; Message.decode() would re-raise it.
            _exc_type, exc, _tb = message.errors[0]
            raise exc

        # celery.worker.consumer.consumer.Consumer.on_task_received
        headers = message.headers
        payload: Any = None
        try:
            task_name = headers["task"]  # protocol v2
            protocol = 2
        except TypeError:
            raise InvalidTaskError(f"unknown message: headers is {type(headers).__name__}") from None
        except KeyError:
            payload = message.decode()
            try:
                task_name = payload["task"]  # protocol v1
            except (TypeError, KeyError):
                raise InvalidTaskError("unknown message: no task header and no task in body") from None
            protocol = 1
        if not isinstance(task_name, str):
            raise InvalidTaskError(f"task name is not a string: {task_name!r}")
        task = self._task_for(task_name)

        # celery.worker.strategy.default -> task_message_handler
        if payload is None and "args" not in message.payload:
            body, req_headers, decoded, utc = (
                message.body,
                message.headers,
                False,
                self.app.uses_utc_timezone(),
            )
        elif "args" in message.payload:
            body, req_headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            body, req_headers, decoded, utc = proto1_to_proto2(message, payload)

        req = Request(
            message,
            app=self.app,
            task=task,
            hostname="kombu-decode@localhost",
            body=body,
            headers=req_headers,
            decoded=decoded,
            utc=utc,
        )
        args, kwargs, embed = req._payload
        # What trace_task/fast_trace_task will need: fun(*args, **kwargs), Context(embed).
        if not isinstance(args, (list, tuple)):
            raise InvalidTaskError(f"args is not a list: {type(args).__name__}")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise InvalidTaskError("kwargs is not a mapping with string keys")
        if embed is not None and not isinstance(embed, dict):
            raise InvalidTaskError(f"embed is not a mapping: {type(embed).__name__}")
        context = req._context

        # kombu's Message.__init__ already base64-decoded (channel) and decompressed the body.
        serialized = message.body
        if isinstance(serialized, str):
            serialized = serialized.encode("utf-8")
        try:
            body_text: str | None = serialized.decode("utf-8")
        except UnicodeDecodeError:
            body_text = None

        hard, soft = req.time_limits
        return {
            "ok": True,
            "protocol": protocol,
            "headers": _jsonable(headers),
            "properties": _jsonable(message.properties),
            "content_type": message.content_type,
            "content_encoding": message.content_encoding,
            "args": _jsonable(args),
            "kwargs": _jsonable(kwargs),
            "embed": _jsonable(embed),
            "body_text": body_text,
            "body_b64": base64.b64encode(serialized).decode("ascii"),
            "eta": _iso(req.eta),
            "expires": _iso(req.expires),
            "time_limits": [hard, soft],
            "request": _jsonable(
                {
                    "id": req.id,
                    "task": req.type,
                    "name": req.name,
                    "root_id": req.root_id,
                    "parent_id": req.parent_id,
                    "group": req.group,
                    "group_index": req.group_index,
                    "retries": context.retries,
                    "ignore_result": req.ignore_result,
                    "correlation_id": req.correlation_id,
                    "reply_to": req.reply_to,
                    "delivery_info": req.delivery_info,
                    "argsrepr": req.argsrepr,
                    "kwargsrepr": req.kwargsrepr,
                    "utc": req.utc,
                }
            ),
        }


def decode_envelope(text: str, accept: Iterable[str] = DEFAULT_ACCEPT) -> dict[str, Any]:
    """One-shot :meth:`Decoder.decode` returning ``{"ok": false, "error": ...}`` on failure."""
    decoder = Decoder(accept)
    try:
        return safe_decode(decoder, text)
    finally:
        decoder.close()


def safe_decode(decoder: Decoder, text: str) -> dict[str, Any]:
    try:
        return decoder.decode(text)
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _texts_from_file(data: str) -> Iterator[str]:
    stripped = data.strip()
    if not stripped:
        return
    try:
        json.loads(stripped)
    except ValueError:
        for line in data.splitlines():
            if line.strip():
                yield line.strip()
    else:
        yield stripped


def _inputs(paths: Sequence[str]) -> Iterator[str]:
    if not paths:
        for line in sys.stdin:
            if line.strip():
                yield line.strip()
        return
    for path in paths:
        data = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        yield from _texts_from_file(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="envelope files (default: stdin, one envelope a line)")
    parser.add_argument(
        "--accept",
        default="",
        help="extra serializers to accept besides json, comma separated (e.g. pickle,msgpack)",
    )
    args = parser.parse_args(argv)
    accept = list(DEFAULT_ACCEPT) + [a.strip() for a in args.accept.split(",") if a.strip()]

    decoder = Decoder(accept)
    all_ok = True
    count = 0
    try:
        for text in _inputs(args.files):
            result = safe_decode(decoder, text)
            all_ok = all_ok and bool(result["ok"])
            count += 1
            sys.stdout.write(kombu_dumps(result) + "\n")
    finally:
        decoder.close()
    sys.stdout.flush()
    if count == 0:
        print("kombu_decode: no envelopes given", file=sys.stderr)
        return 1
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
