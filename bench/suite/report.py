"""Writes ``results.md`` (tables of medians, the machine, versions and settings) and
``results.png`` (the chart) from the measurements' rows."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The reference every ratio is taken against, measured in the same round.
BASELINE = "celery-rabbitmq"

Row = dict[str, Any]


def _num(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _fmt(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _systems(rows: list[Row]) -> list[str]:
    order: list[str] = []
    for row in rows:
        if row["system"] not in order:
            order.append(row["system"])
    return order


def _verified(rows: list[Row]) -> str:
    bad = [r for r in rows if r.get("verified") != "yes"]
    if not bad:
        return "yes"
    reasons = {
        r.get("error") or f"missing {r.get('missing')}, extra {r.get('extra')}"
        for r in bad
    }
    return f"NO ({len(bad)}: {'; '.join(sorted(reasons))[:120]})"


def _ratios(
    rows: list[Row], system: str, key: str, invert: bool = False
) -> list[float]:
    """Per round: this system's value over the baseline's in the same round."""
    out = []
    for row in rows:
        if row["system"] != system:
            continue
        base = [
            r for r in rows if r["system"] == BASELINE and r["round"] == row["round"]
        ]
        if base and not math.isnan(_num(row.get(key))) and _num(base[0].get(key)) > 0:
            value, reference = _num(row.get(key)), _num(base[0].get(key))
            out.append(reference / value if invert else value / reference)
    return out


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _per_system(rows: list[Row], workload: str) -> list[tuple[str, list[Row]]]:
    chosen = [r for r in rows if r["workload"] == workload]
    return [(s, [r for r in chosen if r["system"] == s]) for s in _systems(chosen)]


def burn_down_table(rows: list[Row]) -> str:
    lines = []
    for system, mine in _per_system(rows, "burn-down"):
        good = [r for r in mine if not r.get("error")]
        rate = [_num(r.get("tasks_per_s")) for r in good]
        ratios = _ratios(
            [r for r in rows if r["workload"] == "burn-down"], system, "tasks_per_s"
        )
        lines.append(
            [
                f"`{system}`",
                mine[0].get("language", ""),
                _fmt(_median(rate)),
                ", ".join(_fmt(v) for v in rate),
                ", ".join(f"{v:.2f}×" for v in ratios) if system != BASELINE else "1",
                _fmt(_median([_num(r.get("worker_cpu_ms_per_1k")) for r in good])),
                _fmt(_median([_num(r.get("server_cpu_ms_per_1k")) for r in good])),
                _fmt(_median([_num(r.get("peak_rss_mib")) for r in good])),
                _verified(mine),
            ]
        )
    header = [
        "system",
        "task",
        "tasks/s (median)",
        "per round",
        f"vs `{BASELINE}` per round",
        "worker CPU ms / 1k tasks",
        "queue server CPU ms / 1k",
        "peak RSS MiB",
        "every task once",
    ]
    return _table(header, lines)


def steady_table(rows: list[Row]) -> str:
    lines = []
    for system, mine in _per_system(rows, "steady"):
        good = [r for r in mine if not r.get("error")]

        def med(key: str, rows: list[Row] = good) -> float:
            return _median([_num(r.get(key)) for r in rows])

        size = _median(
            [
                (_num(r.get("table_bytes")) + _num(r.get("index_bytes"))) / 2**20
                for r in good
            ]
        )
        kept = [r for r in good if r.get("kept_up") == "yes"]
        kept_up = f"{len(kept)} of {len(good)} rounds"
        if len(kept) < len(good):
            behind = [
                _num(r.get("ran")) / _num(r.get("seconds"))
                for r in good
                if r.get("kept_up") != "yes"
            ]
            kept_up += f" (else ran {_fmt(_median(behind))}/s)"
        lines.append(
            [
                f"`{system}`",
                _fmt(med("rate")),
                kept_up,
                _fmt(med("p50_ms", kept), 1),
                _fmt(med("p99_ms", kept), 1),
                ", ".join(_fmt(_num(r.get("p99_ms")), 1) for r in good),
                _fmt(med("max_ms", kept), 1),
                _fmt(med("send_p99_ms"), 1),
                _fmt(med("worker_cpu_ms_per_1k")),
                _fmt(size, 1),
                _fmt(med("dead_tuples")),
                _verified(mine),
            ]
        )
    header = [
        "system",
        "rate/s",
        "kept up",
        "p50 ms",
        "p99 ms",
        "p99 per round",
        "max ms",
        "enqueue call p99 ms",
        "worker CPU ms / 1k",
        "queue tables MiB at end",
        "dead tuples at end",
        "every task once",
    ]
    return _table(header, lines)


def ladder_table(rows: list[Row]) -> str:
    lines = []
    for system, mine in _per_system(rows, "steady-max"):
        for r in mine:
            lines.append(
                [
                    f"`{system}`",
                    _fmt(_num(r.get("max_rate"))),
                    _fmt(_num(r.get("p50_ms")), 1),
                    _fmt(_num(r.get("p99_ms")), 1),
                    str(r.get("rates_tried", "")),
                    str(r.get("stopped", "")) or "–",
                    _verified([r]),
                ]
            )
    return _table(
        [
            "system",
            "highest rate sustained, tasks/s",
            "p50 ms there",
            "p99 ms there",
            "rates tried (✗: not sustained)",
            "why the climb stopped",
            "every task once",
        ],
        lines,
    )


def enqueue_table(rows: list[Row]) -> str:
    lines = []
    for system, mine in _per_system(rows, "enqueue"):
        good = [r for r in mine if not r.get("error")]
        lines.append(
            [
                f"`{system}`",
                _fmt(_median([_num(r.get("one_per_s")) for r in good])),
                _fmt(_median([_num(r.get("batched_per_s")) for r in good])),
                str(good[0].get("batch", "")) if good else "–",
                _verified(mine),
            ]
        )
    return _table(
        ["system", "one per call, tasks/s", "batched, tasks/s", "batch", "ran"], lines
    )


def bloat_table(rows: list[Row]) -> str:
    lines = []
    for system, mine in _per_system(rows, "bloat"):
        good = [r for r in mine if not r.get("error")]

        def med(key: str, rows: list[Row] = good) -> float:
            return _median([_num(r.get(key)) for r in rows])

        lines.append(
            [
                f"`{system}`",
                _fmt(med("tasks")),
                _fmt(med("tasks_per_s")),
                _fmt(med("peak_total_mib"), 1),
                _fmt(med("after_table_mib") + med("after_index_mib"), 1),
                _fmt(med("after_dead")),
                _fmt(med("later_table_mib"), 1),
                _fmt(med("later_index_mib"), 1),
                _fmt(med("later_dead")),
                _verified(mine),
            ]
        )
    header = [
        "system",
        "tasks",
        "tasks/s",
        "peak MiB (table + indexes)",
        "MiB at the end",
        "dead tuples at the end",
        "table MiB later",
        "indexes MiB later",
        "dead tuples later",
        "every task once",
    ]
    return _table(header, lines)


def write_chart(path: Path, rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"rust": "#b7410e", "python": "#3572a5", "node": "#6a9955"}
    panels: list[tuple[str, str, str, Callable[[list[float]], float]]] = [
        ("burn-down", "tasks_per_s", "burn-down: tasks/s (higher is better)", _median),
        (
            "steady",
            "p99_ms",
            "steady state: p99 latency, ms (lower is better)",
            _median,
        ),
        (
            "steady-max",
            "max_rate",
            "highest rate sustained: tasks/s (higher is better)",
            _median,
        ),
    ]
    panels = [p for p in panels if any(r["workload"] == p[0] for r in rows)]
    if not panels:
        return
    fig, axes = plt.subplots(
        1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False
    )
    for ax, (workload, key, title, agg) in zip(axes[0], panels):
        per = _per_system(rows, workload)
        names = [s for s, _ in per]
        values = [
            agg([_num(r.get(key)) for r in mine if not r.get("error")])
            for _, mine in per
        ]
        bar_colors = [
            colors.get(mine[0].get("language", ""), "#888888") for _, mine in per
        ]
        bars = ax.barh(
            names, [0 if math.isnan(v) else v for v in values], color=bar_colors
        )
        for bar, value in zip(bars, values):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {_fmt(value, 0 if value >= 100 else 1)}",
                va="center",
                fontsize=8,
            )
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if workload == "steady" and any(v > 0 and not math.isnan(v) for v in values):
            ax.set_xscale("log")
        ax.margins(x=0.15)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(
        handles, [f"{k} task" for k in colors], loc="lower center", ncol=3, fontsize=8
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    """Writes ``out/results.md`` and ``out/results.png``."""
    machine = meta["machine"]
    pg = meta["postgres"]
    parts = [
        "# celeriac benchmark suite: results",
        "",
        (
            f"Run {meta['date']}, {meta['mode']} mode, {meta['rounds']} round(s), concurrency {meta['concurrency']} "
            f"(`-c`, or each system's equivalent). Command: `scripts/bench-suite {meta['command']}`."
        ),
        "",
        (
            f"Machine: {machine['cpus']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB, Linux {machine['kernel']}, "
            f"load average at start {machine['load_at_start']}. Everything (servers, workers, producer) on this one machine."
        ),
        "",
        (
            f"PostgreSQL {pg.get('server_version')}: fsync={pg.get('fsync')}, synchronous_commit={pg.get('synchronous_commit')}, "
            f"shared_buffers={pg.get('shared_buffers')} (8 kB pages), autovacuum={pg.get('autovacuum')} "
            f"(naptime {pg.get('autovacuum_naptime')} s)."
        ),
        "",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items()))
        + ".",
        "",
        "Sizes: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in meta["sizes"].items())
        + ".",
    ]
    if meta.get("skipped"):
        parts += [
            "",
            "Not run: "
            + "; ".join(f"`{k}`: {v}" for k, v in meta["skipped"].items())
            + ".",
        ]
    sections = [
        (
            "burn-down",
            "Burn-down: tasks enqueued first, then drained",
            burn_down_table,
            (
                "Tasks/s from the first task's record to the last; CPU of the worker's process tree and of the queue's "
                "server (PostgreSQL, RabbitMQ or Redis) over the drain, per 1,000 tasks; peak RSS of the worker's tree."
            ),
        ),
        (
            "steady",
            "Steady state: a producer at a fixed rate",
            steady_table,
            (
                "Latency from just before the producer's call to the task's record; the producer sends what fell due every "
                "10 ms in one call, whose own p99 (the enqueue's commit, part of every latency) has a column. Table size and dead tuples of the "
                "queue's tables right after the run (PostgreSQL systems)."
            ),
        ),
        (
            "steady-max",
            "The highest rate sustained",
            ladder_table,
            (
                "One running worker; the producer climbs 250, 500, 1,000, 1,500, 2,000, 3,000, … 64,000 tasks/s, "
                "each for `ladder_seconds`; a rate is sustained when the producer reached it and every task of the "
                "step ran within 1 s of the step's last send. A rate not sustained is tried once more (after the "
                "backlog has run); a second failure ends the climb. The first round only."
            ),
        ),
        (
            "enqueue",
            "Enqueue from Python",
            enqueue_table,
            "Into an idle queue, no worker: one task per call (each committed), then batches (one call each).",
        ),
        (
            "bloat",
            "Bloat: many tasks through one queue, no manual VACUUM",
            bloat_table,
            (
                "At most 20,000 waiting at a time. Sizes right after the last task, and again after a wait "
                '("later") for autovacuum and whatever upkeep the system runs itself.'
            ),
        ),
    ]
    for workload, title, table, note in sections:
        if any(r["workload"] == workload for r in rows):
            parts += ["", f"## {title}", "", note, "", table(rows)]
    parts += [
        "",
        "Every row of every round is in `results.csv`; the chart is `results.png`.",
        "",
    ]
    (out / "results.md").write_text("\n".join(parts))
    try:
        write_chart(out / "results.png", rows)
    except ImportError:
        pass
