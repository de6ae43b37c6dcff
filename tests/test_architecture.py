"""The structure holds: layering without circles, methods named only in their own module, one chain and
one validation per run, and a new method is one file + one yaml + one golden test."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from crs.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
CRS = ROOT / "crs"


def test_import_layers_hold_no_circles_no_upward_import():
    """import-linter's contracts (pyproject.toml): layers, independent method modules, runs below methods."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _own_files(name: str) -> set[Path]:
    single = CRS / "methods" / f"{name}.py"
    package = CRS / "methods" / name
    return {single} if single.exists() else set(package.rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def naming_violations(root: Path = CRS) -> list[str]:
    """``path:line name`` wherever code outside a method's own module names it: a string equal to the name
    (or ``"<name>/…"``), or an import of ``crs.methods.<name>``. Docstrings and comments may mention it."""
    from crs.trainers import TRAINERS

    # a trainer kind may share its name with the method that is its plain objective (trainer=dpo method=dpo):
    # the seam names trainer kinds, never methods
    names = set(METHODS) - set(TRAINERS)
    out = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "methods" / "__init__.py":  # the one explicit list
            continue
        owners = {n for n in names if path in _own_files(n)}
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            hit = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                head = node.value.split("/")[0]
                if head in names and head not in owners:
                    hit = head
            elif isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["crs", "methods"]:
                    named = {parts[2]} if len(parts) > 2 else {a.name for a in node.names}
                    hit = next((n for n in named if n in names and n not in owners), None)
            if hit:
                out.append(f"{path.relative_to(root.parent)}:{node.lineno} {hit}")
    return out


def test_no_module_outside_a_method_names_that_method():
    assert naming_violations() == []


def test_the_naming_check_catches_a_method_named_in_generic_code(tmp_path):
    """Mutation: the trainer special-casing a method by name again (as it did for TP-Schedule)."""
    fake = tmp_path / "crs"
    shutil.copytree(CRS, fake, ignore=shutil.ignore_patterns("__pycache__"))
    grpo = fake / "trainers" / "grpo.py"
    grpo.write_text(grpo.read_text() + '\n\ndef _special(p):\n    return p.method.name == "tp_schedule"\n')
    assert any("trainers/grpo.py" in v and "tp_schedule" in v for v in naming_violations(fake))


def test_every_method_declares_help_and_a_range_for_each_numeric_argument():
    from crs.methods import _BUILTIN

    for name, m in ((mod.METHOD.name, mod.METHOD) for mod in _BUILTIN):
        cls = m.args_dataclass()
        for f in cls.__dataclass_fields__.values():
            assert f.metadata["help"], f"method {name}: argument {f.name} has no help text"
            numeric = isinstance(f.default, int | float) and not isinstance(f.default, bool)
            assert not numeric or f.metadata["range"], f"method {name}: numeric {f.name} declares no range"


def test_chain_built_and_config_validated_once_per_run(compose_cfg, monkeypatch):
    """The CLI's early check and the run share one validation and one chain (it was 7+ chains)."""
    import crs.config as config
    from crs.methods.chain import CreditChain
    from crs.train import train

    calls = []
    real = config._validate
    monkeypatch.setattr(config, "_validate", lambda cfg: calls.append(1) or real(cfg))
    cfg = compose_cfg(
        "debug=fast", "method=tp_schedule", "trainer.max_steps=1", "tracking=none", "resume=never"
    )
    before = CreditChain.built
    config.validate(cfg)  # what `crs train` does before Hydra starts the job
    train(cfg)
    assert len(calls) == 1, f"config validated {len(calls)} times"
    assert CreditChain.built - before == 1, f"chain built {CreditChain.built - before} times"


METHOD_FILE = '''
"""A test method: scale every advantage by ``strength`` (stands in for a researcher's new idea)."""

from crs.credit import CreditBatch, Method


def my_scale(batch: CreditBatch, strength: float = 0.5) -> CreditBatch:
    """Scale the advantages by ``strength``."""
    return batch.replace(advantages=batch.advantages * strength)


METHOD = Method(
    "my_scale",
    my_scale,
    help={"strength": "scale of every advantage; 1 = GRPO"},
    ranges={"strength": "[0, inf)"},
)
'''


@pytest.mark.timeout(600)
def test_a_new_method_is_one_file_one_yaml_one_golden_test(tmp_path):
    """A method from a file outside crs, a yaml in the user's own config folder, trained one step by the
    real command line; its golden case checked on the method object the run used."""
    from crs.credit import CreditBatch
    from crs.methods import load_source

    (tmp_path / "my_scale.py").write_text(textwrap.dedent(METHOD_FILE))
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "my_scale.yaml").write_text(
        textwrap.dedent(f"""
        defaults:
          - base_method
          - _self_
        name: my_scale
        source: {tmp_path / "my_scale.py"}
        credit:
          my_scale:
            strength: 0.5
            drive: {{knob: strength, neutral: 1.0}}
        """)
    )
    # the golden test: A = 0.5·A
    (m,) = load_source(tmp_path / "my_scale.py")
    out = m.fn(CreditBatch(advantages=torch.tensor([1.0, -2.0]), mask=torch.ones(2, 3)), strength=0.5)
    assert out.advantages.tolist() == [0.5, -1.0]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "crs.cli",
            "train",
            "--config-dir",
            str(tmp_path),
            "method=my_scale",
            "debug=fast",
            "trainer.max_steps=1",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("crs").experiment_id])
    assert r.info.status == "FINISHED" and r.data.tags["method"] == "my_scale"
    knob = [k for k in r.data.metrics if "my_scale" in k and k.endswith("strength")]  # the driven knob
    assert knob, sorted(r.data.metrics)
