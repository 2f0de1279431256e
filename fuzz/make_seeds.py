#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/ (named by SHA-1, as
libFuzzer names its corpus files). Seeds: the golden Celery 5.7 envelopes in
runtime/protocol/tests/fixtures/celery-5.7, their bodies, and a few hand-made frames and LISTEN
payloads. Idempotent; `scripts/fuzz` runs it before fuzzing. Standard library only; with the
`msgpack` package importable (it is in the project's .venv), the JSON bodies are also written as
msgpack seeds."""

import base64
import hashlib
import json
import pathlib
import struct
import zlib

try:
    import msgpack
except ImportError:
    msgpack = None

FUZZ = pathlib.Path(__file__).resolve().parent
GOLDEN = FUZZ.parent / "runtime/protocol/tests/fixtures/celery-5.7"


def put(target, data, name=None):
    if isinstance(data, str):
        data = data.encode()
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / (name or hashlib.sha1(data).hexdigest())).write_bytes(data)


def frame(meta, raw=b""):
    meta = json.dumps(meta, separators=(",", ":")).encode()
    return struct.pack("<II", 4 + len(meta) + len(raw), len(meta)) + meta + raw


for path in sorted(GOLDEN.glob("*.envelope.json")):
    payload = path.read_bytes()
    put("envelope", payload)
    env = json.loads(payload)
    body = base64.b64decode(env["body"])
    if env["headers"].get("compression"):
        put("zlib_body", b"\x00\x10\x10" + body)  # JSON, the stream as stored, 64 MiB limits
        body = zlib.decompress(body)
        put("zlib_body", b"\x02\x01\x01" + body)  # JSON, compressed by the target, small limits
    if env["content-type"] == "application/json":
        put("json_body", body)
        try:
            put("msgpack_body", msgpack.packb(json.loads(body), use_bin_type=True))
        except (AttributeError, OverflowError):  # no msgpack, or an int beyond 64 bits
            pass
    elif env["content-type"] == "application/x-msgpack":
        put("msgpack_body", body)
        put("zlib_body", b"\x03\x10\x10" + body)
        put("zlib_body", b"\x01\x10\x10" + zlib.compress(body))
    if path.name == "add_plain.envelope.json":
        put("frame", frame({"kind": "job", "seq": 1, "queue": "celery", "redelivered": False}, payload)
            + frame({"kind": "ready"}))

put("json_body", '[{"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}, '
                 '{"__type__": "base64", "__value__": "AP9oaQ=="}, {"__type__": "time", "__value__": "03:04"}, '
                 '"\\ud83d\\ude00\\ud800", -0.0, 1e400, 123456789012345678901234567890]')
put("frame", frame({"kind": "post_mortem", "seq": 2, "queue": "q", "redelivered": True, "cause": "timeout",
                    "detail": "signal 9 (SIGKILL)", "hard_limit": 1.5}, b"{}")
    + frame({"kind": "shutdown", "announce_worker": True}))
put("frame", frame({"kind": "hello", "hello": {"pid": 1, "tasks": ["a"], "x": None}})
    + frame({"kind": "result", "seq": 1, "decision": "ack", "state": "SUCCESS", "detail": "", "max_rss_kib": 1024})
    + frame({"kind": "init_error", "message": "boom"}))
# Decompression bombs (issue 9: a ~65 KB zlib body decoded to gigabytes of values), smaller:
# 16 MiB of `0,` (8 M values) in ~16 KB, 8 M msgpack nils in ~8 KB; refused as too_large.
json_bomb = zlib.compress(b"[[" + b"0," * (8 << 20) + b"0], {}, {}]", 9)
msgpack_bomb = zlib.compress(b"\x93\xdd" + (8 << 20).to_bytes(4, "big") + b"\xc0" * (8 << 20) + b"\x80\x80", 9)
for name, bomb, content_type in [("json", json_bomb, "application/json"),
                                 ("msgpack", msgpack_bomb, "application/x-msgpack")]:
    put("envelope", json.dumps({
        "body": base64.b64encode(bomb).decode(), "content-encoding": "binary", "content-type": content_type,
        "headers": {"lang": "py", "task": "bomb", "id": "1", "compression": "application/x-gzip"},
        "properties": {"body_encoding": "base64", "delivery_info": {"exchange": "", "routing_key": "celery"}},
    }), f"regression-zlib-{name}-bomb")
# The same under the zlib_body target's small limits: the inflate limit (64 KiB), then the
# value budget (inflate up to 32 MiB, values up to 64 KiB).
put("zlib_body", b"\x00\x06\x0f" + json_bomb[:4096], "regression-zlib-json-bomb-inflate-limit")
put("zlib_body", b"\x02\x0f\x06" + b"[[" + b"0," * 2000 + b"0], {}, {}]", "regression-json-value-budget")
put("zlib_body", b"\x03\x0f\x06" + b"\x93\xdd\x00\x01\x00\x00" + b"\xc0" * 4000, "regression-msgpack-value-budget")

for payload in ["*", '["celery"]', '["celery", "hipri", "q\\u00e9"]', "[]", '[1, "a"]']:
    put("wakeup", payload)
