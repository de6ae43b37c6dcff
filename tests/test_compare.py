"""``crs compare`` against a real MLflow sqlite store built the way ``crs train -m`` fills it.

The store holds a sweep parent run (``crs.role=sweep``, ``swept_keys``, ``jobs.*`` tags, like
:mod:`crs.sweep`) and 2 methods × 2 schedules × 2 seeds child runs with synthetic but known per-step
histories and ``final/*`` metrics, one FAILED run (``error`` tag, and a misleading final metric that
must not be averaged), and an older one-job sweep so ``--last`` has something to skip. Every expected
number below is computed by hand from ``SPEC``.

    pytest tests/test_compare.py
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import pytest
from mlflow.entities import Param
from scipy import stats

from crs.compare import describe, main, steps_to_threshold
from crs.metric_layout import MetricLayout

# (method, schedule) → per seed: final eval accuracy, final best eval accuracy (None: only in the
# eval_accuracy history, peak `peak`), final entropy, wall time, slope of the train-accuracy ramp
# accuracy(step) = min(1, slope·step) for steps 1..10.
SPEC = {
    ("grpo", "linear"): [
        dict(end=0.50, best=0.55, ent=1.0, wall=100.0, slope=1 / 8),
        dict(end=0.60, best=0.70, ent=1.2, wall=110.0, slope=1 / 8),
    ],
    ("grpo", "cosine"): [
        dict(end=0.40, best=0.45, ent=0.8, wall=90.0, slope=1 / 4),
        dict(end=0.44, best=0.50, ent=0.9, wall=95.0, slope=1 / 32),
    ],
    ("tp_schedule", "linear"): [
        dict(end=0.70, best=0.75, ent=1.5, wall=120.0, slope=1 / 4),
        dict(end=0.80, best=0.85, ent=1.7, wall=130.0, slope=1 / 4),
    ],
    ("tp_schedule", "cosine"): [
        dict(end=0.65, best=None, peak=0.72, ent=1.4, wall=125.0, slope=1 / 8),
        dict(end=0.70, best=None, peak=0.80, ent=1.6, wall=135.0, slope=1 / 4),
    ],
}
# trailing mean of the last ≤5 values of min(1, slope·s) first ≥ 0.5 (raw first crossings: 4, 8, 16, 2):
# 1/8 → steps 2..6 average 0.5 → 6;  1/16 → 6..10 → 10;  1/32 → never;  1/4 → steps 1..3 average 0.5 → 3
STEPS = {1 / 8: 6, 1 / 16: 10, 1 / 32: None, 1 / 4: 3}
ERROR = "RuntimeError: injected failure at step 2 (inject_failure_at_step=2)"
BINS = 10


def _metrics(pairs):
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    return [Metric(k, float(v), ts + i, int(step)) for i, (k, v, step) in enumerate(pairs)]


def new_layout(pairs):
    """Pairs as crs.tracking logs them now: UI keys (``1 main/accuracy``), ``final/*`` as tags."""
    out, tags = [], {}
    for k, v, step in pairs:
        metrics, t = MetricLayout(knobs=["tp_schedule/withhold"]).split({k: v})
        out += [(key, val, step) for key, val in metrics.items()]
        tags.update(t)
    return out, tags


def make_run(client, exp_id, tags, status, pairs, start_time=None, parent=None, params=None, layout=False):
    tags = {k: str(v) for k, v in tags.items()}
    if layout:
        pairs, summary = new_layout(pairs)
        tags.update(summary)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, start_time=start_time, tags=tags, run_name=tags.get("name"))
    rid = run.info.run_id
    if params:
        client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)
    ms = _metrics(pairs)
    for i in range(0, len(ms), 1000):
        client.log_batch(rid, metrics=ms[i : i + 1000], synchronous=True)
    if status != "RUNNING":
        client.set_terminated(rid, status=status)
    return rid


def job_pairs(slope, end, best, ent, wall, peak=None, steps=10):
    pairs = []
    for s in range(1, steps + 1):
        acc = min(1.0, slope * s)
        pairs += [
            ("accuracy", acc, s),
            ("reward", acc, s),
            ("entropy/all", ent + 0.05 * (steps - s), s),
            ("schedule/rho", 1 - s / steps, s),
        ]
        if s % 2 == 0:
            for b in range(BINS):
                pairs += [
                    (f"diag/entropy_bin_{b}", ent + 0.1 * b - 0.01 * s, s),
                    (f"diag/kl_bin_{b}", 0.001 * b * s, s),
                ]
    pairs += [
        ("eval_accuracy", 0.1, 0),
        ("eval_accuracy", best if best is not None else peak, 5),
        ("eval_accuracy", end, steps),
    ]
    final = {
        "eval_accuracy_end": end,
        "entropy_last": ent,
        "wall_time_s": wall,
        "train_accuracy_last10": min(1.0, slope * steps),
    }
    if best is not None:
        final["eval_accuracy_best"] = best
    pairs += [(f"final/{k}", v, steps) for k, v in final.items()]
    return pairs


def job_tags(method, schedule, seed, sweep_id, job_num, swept=("method", "schedule", "seed")):
    values = {"method": method, "schedule": schedule, "seed": seed}
    tags = {
        "crs.role": "job",
        "method": method,
        "schedule": schedule,
        "loss": "grpo",
        "model": "embedded",
        "benchmark": "arithmetic",
        "seed": seed,
        "sweep_id": sweep_id,
        "job_num": job_num,
        "name": f"{job_num}:{method}-{schedule}-s{seed}",
        "overrides": " ".join(f"{k}={values[k]}" for k in swept),
    }
    tags.update({f"sweep.{k}": values[k] for k in swept})
    return tags


def new_store(root: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    # like crs.tracking.ensure_experiment: artifacts beside the sqlite file, inside tmp
    exp_id = client.create_experiment("crs", artifact_location=(root / "mlartifacts").resolve().as_uri())
    return uri, client, exp_id


def make_parent(client, exp_id, sweep_id, swept_keys, sweep_dir, start_time=None, overrides=""):
    return client.create_run(
        exp_id,
        start_time=start_time,
        run_name=f"sweep ({sweep_id})",
        tags={
            "crs.role": "sweep",
            "sweep_id": sweep_id,
            "sweep_dir": str(sweep_dir),
            "swept_keys": swept_keys,
            "overrides": overrides,
        },
    ).info.run_id


def finalize(client, parent, finished, failed, killed, status):
    for k, v in (("finished", finished), ("failed", failed), ("killed", killed)):
        client.set_tag(parent, f"jobs.{k}", str(v))
    client.set_terminated(parent, status=status)


def build_failure_sweep(client, uri, start_time):
    """Another experiment in the same store (one sqlite schema set-up costs seconds): a sweep over
    schedule × method with one cell whose only run was killed, and one run that never closed. The jobs
    carry no ``sweep.schedule`` tag (only one value ran), so the cell key falls back to tag ``schedule``."""
    exp_id = client.create_experiment("failures")
    parent = make_parent(
        client,
        exp_id,
        "f00dcafe",
        "method,schedule,seed",  # crs.sweep stores them sorted ...
        "multirun-failures",
        start_time=start_time,
        overrides="debug=fast seed=0,1 schedule=linear,cosine +method=grpo,adora",  # ... the user wrote this
    )
    swept = ("method", "seed")
    make_run(
        client,
        exp_id,
        job_tags("grpo", "linear", 0, "f00dcafe", 0, swept),
        "FINISHED",
        job_pairs(1 / 8, 0.5, 0.5, 1.0, 10.0),
        start_time=start_time,
        parent=parent,
    )
    make_run(
        client,
        exp_id,
        job_tags("grpo", "linear", 1, "f00dcafe", 1, swept),
        "RUNNING",
        [("accuracy", 0.9, 1)],
        start_time=start_time,
        parent=parent,
    )
    killed = make_run(
        client,
        exp_id,
        job_tags("adora", "linear", 0, "f00dcafe", 2, swept),
        "KILLED",
        [],
        start_time=start_time,
        parent=parent,
    )
    client.set_tag(killed, "error", "JobKilled: signal 15")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    uri, client, exp_id = new_store(root)
    now = int(time.time() * 1000)
    # an older sweep (seeds only) that --last must skip
    old = make_parent(client, exp_id, "oldsweep", "seed", root / "multirun-old", start_time=now - 3_600_000)
    make_run(
        client,
        exp_id,
        job_tags("grpo", "linear", 0, "oldsweep", 0, swept=("seed",)),
        "FINISHED",
        job_pairs(1 / 8, 0.30, 0.35, 1.0, 50.0),
        start_time=now - 3_500_000,
        parent=old,
        params={"seed": 0, "trainer.lr": 2e-6},  # another learning rate than the main sweep's
    )
    finalize(client, old, 1, 0, 0, "FINISHED")

    sweep_dir = root / "multirun"
    parent = make_parent(client, exp_id, "a1b2c3d4", "method,schedule,seed", sweep_dir, start_time=now)
    job = 0
    for (method, schedule), seeds in SPEC.items():
        for seed, s in enumerate(seeds):
            make_run(
                client,
                exp_id,
                job_tags(method, schedule, seed, "a1b2c3d4", job),
                "FINISHED",
                job_pairs(s["slope"], s["end"], s["best"], s["ent"], s["wall"], s.get("peak")),
                start_time=now + job,
                parent=parent,
                params={"seed": seed, "trainer.lr": 1e-6},  # a seed differs by design, not a mix-up
                layout=True,  # the main sweep as crs logs now; the others as older versions did
            )
            job += 1
    # crashed after its (misleading) summary: counted as failed, never averaged
    failed = make_run(
        client,
        exp_id,
        job_tags("grpo", "cosine", 2, "a1b2c3d4", job),
        "FAILED",
        [
            ("accuracy", 1.0, 1),
            ("accuracy", 1.0, 2),
            ("final/eval_accuracy_end", 0.0, 2),
            ("final/wall_time_s", 5.0, 2),
        ],
        start_time=now + job,
        parent=parent,
    )
    client.set_tag(failed, "error", ERROR)
    finalize(client, parent, 8, 1, 0, "FAILED")
    build_failure_sweep(client, uri, start_time=now - 1_000_000)
    sweep_dir.mkdir()
    (sweep_dir / "crs_sweep.json").write_text(
        json.dumps(
            {
                "run_id": parent,
                "uri": uri,
                "experiment": "crs",
                "sweep_id": "a1b2c3d4",
                "swept_keys": ["method", "schedule", "seed"],
                "sweep_dir": str(sweep_dir),
            }
        )
    )
    return {"uri": uri, "root": root, "parent": parent, "sweep_dir": sweep_dir, "client": client}


def run_json(capsys, *argv):
    capsys.readouterr()
    main([*argv, "--format", "json"])
    return json.loads(capsys.readouterr().out)


def by_label(data):
    return {c["label"]: c for c in data["cells"]}


# ---------------------------------------------------------------------------------------------------
# pure functions


def test_steps_to_threshold_uses_trailing_mean():
    ramp = lambda slope: [(s, min(1.0, slope * s)) for s in range(1, 11)]  # noqa: E731
    for slope, expected in STEPS.items():
        assert steps_to_threshold(ramp(slope), 0.5) == expected, slope
    spike = [(s, 1.0 if s == 4 else 0.0) for s in range(1, 11)]
    # raw accuracy crossed at step 4; one lucky batch is not learning
    assert steps_to_threshold(spike, 0.5) is None
    assert steps_to_threshold(spike, 0.2) == 4  # steps 1..4 hold the spike: mean 0.25
    assert steps_to_threshold([(1, 0.1), (2, 0.9), (2, 0.0)], 0.5) is None  # repeated step: last value wins
    assert steps_to_threshold([], 0.5) is None


def test_steps_to_threshold_short_runs_are_not_pinned_to_their_end():
    """The bug of issue 11: a 3-step run at accuracy 0.75 from step 1 read "3.0" (the end of its only
    full window) in every cell. Runs shorter than the window report the step they got there."""
    assert steps_to_threshold([(1, 0.75), (2, 0.5), (3, 0.75)], 0.5) == 1
    assert steps_to_threshold([(2, 0.6), (1, 0.6)], 0.5) == 1
    assert steps_to_threshold([(1, 0.25), (2, 0.5), (3, 0.75)], 0.5) == 3
    assert steps_to_threshold([(1, 0.0), (2, 1.0), (3, 1.0)], 0.5) == 2
    assert steps_to_threshold([(1, 0.0), (2, 0.25), (3, 0.5)], 0.5) is None


def test_describe_interval_is_a_bootstrap_inside_the_possible_range():
    import numpy as np

    one = describe([0.5, None, float("nan")])
    assert (one.n, one.mean, one.std, one.ci95_low, one.ci95_high) == (1, 0.5, None, None, None)
    assert describe([]).n == 0 and describe([]).mean is None
    # an accuracy with a few seeds: Student t leaves [0, 1], the bootstrap stays within the seeds' range
    acc = [0.0, 0.05, 1.0]
    t_lo, t_hi = stats.t.interval(0.95, df=2, loc=np.mean(acc), scale=np.std(acc, ddof=1) / math.sqrt(3))
    assert t_lo < 0 and t_hi > 1
    s = describe(acc)
    assert s.std == pytest.approx(np.std(acc, ddof=1)) and s.mean == pytest.approx(np.mean(acc))
    assert 0.0 <= s.ci95_low <= s.mean <= s.ci95_high <= 1.0
    # two seeds: every resampled mean is a, (a+b)/2 or b, so the 2.5/97.5 percentiles are a and b
    two = describe([0.5, 0.6])
    assert (two.ci95_low, two.ci95_high) == (pytest.approx(0.5), pytest.approx(0.6))
    same = describe([0.3, 0.3, 0.3])
    assert (same.ci95_low, same.ci95_high) == (pytest.approx(0.3), pytest.approx(0.3))
    # many seeds: the percentiles of resampled means, checked against an independent resampling
    rng = np.random.default_rng(1)
    vals = rng.uniform(0, 1, size=12)
    means = rng.choice(vals, size=(200_000, 12)).mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    s = describe(vals)
    assert s.ci95_low == pytest.approx(lo, abs=0.01) and s.ci95_high == pytest.approx(hi, abs=0.01)
    assert s.ci95_high - s.ci95_low < vals.max() - vals.min()  # narrower than the range with 12 seeds


# ---------------------------------------------------------------------------------------------------
# the table from a real store


def _expect(values):
    """Mean, std and the bootstrap interval of two seeds (their range; see the test above)."""
    n = len(values)
    assert n == 2
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, sd, min(values), max(values)


def test_sweep_table_values(store, capsys):
    data = run_json(capsys, "--sweep", "a1b2c3d4", "--uri", store["uri"])
    assert data["cell_keys"] == ["method", "schedule"]  # seed is averaged over, not a cell key
    assert data["parent_run_id"] == store["parent"]
    assert data["notes"] == []  # seeds differ in params.seed only: no mixed-config warning
    assert data["fixed"] == {"loss": "grpo", "model": "embedded", "benchmark": "arithmetic"}
    cells = by_label(data)
    assert set(cells) == {"grpo · linear", "grpo · cosine", "tp_schedule · linear", "tp_schedule · cosine"}
    for (method, schedule), seeds in SPEC.items():
        c = cells[f"{method} · {schedule}"]
        assert c["cell"] == {"method": method, "schedule": schedule}
        assert c["n_finished"] == 2
        assert c["n_failed"] == (1 if (method, schedule) == ("grpo", "cosine") else 0)
        m = c["metrics"]
        expect = {
            "eval_accuracy_end": [s["end"] for s in seeds],
            "eval_accuracy_best": [s["best"] if s["best"] is not None else s["peak"] for s in seeds],
            "entropy_last": [s["ent"] for s in seeds],
            "train_time_s": [s["wall"] for s in seeds],  # runs without final/train_time_s: wall time
        }
        for key, values in expect.items():
            mean, sd, lo, hi = _expect(values)
            assert m[key]["n"] == 2, key
            assert m[key]["mean"] == pytest.approx(mean), key
            assert m[key]["std"] == pytest.approx(sd), key
            assert m[key]["ci95_low"] == pytest.approx(lo) and m[key]["ci95_high"] == pytest.approx(hi), key
        reached = [STEPS[s["slope"]] for s in seeds if STEPS[s["slope"]] is not None]
        st = m["steps_to_threshold"]
        assert st["n"] == len(reached) and st["of"] == 2
        assert st["mean"] == pytest.approx(sum(reached) / len(reached))
    # the failed run (final eval accuracy 0.0) is counted but not averaged
    gc = cells["grpo · cosine"]
    assert gc["metrics"]["eval_accuracy_end"]["mean"] == pytest.approx(0.42)
    assert [r["error"] for r in gc["runs"] if r["status"] == "FAILED"] == [ERROR]
    # one of two seeds reached 0.5 (at step 3, tying tp_schedule·linear's 3 and 3): a mean over that
    # seed, no spread, and no claim to "fastest" — the seed that never got there is not faster
    assert gc["metrics"]["steps_to_threshold"] == {
        "mean": 3.0,
        "std": None,
        "ci95_low": None,
        "ci95_high": None,
        "n": 1,
        "of": 2,
        "best": False,
    }
    tc = cells["tp_schedule · cosine"]["metrics"]["steps_to_threshold"]
    assert (tc["mean"], tc["std"]) == (pytest.approx(4.5), pytest.approx(math.sqrt(4.5)))
    best = {k: [c["label"] for c in data["cells"] if c["metrics"][k]["best"]] for k in data["columns"]}
    assert best == {
        "eval_accuracy_end": ["tp_schedule · linear"],
        "eval_accuracy_best": ["tp_schedule · linear"],
        "steps_to_threshold": ["tp_schedule · linear"],
        "entropy_last": ["tp_schedule · linear"],
        "train_time_s": ["grpo · cosine"],
    }


def test_threshold_changes_steps(store, capsys):
    data = run_json(capsys, "--sweep", "a1b2c3d4", "--uri", store["uri"], "--threshold", "0.25")
    st = by_label(data)["grpo · cosine"]["metrics"]["steps_to_threshold"]
    # slope 1/4: step 1 is already 0.25 → 1; slope 1/32: (s-2)/32 ≥ 0.25 → s = 10
    assert (st["n"], st["of"], st["mean"]) == (2, 2, pytest.approx(5.5))
    assert data["columns"]["steps_to_threshold"]["title"] == "steps to acc≥0.25"


def test_every_selector_finds_the_same_sweep(store, capsys, monkeypatch):
    ref = run_json(capsys, "--sweep", "a1b2c3d4", "--uri", store["uri"])
    strip = lambda d: [(c["label"], c["n_finished"], c["n_failed"]) for c in d["cells"]]  # noqa: E731
    client = store["client"]
    exp_id = client.get_experiment_by_name("crs").experiment_id
    job = client.search_runs([exp_id], "tags.sweep_id = 'a1b2c3d4' and tags.job_num = '3'")[0]
    for argv in (
        ["--sweep", store["parent"], "--uri", store["uri"]],
        ["--sweep", job.info.run_id, "--uri", store["uri"]],  # a job's run id: its sweep
        ["--sweep", str(store["sweep_dir"])],  # the sweep file knows the uri
        ["--last", "--uri", store["uri"]],
    ):
        data = run_json(capsys, *argv)
        assert data["sweep_id"] == "a1b2c3d4", argv
        assert strip(data) == strip(ref), argv
    monkeypatch.chdir(store["root"])  # no selector, no --uri: ./mlflow.db, the last sweep
    data = run_json(capsys)
    assert data["sweep_id"] == "a1b2c3d4" and strip(data) == strip(ref)


def test_experiment_groups_by_tags(store, capsys):
    data = run_json(capsys, "--experiment", "crs", "--uri", store["uri"])
    assert data["cell_keys"] == ["method", "schedule", "loss"] and data["parent_run_id"] is None
    cells = by_label(data)
    assert len(cells) == 4
    gl = cells["grpo · linear · grpo"]  # both sweeps' grpo·linear jobs
    assert gl["n_finished"] == 3
    assert gl["metrics"]["eval_accuracy_end"]["mean"] == pytest.approx((0.5 + 0.6 + 0.3) / 3)
    notes = [n for n in data["notes"] if n.startswith("grpo · linear · grpo")]
    assert any("seed 0" in n for n in notes)  # two finished seed-0 runs in one cell are flagged
    assert any("trainer.lr (2 values)" in n for n in notes)  # ... and so is averaging two learning rates
    assert not any(n.startswith("tp_schedule") for n in data["notes"])


def test_bad_selector_is_one_line(store, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--sweep", "nope", "--uri", store["uri"]])
    assert exc.value.code == 2  # user errors exit 2 in every verb
    assert capsys.readouterr().err.startswith("crs: error: no sweep 'nope'")
    with pytest.raises(SystemExit):
        main(["--last", "--uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # reading never creates an empty store


# ---------------------------------------------------------------------------------------------------
# output formats


def test_table_output(store, capsys):
    capsys.readouterr()
    main(["--last", "--uri", store["uri"]])
    out = capsys.readouterr().out
    assert "sweep a1b2c3d4" in out and store["parent"] in out
    assert "same in every run: loss=grpo, model=embedded, benchmark=arithmetic" in out
    assert "0.550 ± 0.071" in out  # grpo·linear final eval accuracy
    lo, hi = _expect([0.5, 0.6])[2:]
    assert f"[{lo:.3f}, {hi:.3f}]" in out  # its 95% CI
    assert "3.0 (1/2)" in out  # grpo·cosine: one of two seeds reached the threshold
    assert "higher" in out and "fewer" in out  # the caption says what "best" means
    assert "failures" in out and "grpo · cosine: 1 FAILED (seed 2): " + ERROR in out


def test_csv_output(store, capsys):
    capsys.readouterr()
    main(["--last", "--uri", store["uri"], "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4
    row = next(r for r in rows if (r["method"], r["schedule"]) == ("grpo", "cosine"))
    assert (row["n_finished"], row["n_failed"]) == ("2", "1")
    assert float(row["eval_accuracy_end_mean"]) == pytest.approx(0.42)
    assert float(row["eval_accuracy_end_std"]) == pytest.approx(math.sqrt(2) * 0.02)
    assert row["steps_to_threshold_n"] == "1" and row["steps_to_threshold_of"] == "2"
    assert "injected failure" in row["errors"]
    for k in ("mean", "std", "ci95_low", "ci95_high", "n"):
        assert f"train_time_s_{k}" in row


def test_markdown_output(store, capsys):
    capsys.readouterr()
    main(["--last", "--uri", store["uri"], "--format", "markdown"])
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith("|")]
    split = lambda ln: [c.strip() for c in ln.strip("|").split("|")]  # noqa: E731
    head, rows = split(table[0]), [split(ln) for ln in table[2:]]
    assert head[:4] == ["method", "schedule", "seeds", "failed"] and len(rows) == 4
    assert set(split(table[1])) <= {"---", "---:"}
    row = {tuple(r[:2]): dict(zip(head, r)) for r in rows}
    assert row[("tp_schedule", "linear")]["eval acc (end) ↑"].startswith("**0.750 ± 0.071")
    assert not row[("grpo", "linear")]["eval acc (end) ↑"].startswith("**")
    assert row[("grpo", "cosine")]["failed"] == "1"
    assert ERROR in out


def test_extra_metric_column(store, capsys):
    data = run_json(
        capsys, "--last", "--uri", store["uri"], "--metric", "final/train_accuracy_last10:max", "nope"
    )
    m = by_label(data)["grpo · cosine"]["metrics"]["metric:final/train_accuracy_last10"]
    assert m["mean"] == pytest.approx((1.0 + 10 / 32) / 2) and m["n"] == 2
    assert by_label(data)["tp_schedule · linear"]["metrics"]["metric:final/train_accuracy_last10"]["best"]
    assert any("nope" in n for n in data["notes"])


# ---------------------------------------------------------------------------------------------------
# failures, open runs, plots


def test_all_failed_cell_still_shows(store, capsys):
    uri = store["uri"]
    data = run_json(capsys, "--sweep", "f00dcafe", "--uri", uri)
    assert data["cell_keys"] == ["schedule", "method"]  # command-line order, seed dropped
    cells = by_label(data)
    assert list(cells) == ["linear · grpo", "linear · adora"]  # job order (first job per cell), not a-z
    adora, grpo = cells["linear · adora"], cells["linear · grpo"]
    assert (adora["n_finished"], adora["n_failed"]) == (0, 1)
    assert all(v["mean"] is None and v["n"] == 0 for v in adora["metrics"].values())
    assert (grpo["n_finished"], grpo["n_running"]) == (1, 1)
    assert grpo["metrics"]["eval_accuracy_end"] == {
        "mean": 0.5,
        "std": None,
        "ci95_low": None,
        "ci95_high": None,
        "n": 1,
        "best": False,
    }
    capsys.readouterr()
    main(["--sweep", "f00dcafe", "--uri", uri])
    out = capsys.readouterr().out
    assert "linear · adora: 1 KILLED (seed 0): JobKilled: signal 15" in out
    assert "not finished" in out and "RUNNING" in out


def test_plots_written_and_logged(store, tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    drawn = {}  # file name → [(label, linestyle, marker, n points)] of the curves on it
    save = Figure.savefig

    def spy(fig, path, *args, **kwargs):
        lines = [ln for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("threshold")]
        drawn[Path(path).name] = [
            (ln.get_label(), ln.get_linestyle(), ln.get_marker(), len(ln.get_xdata())) for ln in lines
        ]
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    out_dir = tmp_path / "plots"
    capsys.readouterr()
    main(["--last", "--uri", store["uri"], "--plot", str(out_dir), "--format", "json"])
    captured = capsys.readouterr()
    json.loads(captured.out)  # the paths went to stderr: stdout stays parseable
    expected = {
        "curve_accuracy.png",
        "curve_reward.png",
        "curve_entropy_all.png",
        "curve_schedule_rho.png",
        "curve_eval_accuracy.png",
        "heatmap_entropy.png",
        "heatmap_kl.png",
    }
    assert {p.name for p in out_dir.iterdir()} == expected
    for p in out_dir.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000, p
        assert f"wrote {p}" in captured.err
    logged = {Path(a.path).name for a in store["client"].list_artifacts(store["parent"], "compare")}
    assert logged == expected
    # four cells, four different (dash pattern, marker) pairs: coinciding curves stay visible
    for name in ("curve_accuracy.png", "curve_eval_accuracy.png"):
        styles = [(ls, marker) for _, ls, marker, _ in drawn[name]]
        assert len(drawn[name]) == 4 and len(set(styles)) == 4, drawn[name]
        assert len({ls for ls, _ in styles}) > 1, "every cell drawn with the same dash pattern"
    # evaluations (3 per run) are lines with markers, not dots
    assert all(ls not in ("None", "", " ") and n == 3 for _, ls, _, n in drawn["curve_eval_accuracy.png"])


def test_credit_localization_columns_read_the_ui_layout(tmp_path, capsys):
    """Step-level runs log loc/* (crs/steps); the table shows each run's mean over steps, per cell."""
    uri, client, exp_id = new_store(tmp_path)
    for seed, shares in enumerate(([0.2, 0.4], [0.6, 0.8])):
        pairs = [("loc/adv_share", v, s) for s, v in enumerate(shares, 1)] + [("accuracy", 0.5, 1)]
        tags = {
            "crs.role": "job",
            "method": "pure_rule",
            "schedule": "constant",
            "loss": "grpo",
            "seed": seed,
        }
        make_run(client, exp_id, tags, "FINISHED", pairs, layout=True)
    data = run_json(capsys, "--experiment", "crs", "--uri", uri)
    (cell,) = data["cells"]
    assert data["columns"]["loc_adv_share"]["title"] == "credit on decisive (adv)"
    assert cell["metrics"]["loc_adv_share"]["mean"] == pytest.approx((0.3 + 0.7) / 2)


# ---------------------------------------------------------------------------------------------------
# --export / --from (crs/compare/export.py): an export renders exactly what the store renders


def _render(capsys, *argv):
    capsys.readouterr()
    main(list(argv))
    return capsys.readouterr().out


def test_export_round_trip_renders_the_same_tables(store, capsys, tmp_path):
    from crs.compare.export import FORMAT

    path = tmp_path / "results" / "x.json"
    _render(capsys, "--last", "--uri", store["uri"], "--format", "json", "--export", str(path))
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT
    prov = data["provenance"]
    assert prov["command"].startswith("crs compare --last --uri ") and prov["command"].endswith(str(path))
    assert len(prov["git_commit"]) == 40 and isinstance(prov["git_dirty"], bool)
    assert {"crs", "trl", "torch", "transformers"} <= set(prov["versions"])
    assert len(prov["config_hash"]) == 16 and prov["date"].endswith("+00:00")
    cell = next(c for c in data["table"]["cells"] if c["label"] == "grpo · cosine")
    assert [r["status"] for r in cell["runs"]].count("FAILED") == 1 and cell["n_finished"] == 2
    fin = [r for r in cell["runs"] if r["status"] == "FINISHED"]
    assert [r["seed"] for r in fin] == ["0", "1"]  # per-seed values, in seed order
    assert cell["metrics"]["eval_accuracy_end"]["mean"] == pytest.approx(0.42)
    assert sorted(r["values"]["eval_accuracy_end"] for r in fin) == pytest.approx([0.40, 0.44])
    for fmt in ("markdown", "csv", "json"):
        live = _render(capsys, "--last", "--uri", store["uri"], "--format", fmt)
        again = _render(capsys, "--from", str(path), "--format", fmt)
        if fmt == "json":  # where it came from says "export": the table itself is equal
            live, again = json.loads(live), json.loads(again)
            live.pop("selection"), again.pop("selection")
            for c in (*live["cells"], *again["cells"]):  # an export lists a cell's runs by seed
                c["runs"].sort(key=lambda r: r["run_id"])
        assert again == live, fmt
    assert _render(capsys, "--from", str(path), "--markdown") == _render(
        capsys, "--last", "--uri", store["uri"], "--markdown"
    )
    assert "grpo · cosine: 1 FAILED (seed 2)" in _render(capsys, "--from", str(path))  # the rich table


def test_export_csv_has_provenance_and_per_seed_values(store, capsys, tmp_path):
    path = tmp_path / "x.csv"
    _render(capsys, "--last", "--uri", store["uri"], "--export", str(path))
    text = path.read_text()
    head = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert any(ln.startswith("# git_commit: ") for ln in head) and any("config_hash" in ln for ln in head)
    rows = list(
        csv.DictReader(io.StringIO("\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))))
    )
    row = next(r for r in rows if (r["method"], r["schedule"]) == ("grpo", "cosine"))
    assert sorted(json.loads(row["eval_accuracy_end_values"])) == pytest.approx([0.40, 0.44])
    assert json.loads(row["seeds"]) == ["0", "1"]


def test_numbers_ignore_provenance_and_timing_but_not_values(store, capsys, tmp_path):
    from crs.compare.export import differences, numbers, read_export

    path = tmp_path / "x.json"
    _render(capsys, "--last", "--uri", store["uri"], "--export", str(path))
    a = read_export(path)
    b = json.loads(json.dumps(a))
    b["provenance"]["git_commit"], b["source"]["uri"] = "0" * 40, "sqlite:////elsewhere.db"
    b["table"]["cells"][0]["runs"][0]["run_id"] = "another"
    b["table"]["cells"][0]["metrics"]["train_time_s"]["mean"] += 3.0  # wall clock never reproduces
    assert differences(numbers(a), numbers(b)) == []
    b["table"]["cells"][0]["metrics"]["eval_accuracy_end"]["mean"] += 1e-6
    b["table"]["cells"][1]["runs"][0]["values"]["entropy_last"] += 1e-6
    diff = differences(numbers(a), numbers(b))
    assert len(diff) == 2 and "eval_accuracy_end/mean" in diff[0] and "entropy_last" in diff[1]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--from", "{tmp}/missing.json"], "no such file"),
        (["--from", "{tmp}/bad.json"], "not a JSON export"),
        (["--from", "{tmp}/other.json"], "not a crs compare export"),
        (["--from", "{tmp}/x.csv"], "read the .json export"),
        (["--last", "--export", "{tmp}/x.txt"], "must end in .json or .csv"),
        (["--from", "{tmp}/other.json", "--plot", "p"], "--from renders an export as it is"),
        (["--from", "{tmp}/other.json", "--export", "{tmp}/y.json"], "exported already"),
        (["--markdown", "--format", "csv", "--last"], "ask for two formats"),
    ],
)
def test_export_bad_input_is_one_line_exit_2(argv, needle, capsys, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.strip().splitlines()[-1].startswith(("crs: error:", "crs compare: error:"))
    assert not (tmp_path / "y.json").exists()


def test_a_pipeline_stage_cell_does_not_flag_its_per_seed_input_folders():
    """Each seed's pipeline stage reads the previous stage's output of that seed: those folders differ by
    construction (no note); a real difference (lr) is still named, and a plain run's model path still is."""
    import pandas as pd

    from crs.compare.cells import _mixed_config

    stage = pd.DataFrame(
        {
            "tags.crs.stage": ["on_policy", "on_policy"],
            "params.model.name_or_path": ["/r/a/model", "/r/b/model"],
            "params.method.credit.opd.teacher": ["/r/t0/model", "/r/t1/model"],
            "params.stage.paths.output_dir": ["/r/a/job", "/r/b/job"],
            "params.trainer.learning_rate": ["1e-5", "1e-5"],
        }
    )
    assert _mixed_config(stage) == ""
    assert _mixed_config(stage.assign(**{"params.trainer.learning_rate": ["1e-5", "2e-5"]})) == (
        "trainer.learning_rate (2 values)"
    )
    plain = stage.drop(columns=["tags.crs.stage"])
    assert "model.name_or_path (2 values)" in _mixed_config(plain)
