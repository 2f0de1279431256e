"""Celery Beat scheduler classes for the hand-over from Beat to celeriac, schedule by schedule.

Run Beat with one of them while ``celeriac schedule ramp`` moves schedules to celeriac::

    celery -A proj beat -S celeriac.beat:Scheduler          # beat_schedule from the code
    celery -A proj beat -S celeriac.beat:DatabaseScheduler  # django-celery-beat's tables

Before each send, Beat asks the database who fires the entry (one short transaction, under the
schedule row's lock): entries celeriac fires are skipped; the others are sent and the send is
recorded, so a move to celeriac knows whether Beat already sent the current slot. Every slot is
then sent exactly once, by one side or the other, whenever the move happens. Entries the
database does not know (never imported) are sent as usual. See ``docs/beat.md``.

The database is the app's ``celeriac_database_url`` setting, else its broker URL when that is
``celeriac+postgresql://…``, else ``$CELERIAC_DATABASE_URL``. When the database cannot be
reached, Beat skips the entry and logs an error: a slot may be lost then, never sent twice.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry

from celeriac import _native

logger = logging.getLogger("celeriac.beat")

__all__ = ["OwnershipMixin", "Scheduler", "database_url"]


def database_url(app: Any) -> str:
    """The database holding celeriac's schedules, from the app's settings (module docs)."""
    url = app.conf.get("celeriac_database_url")
    if not url:
        broker = str(app.conf.broker_url or "")
        if broker.startswith("celeriac+"):
            url = broker[len("celeriac+") :]
    url = url or os.environ.get("CELERIAC_DATABASE_URL")
    if not url:
        raise RuntimeError(
            "celeriac.beat needs the database of celeriac's schedules: set celeriac_database_url "
            "(or a celeriac+postgresql:// broker_url, or CELERIAC_DATABASE_URL)"
        )
    return str(url)


class OwnershipMixin:
    """Sends an entry only while Beat owns it in celeriac's schedule table (module docs)."""

    app: Any
    _celeriac_store: _native.Store | None = None

    def _owned_by_beat(self, entry: ScheduleEntry) -> bool:
        if self._celeriac_store is None:
            self._celeriac_store = _native.Store(database_url(self.app), max_connections=1)
        try:
            owner, next_run = self._celeriac_store.schedule_beat_claim(entry.name)
        except Exception as exc:  # any database failure: skip rather than risk a double
            logger.error(
                "Scheduler: cannot ask celeriac who fires %s; skipped: %s", entry.name, exc
            )
            return False
        if owner == "celeriac":
            logger.debug("Scheduler: %s is fired by celeriac; skipped", entry.name)
            self._follow(entry, next_run)
            return False
        return True

    def _follow(self, entry: ScheduleEntry, next_run: float | None) -> None:
        """Keeps Beat's entry in step with celeriac's slots where it can (see :class:`Scheduler`);
        the ``beat_from`` fence in the database is what prevents doubles either way."""

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        if self._owned_by_beat(entry):
            super().apply_entry(entry, producer=producer)  # type: ignore[misc]


class Scheduler(OwnershipMixin, PersistentScheduler):
    """Celery's default scheduler (``beat_schedule``, the ``celerybeat-schedule`` file) that
    leaves the entries celeriac fires to celeriac."""

    def _follow(self, entry: ScheduleEntry, next_run: float | None) -> None:
        """Keeps Beat's own entry of an interval in step with celeriac's slots, so that if the
        schedule comes back to Beat, Beat sends celeriac's next slot, not one of its own phase.
        (The file scheduler's ``schedule`` is a plain dict: reading it has no side effects.)"""
        run_every = getattr(entry.schedule, "run_every", None)
        current = self.schedule.get(entry.name)  # type: ignore[attr-defined]
        if next_run is None or run_every is None or current is None:
            return
        following = datetime.datetime.fromtimestamp(next_run, tz=datetime.timezone.utc)
        current.last_run_at = following - run_every


def __getattr__(name: str) -> Any:
    # django-celery-beat is optional: its scheduler class is built on first use.
    if name == "DatabaseScheduler":
        from django_celery_beat.schedulers import DatabaseScheduler as _Django

        cls = type(
            "DatabaseScheduler",
            (OwnershipMixin, _Django),
            {
                "__doc__": "django-celery-beat's DatabaseScheduler that leaves the entries "
                "celeriac fires to celeriac.",
                "__module__": __name__,
            },
        )
        globals()["DatabaseScheduler"] = cls
        return cls
    raise AttributeError(name)
