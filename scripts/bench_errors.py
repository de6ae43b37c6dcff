"""How fast does a config error reach the user? (issue 23: one line, exit 2, in <= 2 s on an idle machine)

Runs each error case N times as a real subprocess (``python -m crs.cli ...`` in an empty folder) and
prints min / median seconds, and the ratio of the min to a bare ``python -c pass`` and to
``python -c 'import torch'`` (the floor of any case that needs a credit method's declared ranges:
the method modules import torch). A benchmark, not an asserted timing: on a shared machine take the min.

    python scripts/bench_errors.py            # N = 5
    python scripts/bench_errors.py -n 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "method=no_such": ["train", "method=no_such"],
    "shedule=linear": ["train", "shedule=linear"],
    "trainer.lr=-1": ["train", "trainer.lr=-1"],
    "trainer.max_steps=abc": ["train", "trainer.max_steps=abc"],
    "model.name=": ["train", "model.name="],
    "benchmark.path=/nonexistent": ["train", "benchmark=gsm8k", "benchmark.path=/nonexistent/x.jsonl"],
    "resume=/nonexistent": ["train", "resume=/nonexistent"],
    "method range (torch)": ["train", "method=tp_schedule", "method.credit.tp_schedule.withhold=3"],
    "sweep job lr=-1": ["train", "-m", "seed=0,1", "trainer.lr=-1"],
    "compare --threshold x": ["compare", "--threshold", "x"],
}
BASELINES = {"python -c pass": ["-c", "pass"], "python -c 'import torch'": ["-c", "import torch"]}


def timed(args: list[str], cwd: str, expect: int | None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if expect is not None and r.returncode != expect:
        raise SystemExit(f"{args}: exit {r.returncode}, expected {expect}: {r.stderr[-500:]}")
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=5, help="runs per case")
    n = p.parse_args().n
    env_note = f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory() as cwd:
        base = {k: [timed(a, cwd, 0) for _ in range(n)] for k, a in BASELINES.items()}
        bare, torch_ = (min(v) for v in base.values())
        print(f"{'case':32} {'min s':>7} {'median s':>9} {'/pass':>7} {'/torch':>7}   ({env_note}, n={n})")
        for name, times in base.items():
            print(f"{name:32} {min(times):7.2f} {statistics.median(times):9.2f}")
        for name, args in CASES.items():
            times = [timed(["-m", "crs.cli", *args], cwd, 2) for _ in range(n)]
            lo = min(times)
            print(f"{name:32} {lo:7.2f} {statistics.median(times):9.2f} {lo / bare:7.0f} {lo / torch_:7.2f}")
            if os.listdir(cwd):
                raise SystemExit(f"{name}: left {os.listdir(cwd)} behind")


if __name__ == "__main__":
    main()
