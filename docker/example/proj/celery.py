"""The app: broker and result backend on the one PostgreSQL database, a periodic task."""

from __future__ import annotations

import os

from celery import Celery

# DATABASE_URL: the worker reads it too (it passes the app no CELERIAC_DATABASE_URL).
DATABASE_URL = os.environ["DATABASE_URL"]

app = Celery(
    "proj",
    broker=f"celeriac+{DATABASE_URL}",
    backend="db+" + DATABASE_URL.replace("postgresql://", "postgresql+psycopg://", 1),
    include=["proj.tasks"],
)
app.conf.update(
    result_extended=True,
    beat_schedule={"add-every-10s": {"task": "proj.tasks.add", "schedule": 10.0, "args": (2, 3)}},
)
