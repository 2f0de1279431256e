"""Keep the golden Celery fixtures honest.

Each ``<case>.envelope.json`` under ``runtime/protocol/tests/fixtures/celery-5.7`` must be
accepted by the real worker-side decode path (``kombu_decode``: kombu virtual channel, accept list,
``celery.worker.request.Request``), and everything its ``<case>.expected.json`` claims must match
what that path sees. Regenerate with ``.venv/bin/python compat-tests/tools/capture_golden.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import celery
import kombu
import pytest
from kombu.exceptions import ContentDisallowed
from kombu.utils.json import dumps as kombu_dumps

import capture_golden
from kombu_decode import Decoder

#: Content types a default worker (accept_content=['json']) refuses.
NON_DEFAULT_CONTENT = {"application/x-python-serialize", "application/x-msgpack"}

FIXTURES_DIR = capture_golden.DEFAULT_OUT

ENVELOPE_KEYS = ["body", "content-encoding", "content-type", "headers", "properties"]


def fixture_names() -> list[str]:
    return sorted(p.name.removesuffix(".envelope.json") for p in FIXTURES_DIR.glob("*.envelope.json"))


def expected_names() -> set[str]:
    names: set[str] = set()
    for case in capture_golden.CASES:
        names.update(case.parts or [case.name])
    return names


def load(name: str) -> tuple[str, dict[str, Any]]:
    text = (FIXTURES_DIR / f"{name}.envelope.json").read_text(encoding="utf-8")
    expected = json.loads((FIXTURES_DIR / f"{name}.expected.json").read_text(encoding="utf-8"))
    return text, expected


@pytest.fixture(scope="module")
def accept_all() -> Iterator[Decoder]:
    decoder = Decoder(["json", "pickle", "msgpack"])
    yield decoder
    decoder.close()


def test_fixture_set_matches_generator() -> None:
    envelopes = set(fixture_names())
    expecteds = {p.name.removesuffix(".expected.json") for p in FIXTURES_DIR.glob("*.expected.json")}
    assert envelopes == expecteds, "every envelope needs its expected.json and vice versa"
    assert envelopes == expected_names(), "fixtures differ from capture_golden.CASES: regenerate them"


@pytest.mark.parametrize("name", fixture_names())
def test_envelope_is_exact_stdlib_json(name: str) -> None:
    """The stored text is json.dumps(envelope) (kombu's SQLAlchemy transport): ASCII, ', '/': '."""
    text, expected = load(name)
    assert not text.endswith("\n")
    assert text.isascii()
    envelope = json.loads(text)
    assert json.dumps(envelope) == text
    assert list(envelope) == ENVELOPE_KEYS
    assert envelope["properties"]["body_encoding"] == "base64"
    assert expected["celery_version"] == celery.__version__
    assert expected["kombu_version"] == kombu.__version__


@pytest.mark.parametrize("name", fixture_names())
def test_expected_derives_from_envelope(name: str) -> None:
    """expected.json is exactly what capture_golden derives from the envelope text."""
    text, expected = load(name)
    assert capture_golden.expected_for(text) == expected


@pytest.mark.parametrize("name", fixture_names())
def test_worker_decode_matches_expected(name: str, json_decoder: Decoder, accept_all: Decoder) -> None:
    text, expected = load(name)

    if expected["content_type"] in NON_DEFAULT_CONTENT:
        # A default worker (accept_content=['json']) refuses pickle/msgpack, as Celery does.
        with pytest.raises(ContentDisallowed):
            json_decoder.decode(text)
        result = accept_all.decode(text)
    else:
        result = json_decoder.decode(text)

    assert result["ok"] is True
    request = result["request"]
    assert result["protocol"] == expected["protocol"]
    assert request["task"] == expected["task"]
    assert request["id"] == expected["id"]
    assert request["root_id"] == expected["root_id"]
    assert request["parent_id"] == expected["parent_id"]
    assert request["group"] == expected["group"]
    assert request["group_index"] == expected["group_index"]
    assert request["delivery_info"]["routing_key"] == expected["queue"]
    assert result["properties"]["priority"] == expected["priority"]
    assert result["eta"] == expected["eta"]
    assert result["expires"] == expected["expires"]
    assert request["retries"] == expected["retries"]
    assert result["time_limits"] == expected["timelimit"]
    # A null header falls back to the task's ignore_result (False for the dummy task).
    assert request["ignore_result"] == (expected["ignore_result"] or False)
    assert result["content_type"] == expected["content_type"]
    assert result["content_encoding"] == expected["content_encoding"]
    assert result["headers"].get("compression") == expected["compression"]
    assert result["body_b64"] == expected["body_b64"]
    assert kombu_dumps(result["args"]) == expected["args_json"]
    assert kombu_dumps(result["kwargs"]) == expected["kwargs_json"]
    assert kombu_dumps(result["embed"]) == expected["embed_json"]
    assert sorted(result["headers"]) == expected["headers_keys"]


def test_fixtures_up_to_date() -> None:
    """A fresh capture with the installed Celery equals the committed fixtures (clock aside)."""
    assert capture_golden.check(FIXTURES_DIR) == 0
