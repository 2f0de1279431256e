"""The benchmark suite's driver stays runnable: a tiny run of the celeriac systems through every
workload, against the test server, must verify every task (each recorded exactly once) and write
its report. The peers, RabbitMQ and Redis are not needed; ``scripts/bench-suite`` runs those.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_tiny_run_of_the_suite_verifies_every_task_and_writes_the_report(
    postgres_url: str, celeriac_bin: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "suite.run",
            "--admin-url",
            postgres_url,
            "--celeriac-bin",
            str(celeriac_bin),
            "--systems",
            "celeriac-rust,celeriac-threads",
            "--workloads",
            "burn-down,steady,steady-max,enqueue,bloat",
            "--rounds",
            "1",
            "--quick",
            "--burn-down-tasks",
            "500",
            "--steady-rate",
            "200",
            "--steady-seconds",
            "1",
            "--ladder-seconds",
            "0.5",
            "--enqueue-one",
            "50",
            "--enqueue-batched",
            "2000",
            "--bloat-tasks",
            "2000",
            "--bloat-wait-seconds",
            "0",
            "--strict",
            "--out",
            str(out),
        ],
        check=False,
        cwd=REPO / "bench",
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    seen = {(r["workload"], r["system"]) for r in rows}
    for workload in ("burn-down", "steady", "steady-max", "enqueue", "bloat"):
        for system in ("celeriac-rust", "celeriac-threads"):
            assert (workload, system) in seen
    assert all(r["verified"] == "yes" for r in rows), rows
    burn = [r for r in rows if r["workload"] == "burn-down"]
    assert all(float(r["tasks_per_s"]) > 0 and r["missing"] == "0" and r["extra"] == "0" for r in burn)
    steady = [r for r in rows if r["workload"] == "steady"]
    assert all(r["kept_up"] == "yes" and float(r["p99_ms"]) >= float(r["p50_ms"]) > 0 for r in steady)
    report = (out / "results.md").read_text()
    for title in ("## Burn-down", "## Steady state", "## The highest rate sustained", "## Enqueue", "## Bloat"):
        assert title in report
    assert "`celeriac-rust`" in report
