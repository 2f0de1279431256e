"""The example's tasks."""

from __future__ import annotations

from proj.celery import app


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fail(message: str) -> None:
    raise ValueError(message)
