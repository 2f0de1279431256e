"""Celery Beat scheduler classes for the hand-over from Beat to celeriac, schedule by schedule.

Run Beat with one of them while ``celeriac schedule ramp`` moves schedules to celeriac::

    celery -A proj beat -S celeriac.beat:Scheduler          # beat_schedule from the code
    celery -A proj beat -S celeriac.beat:DatabaseScheduler  # django-celery-beat's tables

When an entry falls due, Beat asks the database who fires it (one short transaction, under the
schedule row's lock): entries celeriac fires are skipped, and Beat looks again just after the
slot celeriac fires next; the others are sent and the send is recorded, so a move to celeriac
knows whether Beat already sent the current slot. Every slot is then sent exactly once, by one
side or the other, whenever the move happens. Entries the database does not know (never
imported) are sent as usual. See ``docs/beat.md``.

The database is the app's ``celeriac_database_url`` setting, else its broker URL when that is
``celeriac+postgresql://…``, else ``$CELERIAC_DATABASE_URL``. When the database cannot be
reached, Beat logs an error and asks again within seconds: a slot may be late then, never sent
twice.
"""

from __future__ import annotations

import datetime
import heapq
import logging
import os
import time
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


#: How long after the slot celeriac promised to fire Beat asks again (seconds): by then
#: celeriac has usually fired it; if the schedule came back to Beat first, Beat sends it.
AFTER_PROMISED_SLOT = 0.05
#: The shortest wait between two asks while celeriac is late with the slot it promised.
LATE_RECHECK_MIN = 0.2
#: The longest wait before asking again after the database could not be reached.
UNREACHABLE_RECHECK_MAX = 5.0


class OwnershipMixin:
    """Sends an entry only while Beat owns it in celeriac's schedule table (module docs).

    The database is asked in :meth:`is_due`, when the entry falls due, so that the answer also
    decides when Beat looks again (Celery's tick re-queues an entry that is not due at the delay
    :meth:`is_due` returns). While celeriac fires an entry, Beat looks again just after each slot
    celeriac has promised: a schedule moved back to Beat before celeriac fired that slot is sent
    by Beat then, instead of being lost until Beat's own next slot.
    """

    app: Any
    max_interval: float
    _celeriac_store: _native.Store | None = None
    _celeriac_granted: set[str] | None = None

    def _ask(self, name: str) -> tuple[str, float | None] | None:
        """The database's answer for ``name`` (``Store.schedule_beat_claim``); ``None`` when
        the database cannot be reached."""
        if self._celeriac_store is None:
            self._celeriac_store = _native.Store(database_url(self.app), max_connections=1)
        try:
            return self._celeriac_store.schedule_beat_claim(name)
        except Exception as exc:  # any database failure: not sent now rather than risk a double
            logger.error(
                "Scheduler: cannot ask celeriac who fires %s; asking again shortly: %s", name, exc
            )
            return None

    def is_due(self, entry: ScheduleEntry) -> tuple[bool, float]:
        due, next_check = super().is_due(entry)  # type: ignore[misc]
        if not due:
            return due, next_check
        due, next_check = self._decide(entry, next_check)
        if not due:
            next_check = self._requeue(entry, next_check)
        return due, next_check

    def _requeue(self, entry: ScheduleEntry, delay: float) -> float:
        """Moves ``entry``, on top of Celery's heap, to its next look in ``delay`` seconds, and
        returns how long the tick may sleep. Celery before 5.7 leaves an entry that is not due on
        top of the heap with its old time (celery#7649): while celeriac fires that entry, no
        other would get its turn. (5.7's tick, finding the top changed, leaves the heap as it
        is and sleeps until the new top.)"""
        heap = getattr(self, "_heap", None)
        if not heap or heap[0][2] is not entry:
            return delay
        top = heap[0]
        heapq.heapreplace(heap, type(top)(self._when(entry, delay), top[1], entry))  # type: ignore[attr-defined]
        until_top = heap[0][0] - self._when(entry, 0)  # type: ignore[attr-defined]
        return max(0.0, min(delay, until_top))

    def _app_time(self, timestamp: float) -> datetime.datetime:
        """A database time in the app's time zone (Celery 5.6's crontab reads an aware
        ``last_run_at`` by its clock time)."""
        utc = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
        return utc.astimezone(self.app.timezone)

    def _decide(self, entry: ScheduleEntry, next_check: float) -> tuple[bool, float]:
        """Whether Beat sends ``entry``, which its schedule says is due, and when to look
        again if not."""
        answer = self._ask(entry.name)
        if answer is None:
            # Asked again soon: the slot is sent late (once the database answers), never twice.
            return False, min(self.max_interval, UNREACHABLE_RECHECK_MAX)
        owner, at = answer
        if owner in ("beat", "unknown"):
            # Claimed (and recorded) for the send that follows at once in the tick.
            if self._celeriac_granted is None:
                self._celeriac_granted = set()
            self._celeriac_granted.add(entry.name)
            return True, next_check
        if owner == "celeriac" and at is not None:
            logger.debug("Scheduler: %s is fired by celeriac; skipped", entry.name)
            self._follow(entry, at)
            wait = at - time.time()
            if wait > 0:
                return False, wait + AFTER_PROMISED_SLOT
            # celeriac is late with it: ask again, more slowly the later it is.
            return False, min(max(-wait, LATE_RECHECK_MIN), self.max_interval)
        # Fenced (celeriac fired the slot Beat is due for, just before the schedule came back),
        # or fired by celeriac with no next run (paused, disabled, ended): Beat counts that slot,
        # or now, as its own last run, and looks again when its entry is next due.
        logger.debug("Scheduler: %s was fired by celeriac; skipped", entry.name)
        if owner == "fenced" and at is not None:
            entry.last_run_at = self._app_time(at)
        else:
            entry.last_run_at = entry.default_now()
        due, next_check = super().is_due(entry)  # type: ignore[misc]
        return False, self.max_interval if due else next_check

    def _follow(self, entry: ScheduleEntry, next_run: float) -> None:
        """Keeps Beat's entry in step with celeriac's slots where it can (see :class:`Scheduler`);
        the ``beat_from`` fence in the database is what prevents doubles either way."""

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        granted = self._celeriac_granted
        if granted is not None and entry.name in granted:
            granted.discard(entry.name)  # claimed by is_due, just now
        else:
            # Sent other than by Celery's tick: ask here.
            answer = self._ask(entry.name)
            if answer is None or answer[0] not in ("beat", "unknown"):
                return
        super().apply_entry(entry, producer=producer)  # type: ignore[misc]


class Scheduler(OwnershipMixin, PersistentScheduler):
    """Celery's default scheduler (``beat_schedule``, the ``celerybeat-schedule`` file) that
    leaves the entries celeriac fires to celeriac."""

    def _follow(self, entry: ScheduleEntry, next_run: float) -> None:
        """Keeps Beat's own entry of an interval in step with celeriac's slots: it falls due
        at celeriac's next slot, so that if the schedule comes back to Beat, Beat sends
        celeriac's next slot, not one of its own phase."""
        run_every = getattr(entry.schedule, "run_every", None)
        if run_every is None:
            return
        entry.last_run_at = self._app_time(next_run) - run_every


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
