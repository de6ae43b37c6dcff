"""The bad-input battery (issues 22, 23): every config group and every CLI verb, fed missing, wrong-type,
out-of-range, unreadable and half-written inputs, ends in one ``crs: error:`` line naming the field and
what is expected, exit 2, no traceback, nothing created in the working folder and no run in the store.

The cases come from the code's own inputs: the leaves of the composed config (every schema in
crs/config.py and every group in conf/), the declared intervals (crs.checks.FIELD_RANGES, each Method's
``ranges``), the options of each conf/ group and the argparse flags of each verb. Most run in-process
(``crs.cli.main``; the verb's ``@hydra.main`` is replaced, so a case that slips through fails instead
of training); a few run as real subprocesses against a real MLflow store.

    pytest tests/test_bad_inputs.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
from conftest import run_crs
from omegaconf import OmegaConf

from crs import cli
from crs.checks import FIELD_RANGES
from crs.cli import compose
from crs.locations import CONF_DIR
from crs.methods import METHODS
from crs.ranges import Interval

ROOT = os.getuid() == 0  # root reads every file: the unreadable-file cases need a normal user


def _leaves(node, prefix=""):
    """(key, node) of every leaf that a schema types (a dataclass in crs/config.py or below it)."""
    typed = dataclasses.is_dataclass(OmegaConf.get_type(node))
    for k in node.keys():
        child = node._get_node(k)
        key = f"{prefix}{k}"
        if OmegaConf.is_dict(child):
            yield from _leaves(node[k], key + ".")
        elif typed and not OmegaConf.is_list(child) and not OmegaConf.is_interpolation(node, k):
            yield key, child


# the config trees a user meets: the default, a file-based hf benchmark, a hub model, an environment
TREES = {
    "default": [],
    "hf": ["benchmark=gsm8k"],
    "maze": ["benchmark=maze", "method=gigpo"],
    "steps": ["method=pure"],
}
_COMPOSED = {name: compose(ov) for name, ov in TREES.items()}


def _typed(kinds):
    seen = {}
    for tree, cfg in _COMPOSED.items():
        for key, node in _leaves(cfg):
            if key.startswith(("paths.", "hydra.")) or key in seen:
                continue
            ref = node._metadata.ref_type
            value = None if node._is_none() or node._is_missing() else node._value()
            kind = ref if ref in (int, float, bool, str) else type(value)
            if kind in kinds:
                seen[key] = (tree, kind)
    return sorted(seen.items())


@pytest.fixture
def crs(tmp_path, monkeypatch, capsys):
    """``crs(*argv, needle=...)``: run ``crs.cli.main`` in a clean folder; assert a one-line user error."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("CRS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache: crs is offline
    monkeypatch.setattr(cli, "load_entry", lambda module: pytest.fail(f"the preflight let it reach {module}"))

    def run(*argv: str, needle: str | tuple[str, ...] = ()) -> str:
        before = sorted(tmp_path.rglob("*"))
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            cli.main(list(argv))
        out = capsys.readouterr()
        lines = [ln for ln in out.err.splitlines() if ln.strip()]
        assert exit_.value.code == 2, (argv, exit_.value.code, out.err)
        assert len(lines) == 1 and lines[0].startswith("crs: error:"), (argv, out.err)
        assert "Traceback" not in out.err + out.out, argv
        for n in (needle,) if isinstance(needle, str) else needle:
            assert n in lines[0], (argv, n, lines[0])
        assert sorted(tmp_path.rglob("*")) == before, f"{argv} created files"
        return lines[0]

    run.work = work
    run.tmp = tmp_path
    return run


# ------------------------------------------------------------------------------------------------
# generated from the config tree


@pytest.mark.parametrize("key,tree,kind", [(k, t, kd) for k, (t, kd) in _typed((int, float, bool))])
def test_every_numeric_or_boolean_field_refuses_the_wrong_type(crs, key, tree, kind):
    expected = {int: "Integer", float: "Float", bool: "bool"}[kind]
    crs("train", *TREES[tree], f"{key}=not_a_{kind.__name__}", needle=(key, expected))


NEGATIVE_OK = {"schedule.k", "schedule.gamma"}  # shape parameters of other shapes (checked for their shape)


@pytest.mark.parametrize("key,tree", [(k, t) for k, (t, _) in _typed((int, float)) if k not in NEGATIVE_OK])
def test_every_numeric_field_refuses_a_nonsense_negative(crs, key, tree):
    """A field without a hand-written check or a declared range (crs.checks.FIELD_RANGES) fails here."""
    crs("train", *TREES[tree], f"{key}=-7", needle=key.rsplit(".", 1)[-1])


def _outside(spec) -> float | None:
    iv = spec if isinstance(spec, Interval) else Interval.parse(spec)
    if iv.hi != float("inf"):
        v = iv.hi + 1
    elif iv.lo != float("-inf"):
        v = iv.lo - 1
    else:
        return None
    return int(v) if float(v).is_integer() else v  # an int field takes an int


@pytest.mark.parametrize("pattern,spec", [(p, s) for p, s in FIELD_RANGES.items() if _outside(s) is not None])
def test_declared_field_ranges(crs, pattern, spec):
    keys = [(k, t) for k, (t, _) in _typed((int, float)) if __import__("fnmatch").fnmatchcase(k, pattern)]
    assert keys, f"FIELD_RANGES names {pattern}, which no config tree has"
    key, tree = keys[0]
    crs("train", *TREES[tree], f"{key}={_outside(spec)}", needle=(key, "must be in"))


def _method_options() -> dict[str, str]:
    """credit step -> a conf/method option that uses it."""
    out = {}
    for y in sorted((Path(CONF_DIR) / "method").glob("*.yaml")):
        for step in compose([f"method={y.stem}"]).method.credit:
            out.setdefault(str(step), y.stem)
    return out


METHOD_OPTIONS = _method_options()
METHOD_RANGES = [
    (step, arg, spec)
    for step, option in METHOD_OPTIONS.items()
    for arg, spec in METHODS[step].ranges.items()
    if _outside(spec) is not None
]


@pytest.mark.parametrize("step,arg,spec", METHOD_RANGES, ids=[f"{s}.{a}" for s, a, _ in METHOD_RANGES])
def test_every_declared_method_range(crs, step, arg, spec):
    option = METHOD_OPTIONS[step]
    crs(
        "train",
        f"method={option}",
        f"method.credit.{step}.{arg}={_outside(spec)}",
        needle=f"method.credit.{step}.{arg} must be",
    )


NAMED = [
    k
    for k, _ in _typed((str,))
    if k.rsplit(".", 1)[-1] in ("name", "kind", "experiment", "path") or k.endswith(("_field", "_split"))
]


@pytest.mark.parametrize("key", NAMED)
def test_no_empty_name_where_a_name_is_needed(crs, key):
    tree = next(t for k, (t, _) in _typed((str,)) if k == key)
    crs("train", *TREES[tree], f"{key}=", needle=(key, "empty"))


GROUPS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name not in ("hydra", "local"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_refuses_an_unknown_option_and_key(crs, group):
    crs(
        "train",
        f"{group}=no_such_option",
        needle=(f"{group}=no_such_option is not an option", "choose one of"),
    )
    if group in ("method", "schedule", "trainer", "model", "benchmark", "tracking"):
        crs("train", f"{group}.no_such_key=1", needle=(f"{group}.no_such_key is not a config key", "keys of"))


# ------------------------------------------------------------------------------------------------
# paths: models, data, checkpoints, stores


def _model(folder: Path, *, config=True, weights=True, tokenizer=True, positions=128) -> Path:
    folder.mkdir(parents=True)
    if config:
        (folder / "config.json").write_text(
            json.dumps({"model_type": "qwen2", "max_position_embeddings": positions})
        )
    if weights:
        (folder / "model.safetensors").write_bytes(b"\0" * 8)
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def test_model_folders(crs):
    t = crs.tmp
    cases = [
        (str(t / "absent"), "no such folder"),
        (str(_model(t / "no_config", config=False)), "has no config.json"),
        (str(_model(t / "no_weights", weights=False)), "no weights"),
        (str(_model(t / "no_tokenizer", tokenizer=False)), "no tokenizer"),
        ("no-org/no-such-model", "neither a local model folder nor a hub id in the local cache"),
    ]
    half = _model(t / "half")
    (half / "config.json").write_text('{"model_type": "qw')  # half-written
    cases.append((str(half), "config.json is not JSON"))
    (t / "a_file").write_text("x")
    cases.append((str(t / "a_file"), "no such folder"))
    for path, needle in cases:
        crs("train", f"model.name_or_path={path}", needle=("model.name_or_path", needle))
    short = _model(t / "short", positions=32)  # completion 48 > 32 positions
    crs("train", f"model.name_or_path={short}", needle=("trainer.max_completion_length must be <", "(32)"))
    crs(
        "train",
        "model.embedded.max_position_embeddings=40",
        "trainer.max_completion_length=40",
        needle="trainer.max_completion_length must be < model.embedded.max_position_embeddings (40)",
    )
    crs(
        "pretrain", f"model.name_or_path={_model(t / 'ok')}", needle="model.name_or_path: crs pretrain builds"
    )


def _data(crs, name: str, text: str | bytes) -> str:
    path = crs.tmp / "data" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_data_files(crs):
    good = '{"question": "1+1?", "answer": "#### 2"}\n'
    hf = ["benchmark=gsm8k"]
    cases = [
        (str(crs.tmp / "absent.jsonl"), "benchmark.path: no such file"),
        (str(crs.tmp / "absent_folder"), "neither a local file or folder nor a hub dataset"),
        ("no-org/no-such-dataset", "neither a local file or folder nor a hub dataset"),
        (_data(crs, "empty.jsonl", ""), "is empty"),
        (
            _data(crs, "cols.jsonl", '{"problem": "1+1?", "solution": "2"}\n'),
            "has no column 'answer', 'question'",
        ),
        (_data(crs, "half.jsonl", good + '{"question": "2+2?", "ans'), "line 2 is not JSON"),
        (_data(crs, "bad.json", "[{"), "is not JSON"),
        (_data(crs, "cols.csv", "problem,solution\n1+1?,2\n"), "has no column"),
        (_data(crs, "noans.jsonl", good + '{"question": "2+2?", "answer": ""}\n'), "1 of 2 rows"),
        (_data(crs, "binary.jsonl", b"\xff\xfe\x00garbage"), "benchmark.path"),
    ]
    (crs.tmp / "empty_folder").mkdir()
    cases.append((str(crs.tmp / "empty_folder"), "has no data files"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem": ["1+1?"], "solution": ["2"]}), crs.tmp / "data" / "cols.parquet")
    cases.append((str(crs.tmp / "data" / "cols.parquet"), "has no column 'question'"))
    if not ROOT:
        locked = _data(crs, "locked.jsonl", good)
        os.chmod(locked, 0)
        cases.append((locked, "not a readable file"))
    for path, needle in cases:
        crs("train", *hf, f"benchmark.path={path}", needle=needle)
    folder = crs.tmp / "split_folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"q": 1}\n')
    crs("train", *hf, f"benchmark.path={folder}", needle="has no column")


def test_resume_checkpoints(crs):
    t = crs.tmp
    crs("train", f"resume={t / 'absent'}", needle="resume: no such checkpoint folder")
    crs("train", "resume=", needle="resume must be auto, never or a checkpoint folder")
    half = t / "run" / "checkpoints" / "checkpoint-5"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"\0")  # killed while saving: no marker
    crs("train", f"resume={t / 'run'}", needle="holds no complete checkpoint")
    crs("train", f"resume={half}", needle="holds no complete checkpoint")
    (half / "crs_checkpoint.json").write_text('{"step": 5, "ru')
    crs("train", f"resume={half}", needle="unreadable or half-written")
    (half / "crs_checkpoint.json").write_text('{"step": 5}')
    crs("train", f"resume={half}", needle="half-written (no trainer_state.json)")


def test_tracking_stores(crs):
    t = crs.tmp
    (t / "garbage.db").write_text("not a database")
    (t / "a_file").write_text("x")
    cases = [
        ("ftp://host/x", "is not a store crs can use"),
        (f"sqlite:///{t}", "is a folder, not a sqlite file"),
        (f"sqlite:///{t / 'garbage.db'}", "not a sqlite database"),
        ("sqlite:", "is not a sqlite URI"),
        (f"file://{t / 'a_file'}", "is a file, not a store folder"),
        ("http://127.0.0.1:9", "no MLflow server answers"),
    ]
    if not ROOT:
        (t / "ro").mkdir()
        os.chmod(t / "ro", 0o500)
        cases.append((f"sqlite:///{t / 'ro' / 'mlflow.db'}", "cannot write the store folder"))
    for uri, needle in cases:
        crs("train", f"tracking.uri={uri}", needle=("tracking.uri", needle))
    crs("train", "tracking.experiment=", needle="tracking.experiment: empty")
    crs("train", "tracking.run_name= ", needle="tracking.run_name: empty")


def test_launcher_service_down(crs, monkeypatch):
    bin_ = crs.tmp / "bin"
    bin_.mkdir()
    sinfo = bin_ / "sinfo"
    sinfo.write_text(
        "#!/bin/sh\necho 'sinfo: error: Unable to contact slurm controller (connect failure)' >&2\nexit 1\n"
    )
    sinfo.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    crs(
        "train",
        "-m",
        "hydra/launcher=slurm",
        "seed=0,1",
        needle=("hydra/launcher=slurm", "Unable to contact"),
    )
    crs("sweep", "smoke", "hydra/launcher=slurm", needle="SLURM is not reachable")
    monkeypatch.setenv("PATH", str(crs.tmp / "empty"))
    crs("train", "-m", "hydra/launcher=slurm", "seed=0,1", needle="no sinfo on PATH")


def test_sweeps_check_every_job_first(crs):
    crs("train", "-m", "seed=0,1", "trainer.lr=-1,1", needle=("sweep job #", "trainer.lr must be > 0"))
    crs("train", "-m", "method=grpo,no_such", needle="method=no_such is not an option")
    crs("sweep", "no_such_grid", needle="no grid 'no_such_grid'")
    crs("sweep", "absent.yaml", needle="no such grid file")
    crs("sweep", needle="crs sweep needs a grid")
    crs("train", "--config-dir", str(crs.tmp / "absent"), needle="--config-dir: no such config folder")


# ------------------------------------------------------------------------------------------------
# the other verbs (their argparse flags) and the store they read


VERB_FLAGS = [
    ("schedule", ["linear", "--steps", "x"], "argument --steps: invalid int value"),
    ("schedule", ["linear", "--steps", "0"], "--steps must be >= 1"),
    ("schedule", ["no_such"], "schedule=no_such is not an option"),
    ("schedule", ["linear", "schedule.m=2"], "schedule.m must be in [0, 1]"),
    ("compare", ["--threshold", "x"], "argument --threshold: invalid float value"),
    ("compare", ["--format", "xml"], "argument --format: invalid choice"),
    ("compare", ["--no-such-flag"], "unrecognized arguments"),
    ("ui", ["--port", "x"], "argument --port: invalid int value"),
    ("runs", ["clean", "--stale-after", "x"], "argument --stale-after: invalid float value"),
    ("runs", ["frobnicate"], "invalid choice"),
    ("runs", [], "the following arguments are required"),
    ("frobnicate", [], "unknown command 'frobnicate'"),
]


@pytest.mark.parametrize("verb,args,needle", VERB_FLAGS, ids=[f"{v}-{'_'.join(a)}" for v, a, _ in VERB_FLAGS])
def test_every_verb_refuses_bad_flags_in_one_line(crs, verb, args, needle):
    crs(verb, *args, needle=needle)


@pytest.mark.parametrize("verb", ["compare", "ui", "runs"])
def test_store_verbs_never_create_or_misread_a_store(crs, verb):
    args = ["clean"] if verb == "runs" else []
    absent = crs.tmp / "absent.db"
    crs(verb, *args, "--uri", f"sqlite:///{absent}", needle=("--uri", "no MLflow store at"))
    (crs.tmp / "garbage.db").write_text("not a database")
    crs(verb, *args, "--uri", f"sqlite:///{crs.tmp / 'garbage.db'}", needle="not a sqlite database")
    crs(verb, *args, "--uri", "http://127.0.0.1:9", needle="no MLflow server answers")
    if verb == "runs":
        crs(verb, *args, needle="no MLflow store at")  # no store in the working folder


def test_validation_runs_once_per_run(tmp_path, monkeypatch):
    """The CLI's check and the run share one validation and one resource check (memoised)."""
    import crs.config as config
    import crs.runs.preflight as preflight

    calls = {"validate": 0, "resources": 0}
    real_validate, real_data = config._validate, preflight.check_data_files

    def counting_validate(cfg):
        calls["validate"] += 1
        return real_validate(cfg)

    def counting_data(bench):
        calls["resources"] += 1
        return real_data(bench)

    monkeypatch.setattr(config, "_validate", counting_validate)
    monkeypatch.setattr(preflight, "check_data_files", counting_data)
    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_train(cfg):  # what crs.train.train does first
        seen["chain"] = config.validate(cfg)
        preflight.check_resources(cfg)
        return {}

    import crs.train

    monkeypatch.setattr(crs.train, "train", fake_train)
    monkeypatch.setattr(sys, "argv", ["crs"])
    cli.main(["train", "trainer.max_steps=7", "seed=11", "tracking=none", "hydra.run.dir=run"])
    assert seen["chain"] is not None
    assert calls == {"validate": 1, "resources": 1}, calls


# ------------------------------------------------------------------------------------------------
# as a user runs it: real subprocesses, a real MLflow store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real sqlite MLflow store with one experiment and one finished run."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment("crs")
    run = client.create_run(exp, run_name="grpo·s0")
    client.set_terminated(run.info.run_id, "FINISHED")
    return folder / "mlflow.db", uri


def _runs(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as con:
        return sorted(con.execute("select name, status from runs").fetchall())


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "benchmark=gsm8k", "benchmark.path=/nonexistent/gsm8k"], "benchmark.path"),
        (["train", "benchmark=gsm8k", "benchmark.path=/nonexistent/x.jsonl"], "benchmark.path: no such file"),
        (["compare", "--sweep", "no-such-sweep"], "no-such-sweep"),
        (["runs", "clean", "--experiment", "no-such-experiment"], "no experiment 'no-such-experiment'"),
        (["ui", "--experiment", "no-such-experiment", "--no-browser"], "no experiment 'no-such-experiment'"),
    ],
)
def test_as_a_user_nothing_is_created_and_no_run_is_left(tmp_path, store, args, needle):
    db, uri = store
    before = _runs(db)
    flag = [f"tracking.uri={uri}"] if args[0] == "train" else ["--uri", uri]
    out = run_crs(*args, *flag, cwd=tmp_path, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("crs: error:") and needle in lines[0], lines
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/ folder, no mlflow.db
    assert _runs(db) == before  # no FAILED 'grpo·s0', nothing RUNNING
