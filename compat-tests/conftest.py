"""Shared pytest setup for celeriac's Python compatibility tests.

* ``compat-tests/tools`` is importable (``import kombu_decode``, ``import celery_capture``...).
* ``fixtures_dir``: the golden Celery 5.7 fixtures (``runtime/protocol/tests/fixtures/celery-5.7``).
* ``celeriac_bin``: path of the ``celeriac`` binary, from ``CELERIAC_BIN`` or
  ``<repo>/target/debug/celeriac``; tests using it are skipped while it is not built.
* ``postgres_url``: from ``CELERIAC_TEST_DATABASE_URL`` (or ``DATABASE_URL``); tests using it are
  skipped when neither is set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

COMPAT_DIR = Path(__file__).resolve().parent
REPO_ROOT = COMPAT_DIR.parent
TOOLS_DIR = COMPAT_DIR / "tools"
FIXTURES_DIR = REPO_ROOT / "runtime" / "protocol" / "tests" / "fixtures" / "celery-5.7"

if str(TOOLS_DIR) not in sys.path:
    sys.path.insert(0, str(TOOLS_DIR))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def celeriac_bin() -> Path:
    path = Path(os.environ.get("CELERIAC_BIN") or REPO_ROOT / "target" / "debug" / "celeriac")
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.skip(f"celeriac binary not found at {path} (cargo build, or set CELERIAC_BIN)")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("CELERIAC_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("no PostgreSQL: set CELERIAC_TEST_DATABASE_URL")
    return url
