"""The systems under test: one module per family, each exporting ``SYSTEMS``."""
