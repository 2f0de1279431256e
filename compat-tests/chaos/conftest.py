"""compat-tests/chaos holds the chaos suite (``scripts/chaos``), not pytest tests."""

collect_ignore_glob = ["*.py"]
