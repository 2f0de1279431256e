"""The ``celeriac`` command: ``celeriac worker -A proj``, ``python -m celeriac worker -A proj``.

The command is the Rust ``celeriac`` binary that this wheel carries (``celeriac/_bin/``). This
entry point replaces itself with it (same process id, signals and exit status) and tells it which
interpreter runs the app's tasks: this one (``CELERIAC_PYTHON``, unless already set), so the pool
children use this environment whatever Python version it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The binary, inside the installed package.
BINARY = Path(__file__).resolve().parent / "_bin" / "celeriac"


def main() -> None:
    if not os.access(BINARY, os.X_OK):
        sys.exit(
            f"celeriac: the worker binary is missing from this installation ({BINARY}): "
            "reinstall celeriac from a wheel (pip install --force-reinstall celeriac)"
        )
    os.environ.setdefault("CELERIAC_PYTHON", sys.executable)
    os.execv(BINARY, ["celeriac", *sys.argv[1:]])


if __name__ == "__main__":
    main()
