"""Record (or check) the metric histories of every credit method on its usual benchmark.

A structural change must leave training bit-identical on the CPU. This script runs each method once
(``debug=fast``, seed 0, ``resume=never``) through the real CLI in its own process, tracked in a
throw-away MLflow store, and writes every logged metric's history (``{method: {metric: [[step, value],
...]}}``). Run it before a refactor (``--out before.json``) and after it (``--check before.json``)::

    python scripts/regression_histories.py --out tests/fixtures/regression_histories.json
    python scripts/regression_histories.py --check tests/fixtures/regression_histories.json

``--check`` exits 1 and lists every metric whose history differs. Wall-clock metrics (``*time*``,
``*per_second*``, ``*_s``) are left out: they are the only values that legitimately change.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# method -> overrides: its usual benchmark, the fast scorer where the default one needs a build, and the
# schedule the fixture was recorded with (pinned: the methods' default schedules changed in issue 23, so the
# regression stays one of the code, not of the defaults)
RUNS: dict[str, list[str]] = {
    "grpo": ["schedule=linear"],
    "tp_schedule": ["schedule=linear"],
    "forking_tokens": ["schedule=linear"],
    "entropy_adv": ["schedule=linear"],
    "focal_grpo": ["schedule=linear"],
    "adora": ["schedule=linear"],
    "r3l_amplify": ["schedule=constant"],
    "pure": ["schedule=linear"],
    "capo": ["method.steps.scorer=rule", "schedule=linear"],
    "oprl": ["schedule=linear"],
    "int": ["method.steps.scorer=rule", "schedule=linear"],
    "r3l": ["schedule=constant"],
    "gigpo": ["benchmark=maze", "schedule=linear"],
    "a2tgpo": ["benchmark=maze", "schedule=linear"],
    "matchtir": ["benchmark=calc_tool", "schedule=constant"],
}

WALL_CLOCK = ("time", "per_second", "_s", "runtime")


def _kept(name: str) -> bool:
    return not any(w in name for w in WALL_CLOCK)


def run_one(method: str, overrides: list[str], store: Path, workdir: Path) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{store}"
    cmd = [
        sys.executable,
        "-m",
        "crs.cli",
        "train",
        f"method={method}",
        "debug=fast",
        "seed=0",
        "resume=never",
        f"tracking.uri={uri}",
        f"tracking.experiment=reg-{method}",
        f"hydra.run.dir={workdir / method}",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"reg-{method}")
    (run,) = client.search_runs([exp.experiment_id])
    out = {}
    for key in sorted(run.data.metrics):
        if not _kept(key):
            continue
        hist = client.get_metric_history(run.info.run_id, key)
        out[key] = [[m.step, m.value] for m in sorted(hist, key=lambda m: (m.step, m.timestamp))]
    return out


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for (sa, va), (sb, vb) in zip(a, b):
        if sa != sb:
            return False
        if not (va == vb or (math.isnan(va) and math.isnan(vb))):
            return False
    return True


def compare(before: dict, after: dict) -> list[str]:
    diffs = []
    for method, metrics in before.items():
        got = after.get(method)
        if got is None:
            diffs.append(f"{method}: not run")
            continue
        for key in sorted(set(metrics) | set(got)):
            if key not in got or key not in metrics:
                diffs.append(f"{method}: {key} only {'before' if key in metrics else 'after'}")
            elif not _same(metrics[key], got[key]):
                diffs.append(f"{method}: {key} differs: {metrics[key][:3]} vs {got[key][:3]}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the histories here")
    ap.add_argument("--check", type=Path, help="compare against this recorded file")
    ap.add_argument("--methods", nargs="*", default=list(RUNS), help="subset of methods")
    a = ap.parse_args(argv)
    a.methods = a.methods or list(RUNS)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for method in a.methods:
            print(f"regression: {method} {' '.join(RUNS[method])}", flush=True)
            results[method] = run_one(method, RUNS[method], tmp / "mlflow.db", tmp)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"regression: wrote {a.out} ({len(results)} methods)")
    if a.check:
        before = json.loads(a.check.read_text())
        before = {m: v for m, v in before.items() if m in results}
        diffs = compare(before, results)
        for d in diffs:
            print(f"DIFF {d}")
        n = sum(len(v) for v in results.values())
        print(f"regression: {len(diffs)} differing histories of {n} compared over {len(results)} methods")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
