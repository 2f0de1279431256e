"""The side-by-side benchmark suite's driver (``scripts/bench-suite`` starts the servers and
calls it; ``bench/README.md`` describes the method and the output).

    python -m suite.run --admin-url postgresql://…/postgres --celeriac-bin target/release/celeriac \\
        [--amqp-url amqp://…] [--redis-url redis://…] [--systems a,b] \\
        [--workloads burn-down,steady,enqueue,bloat] [--rounds 3] [--quick] [--out bench/results]

Each round runs every workload for every system, round-robin (the order rotates by one each
round), each measurement in a new database. Results go to ``OUT/results.csv`` (one row per
measurement), ``OUT/results.md`` (medians per system, the machine, versions and settings) and
``OUT/results.png`` (the chart).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import pkgutil
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from . import measure, systems
from .common import REPO, Ctx, System, connect, with_database

WORKLOADS = ("burn-down", "steady", "steady-max", "enqueue", "bloat")

#: Sizes: (full, quick).
SIZES = {
    "burn_down_tasks": (100_000, 10_000),
    "steady_rate": (2000, 2000),
    "steady_seconds": (60.0, 10.0),
    "ladder_seconds": (15.0, 5.0),
    "enqueue_one": (5_000, 1_000),
    "enqueue_batched": (100_000, 20_000),
    "bloat_tasks": (1_000_000, 20_000),
    "bloat_seconds": (600.0, 60.0),
    "bloat_wait_seconds": (75.0, 75.0),
}


def all_systems() -> list[System]:
    """Every system defined under ``systems/``, in module order."""
    out: list[System] = []
    for info in sorted(pkgutil.iter_modules(systems.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{systems.__name__}.{info.name}")
        out.extend(getattr(module, "SYSTEMS", []))
    return out


def machine() -> dict[str, str]:
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "memory_gib": f"{mem_kib / 2**20:.0f}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_start": " ".join(open("/proc/loadavg").read().split()[:3]),
    }


def postgres_settings(admin_url: str) -> dict[str, str]:
    with connect(admin_url) as conn:
        rows = conn.execute(
            """select name, setting from pg_settings
               where name in ('server_version', 'fsync', 'synchronous_commit', 'shared_buffers',
                              'autovacuum', 'autovacuum_naptime', 'max_connections')"""
        ).fetchall()
    return {name: value for name, value in rows}


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.out = Path(args.out)
        self.rows: list[dict[str, Any]] = []
        self.scratch = Path(tempfile.mkdtemp(prefix="celeriac-bench-suite."))
        self.count = 0

    def size(self, key: str) -> Any:
        explicit = getattr(self.args, key, None)
        if explicit is not None:
            return explicit
        full, quick = SIZES[key]
        return quick if self.quick else full

    def ctx(self, system: System) -> Ctx:
        self.count += 1
        name = f"bench_{self.count}_{system.name.replace('-', '_')}"
        with connect(self.args.admin_url) as conn:
            conn.execute(f'drop database if exists "{name}"')
            conn.execute(f'create database "{name}"')
        work = self.scratch / name
        (work / "records").mkdir(parents=True)
        return Ctx(
            db_url=with_database(self.args.admin_url, name),
            admin_url=self.args.admin_url,
            work_dir=work,
            record_dir=work / "records",
            concurrency=self.args.concurrency,
            queue="bench",
            python=sys.executable,
            celeriac_bin=self.args.celeriac_bin,
            node_dir=Path(self.args.node_dir),
            amqp_url=self.args.amqp_url or "",
            redis_url=self.args.redis_url or "",
        )

    def drop(self, ctx: Ctx) -> None:
        name = ctx.db_url.rpartition("/")[2].partition("?")[0]
        with connect(self.args.admin_url) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
        if not self.args.keep:
            shutil.rmtree(ctx.work_dir, ignore_errors=True)

    def measure(self, round_no: int, workload: str, system: System) -> None:
        ctx = self.ctx(system)
        started = time.monotonic()
        try:
            if workload == "burn-down":
                result = measure.burn_down(system, ctx, self.size("burn_down_tasks"))
            elif workload == "steady":
                result = measure.steady(
                    system, ctx, self.size("steady_rate"), self.size("steady_seconds")
                )
            elif workload == "steady-max":
                result = measure.steady_max(system, ctx, self.size("ladder_seconds"))
            elif workload == "enqueue":
                result = measure.enqueue(
                    system, ctx, self.size("enqueue_one"), self.size("enqueue_batched")
                )
            elif workload == "bloat":
                result = measure.bloat(
                    system,
                    ctx,
                    self.size("bloat_tasks"),
                    self.size("bloat_seconds"),
                    vacuum_wait=self.size("bloat_wait_seconds"),
                )
            else:
                raise ValueError(workload)
            result["error"] = ""
        except Exception as e:  # noqa: BLE001 - one failed measurement is reported, not fatal
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"[:300]}
            logs = sorted(ctx.work_dir.glob("*.log"))
            for log in logs:
                tail = log.read_bytes()[-2000:].decode(errors="replace")
                print(f"--- {log.name} (last 2000 bytes)\n{tail}", file=sys.stderr)
        finally:
            self.drop(ctx)
        row = {
            "round": round_no,
            "workload": workload,
            "system": system.name,
            "language": system.language,
            "settings": system.settings,
            **result,
        }
        ok = not row["error"] and not row.get("missing") and not row.get("extra")
        row["verified"] = "yes" if ok else "NO"
        self.rows.append(row)
        shown = {
            k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
        }
        print(json.dumps(shown), flush=True)
        print(
            f"bench-suite: {workload} {system.name} took {time.monotonic() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in keys)
        with open(self.out / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for row in self.rows:
                writer.writerow(
                    {
                        k: (f"{v:.4g}" if isinstance(v, float) else v)
                        for k, v in row.items()
                    }
                )
        from .report import write_report

        write_report(self.out, self.rows, self.meta)

    def go(self, chosen: list[System]) -> int:
        self.meta = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "mode": "quick" if self.quick else "full",
            "rounds": str(self.args.rounds),
            "concurrency": str(self.args.concurrency),
            "machine": machine(),
            "postgres": postgres_settings(self.args.admin_url),
            "versions": {},
            "sizes": {k: str(self.size(k)) for k in SIZES},
            "command": re.sub(
                r"postgresql://\S+|amqp://\S+|redis://\S+",
                "URL",
                " ".join(sys.argv[1:]),
            ),
        }
        runnable = []
        for system in chosen:
            probe = self.ctx(system)
            reason = system.unavailable(probe)
            if reason is None:
                self.meta["versions"].update(system.versions(probe))
                runnable.append(system)
            else:
                print(f"bench-suite: skipping {system.name}: {reason}", file=sys.stderr)
                self.meta.setdefault("skipped", {})[system.name] = reason
            self.drop(probe)
        default = [w for w in WORKLOADS if not (self.quick and w == "bloat")]
        workloads = (
            [w for w in self.args.workloads.split(",") if w]
            if self.args.workloads
            else default
        )
        for round_no in range(1, self.args.rounds + 1):
            for workload in workloads:
                shift = (round_no - 1) % max(1, len(runnable))
                order = runnable[shift:] + runnable[:shift]
                for system in order:
                    # Bloat is one long run per system, in the first round only.
                    if workload == "bloat" and (
                        system.server != "postgres" or round_no > 1
                    ):
                        continue
                    self.measure(round_no, workload, system)
        shutil.rmtree(self.scratch, ignore_errors=True)
        failed = [r for r in self.rows if r["verified"] != "yes"]
        for r in failed:
            print(
                f"bench-suite: NOT VERIFIED: {r['workload']} {r['system']} round {r['round']}: "
                f"{r.get('error') or ''} missing={r.get('missing')} extra={r.get('extra')}",
                file=sys.stderr,
            )
        return 1 if failed and self.args.strict else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--admin-url", required=True, help="PostgreSQL admin URL (database postgres)"
    )
    parser.add_argument("--celeriac-bin", default=str(REPO / "target/release/celeriac"))
    parser.add_argument("--node-dir", default=str(REPO / "bench/suite/node"))
    parser.add_argument("--amqp-url", default="")
    parser.add_argument("--redis-url", default="")
    parser.add_argument(
        "--systems", default="", help="comma-separated names (default: all)"
    )
    parser.add_argument(
        "--workloads",
        default="",
        help=f"comma-separated, of {','.join(WORKLOADS)} (default: all; --quick leaves bloat out)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, for a smoke run"
    )
    parser.add_argument("--out", default=str(REPO / "bench/results"))
    parser.add_argument(
        "--keep", action="store_true", help="keep each measurement's logs"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a measurement is not verified",
    )
    for key in SIZES:
        kind = float if "seconds" in key else int
        parser.add_argument(
            "--" + key.replace("_", "-"), dest=key, type=kind, default=None
        )
    args = parser.parse_args()
    everything = all_systems()
    if args.systems:
        wanted = args.systems.split(",")
        unknown = [w for w in wanted if w not in {s.name for s in everything}]
        if unknown:
            parser.error(
                f"unknown systems {unknown}; known: {[s.name for s in everything]}"
            )
        chosen = [s for w in wanted for s in everything if s.name == w]
    else:
        chosen = everything
    return Run(args).go(chosen)


if __name__ == "__main__":
    sys.exit(main())
