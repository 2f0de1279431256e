"""A small Celery project that celeriac's tests run with ``celeriac worker -A proj``."""

from proj.celery import app

__all__ = ["app"]
