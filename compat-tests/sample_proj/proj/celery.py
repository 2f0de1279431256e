"""The sample app. Its settings come from the environment, so the tests can point it at a
throwaway database: ``PROJ_RESULT_BACKEND`` (a ``db+postgresql+psycopg://`` URL) and
``PROJ_SIGNAL_LOG`` (a file that signal receivers append to); ``PROJ_DEFAULT_QUEUE`` and
``PROJ_CONCURRENCY`` set ``task_default_queue`` and ``worker_concurrency``, ``PROJ_ACCEPT``
(comma-separated) ``accept_content``; ``PROJ_RATE_SETTINGS`` (JSON) is applied as settings, e.g.
``{"task_annotations": {"proj.tasks.stamp": {"rate_limit": "2/s"}}}``."""

from __future__ import annotations

import json
import os

from celery import Celery

app = Celery(
    "proj",
    # Whatever the app says, celeriac's pool children publish to the worker's database.
    broker=os.environ.get("PROJ_BROKER_URL", "amqp://guest@localhost//"),
    backend=os.environ.get("PROJ_RESULT_BACKEND", "cache+memory://"),
    include=["proj.tasks"],
)
app.conf.update(
    result_extended=True,
    task_track_started=False,
    broker_connection_retry_on_startup=False,
    task_default_queue=os.environ.get("PROJ_DEFAULT_QUEUE", "celery"),
)
if os.environ.get("PROJ_ACCEPT"):
    app.conf.accept_content = os.environ["PROJ_ACCEPT"].split(",")
if os.environ.get("PROJ_CONCURRENCY"):
    app.conf.worker_concurrency = int(os.environ["PROJ_CONCURRENCY"])
if os.environ.get("PROJ_RATE_SETTINGS"):
    app.conf.update(json.loads(os.environ["PROJ_RATE_SETTINGS"]))
