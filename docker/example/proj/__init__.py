"""An example Celery app on celeriac's PostgreSQL queue (docker/compose.yaml runs it)."""

from proj.celery import app

__all__ = ["app"]
