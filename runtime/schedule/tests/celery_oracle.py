"""Celery's own crontab answers, for `celery_differential.rs`.

Two modes, both printing JSON on stdout:

``random --seed S --count N --occurrences K``
    Generates N random crontab specs (numbers, names, ranges that may wrap, steps, lists, and some
    specs Celery refuses), builds each with ``celery.schedules.crontab`` and records either
    Celery's error or the expanded fields and the next K slots in UTC, stepping Celery's
    ``remaining_estimate`` from each slot the way Beat does (``nowfun`` returns the previous slot).
    Some specs are also run in zones without daylight saving time, and some in America/New_York.

``slots``
    Reads a JSON list of ``{"zone", "spec", "after", "n"}`` on stdin (``spec`` is a
    ``crontab.from_string`` text) and prints the list of Celery's slot lists.

Slots are printed as ``YYYY-MM-DDTHH:MM:SSZ``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import datetime, timedelta, timezone

import celery
from celery import Celery
from celery.schedules import crontab

FIELDS = (  # Celery's positional order: (name, min, max)
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day_of_week", 0, 6),
    ("day_of_month", 1, 31),
    ("month_of_year", 1, 12),
)
DAY_NAMES = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
MONTH_NAMES = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
STEADY_ZONES = ["Asia/Kolkata", "Asia/Tokyo", "Asia/Kathmandu"]
DST_ZONE = "America/New_York"
FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_apps: dict[str, Celery] = {}


def app_for(zone: str) -> Celery:
    if zone not in _apps:
        app = Celery(set_as_current=False)
        app.conf.timezone = zone
        _apps[zone] = app
    return _apps[zone]


def celery_slots(schedule: crontab, zone: str, after: datetime, n: int) -> list[str]:
    """The next n slots as Beat finds them: each from the previous one, with now = that slot."""
    schedule.app = app_for(zone)
    # `tz` is a cached property of the schedule: set the app before the first use only.
    schedule.__dict__.pop("tz", None)
    last = after
    out = []
    for _ in range(n):
        schedule.nowfun = lambda last=last: last
        nxt = last + schedule.remaining_estimate(last)
        if nxt <= last:
            # Never seen; reported so the Rust side fails loudly instead of looping here.
            out.append("stalled at " + last.astimezone(timezone.utc).strftime(FORMAT))
            break
        out.append(nxt.astimezone(timezone.utc).strftime(FORMAT))
        last = nxt
    return out


def name_for(rng: random.Random, field: str, value: int) -> str | int:
    """A name Celery reads as `value` in `field`, or the number itself."""
    if field == "day_of_week" and rng.random() < 0.4:
        name = DAY_NAMES[value]
    elif field == "month_of_year" and rng.random() < 0.4:
        name = MONTH_NAMES[value - 1]
    else:
        return value
    name = name[: rng.choice([3, 3, 4, len(name)])] if rng.random() < 0.8 else name[:3] + "xyz"
    return rng.choice([name, name.upper(), name.capitalize()])


def atom(rng: random.Random, field: str, lo: int, hi: int) -> str:
    def num() -> str:
        v = rng.randint(lo, hi)
        text = str(name_for(rng, field, v))
        return "0" + text if text.isdigit() and rng.random() < 0.05 else text

    kind = rng.random()
    if kind < 0.12:
        return "*"
    if kind < 0.45:
        return num()
    if kind < 0.70:
        return f"{num()}-{num()}"  # may wrap
    if kind < 0.85:
        return f"*/{rng.randint(1, hi - lo + 2)}"
    return f"{num()}-{num()}/{rng.randint(1, max(2, (hi - lo) // 2))}"


def quirk(rng: random.Random, field: str, lo: int, hi: int) -> str:
    """Specs that are valid in Celery but unusual, or refused by it."""
    return rng.choice(
        [
            str(hi + 1),
            str(lo - 1) if lo > 0 else "-1",
            f"{hi}-{hi + 1}",
            f"{rng.randint(lo, hi)}/2",
            "",
            "1,,2",
            "*/0",
            "*/",
            f"{lo}-{hi}/",
            "*/x",
            "x",
            "*x",
            "monkey",
            "jan",
            "fri",
            "dec",
            "sun",
            "mon-fri",
            "7",
            " 5",
            "+3",
            "1_0",
            "1-5/2/3",
            "*/5-3",
            "1-2-3",
            "**",
            "99999999999999999999",
        ]
    )


def field_spec(rng: random.Random, field: str, lo: int, hi: int) -> str:
    star = {
        "minute": 0.15,
        "hour": 0.35,
        "day_of_week": 0.55,
        "day_of_month": 0.55,
        "month_of_year": 0.6,
    }[field]
    r = rng.random()
    if r < 0.04:
        return quirk(rng, field, lo, hi)
    if r < 0.04 + star:
        return "*"
    return ",".join(atom(rng, field, lo, hi) for _ in range(rng.choice([1, 1, 1, 2, 3])))


def random_instant(rng: random.Random) -> datetime:
    start = datetime(2001, 1, 1, tzinfo=timezone.utc)
    t = start + timedelta(minutes=rng.randrange(30 * 365 * 24 * 60))
    if rng.random() < 0.4:
        t += timedelta(seconds=rng.randrange(1, 60))
    return t


def random_mode(seed: int, count: int, occurrences: int) -> dict:
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        fields = [field_spec(rng, name, lo, hi) for name, lo, hi in FIELDS]
        if rng.random() < 0.02:
            # Days that may exist in none of the months: Celery refuses those.
            fields[3] = rng.choice(["30", "31", "30-31", "29-31/2"])
            fields[4] = rng.choice(["2", "feb", "2,4", "apr,jun,sep,nov", "FEB-feb"])
        use_string = rng.random() < 0.15
        m, h, dow, dom, moy = fields
        text = f"{m} {h} {dom} {moy} {dow}"
        case: dict = {"id": i, "fields": fields, "from_string": text if use_string else None}
        try:
            schedule = crontab.from_string(text) if use_string else crontab(m, h, dow, dom, moy)
        except Exception as exc:  # every refusal is recorded, whatever its type
            case.update(ok=False, error=type(exc).__name__, message=str(exc))
            cases.append(case)
            continue
        values = [
            sorted(s)
            for s in (
                schedule.minute,
                schedule.hour,
                schedule.day_of_week,
                schedule.day_of_month,
                schedule.month_of_year,
            )
        ]
        zones = ["UTC"]
        if rng.random() < 0.25:
            zones.append(rng.choice(STEADY_ZONES))
        if rng.random() < 0.15:
            zones.append(DST_ZONE)
        runs = []
        for zone in zones:
            after = random_instant(rng)
            runs.append(
                {
                    "zone": zone,
                    "after": after.strftime(FORMAT),
                    "slots": celery_slots(schedule, zone, after, occurrences),
                }
            )
        case.update(ok=True, values=values, runs=runs)
        cases.append(case)
    return {"celery": celery.__version__, "seed": seed, "cases": cases}


def slots_mode(requests: list[dict]) -> list[list[str]]:
    out = []
    for r in requests:
        after = datetime.strptime(r["after"], FORMAT).replace(tzinfo=timezone.utc)
        out.append(celery_slots(crontab.from_string(r["spec"]), r["zone"], after, r["n"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    rnd = sub.add_parser("random")
    rnd.add_argument("--seed", type=int, required=True)
    rnd.add_argument("--count", type=int, required=True)
    rnd.add_argument("--occurrences", type=int, default=50)
    sub.add_parser("slots")
    args = parser.parse_args()
    if args.mode == "random":
        result = random_mode(args.seed, args.count, args.occurrences)
    else:
        result = slots_mode(json.load(sys.stdin))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
