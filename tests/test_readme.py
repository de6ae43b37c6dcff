"""Every command in the README's ```bash blocks runs as written: each is dry-run on the repository.

The commands are read from the README itself (comments stripped, ``a && b`` split), so a renamed
option, a removed make target or a grid that no longer exists fails here. The rule per kind:

- ``make <target> [VAR=value]`` → ``make -n <target> VAR=value`` exits 0 (the recipe exists and
  expands; nothing runs); ``SWEEP=<grid>`` must name ``sweeps/<grid>.yaml``.
- ``source <path>`` → the path is the activate script ``make install`` creates (``$(VENV)/bin/activate``).
- ``crs train|pretrain <overrides>`` (``--cfg job`` dropped) → ``conf/train.yaml`` composes with the
  overrides and ``crs.config.validate`` accepts it: the checks a run does before it starts.
- ``crs train -m <overrides>`` → the same for every job of the grid (Hydra's sweep expansion), the
  ``hydra/launcher=`` choice included.
- ``crs sweep <grid> <overrides>`` → ``sweeps/<grid>.yaml`` composes and every job of the grid validates.
- ``crs eval <overrides>`` → ``conf/eval.yaml`` composes and its values check (a ``source=<run id>``
  placeholder is left out); ``crs pipeline <name> <overrides>`` → ``crs/pipeline/conf/<name>.yaml`` composes.
- ``crs compare|ui|runs|schedule <args>`` → the verb's own argparse parser accepts the arguments
  (the verb stops right after parsing).
- any other first word → fails: the README only shows ``make``, ``source`` and ``crs`` commands.

    python -m pytest tests/test_readme.py -q
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CONF = REPO / "conf"
SWEEPS = REPO / "sweeps"


def readme_commands(text: str) -> list[str]:
    """The commands of every ```bash block: one per line, comments dropped, ``a && b`` split."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            cmd: list[str] = []
            for w in [*words, "&&"]:
                if w == "&&":
                    if cmd:
                        out.append(shlex.join(cmd))
                    cmd = []
                else:
                    cmd.append(w)
    return out


COMMANDS = readme_commands(README.read_text())


class _Parsed(Exception):
    pass


def _parse_only(monkeypatch, verb_main, args: list[str]) -> None:
    """Run a verb's main until its parser has accepted ``args``; a bad argument exits 2."""
    for name in ("parse_args", "parse_intermixed_args"):
        real = getattr(argparse.ArgumentParser, name)

        def parse_then_stop(self, *a, _real=real, **k):
            raise _Parsed(_real(self, *a, **k))

        monkeypatch.setattr(argparse.ArgumentParser, name, parse_then_stop)
    with pytest.raises(_Parsed):
        verb_main(args)


def _compose(config_name: str, overrides: list[str], config_dir: Path = CONF):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from crs.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    extra = [f"hydra.searchpath=[file://{CONF}]"] if config_dir != CONF else []
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name=config_name, overrides=[*extra, *overrides], return_hydra_config=True)


def _jobs(params: dict[str, str], overrides: list[str]) -> list[list[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [f"{k}={v}" for k, v in params.items()] + overrides
    parsed = OverridesParser.create().parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _validate_jobs(config_name: str, overrides: list[str], config_dir: Path = CONF) -> int:
    from omegaconf import OmegaConf, open_dict

    from crs.config import validate

    hydra_ov = [o for o in overrides if o.startswith(("hydra/", "hydra."))]
    task = [o for o in overrides if o not in hydra_ov]
    base = _compose(config_name, hydra_ov, config_dir)  # the grid's own params; the CLI's come below
    params = base.hydra.sweeper.get("params") or {}
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    jobs = _jobs({str(k): str(v) for k, v in params.items()}, task)
    for job in jobs:
        cfg = _compose(config_name, [*hydra_ov, *job], config_dir)
        with open_dict(cfg):
            del cfg["hydra"]  # what a job sees: the run's config, as crs train validates it
        validate(cfg)
    return len(jobs)


def dry_run(cmd: str, monkeypatch) -> None:
    words = shlex.split(cmd)
    head, args = words[0], words[1:]
    if head == "make":
        target, assigns = args[0], args[1:]
        assert all("=" in a for a in assigns), f"{cmd}: only VAR=value after the target"
        for a in assigns:
            if a.startswith("SWEEP="):
                assert (SWEEPS / f"{a[len('SWEEP=') :]}.yaml").is_file(), f"{cmd}: no such grid"
        out = subprocess.run(["make", "-n", target, *assigns], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, f"{cmd}: {out.stderr.strip()}"
        return
    if head == "source":
        venv = re.search(r"^VENV \?= (\S+)", (REPO / "Makefile").read_text(), flags=re.M)
        assert venv and args == [f"{venv.group(1)}/bin/activate"], f"{cmd}: not what make install creates"
        return
    assert head == "crs", f"{cmd}: the README shows make, source and crs commands only"
    verb, rest = args[0], args[1:]
    if verb in ("train", "pretrain"):
        rest = [a for i, a in enumerate(rest) if a != "--cfg" and (i == 0 or rest[i - 1] != "--cfg")]
        if "-m" in rest:
            rest.remove("-m")
        assert not [a for a in rest if a.startswith("-")], f"{cmd}: an unknown flag"
        assert _validate_jobs("train", rest) >= 1
    elif verb == "sweep":
        grid = SWEEPS / f"{rest[0]}.yaml"
        assert grid.is_file(), f"{cmd}: no grid {grid.name} in sweeps/"
        assert _validate_jobs(rest[0], rest[1:], SWEEPS) >= 2, f"{cmd}: a grid must have several jobs"
    elif verb == "eval":
        import crs.cli as cli
        from crs.eval.settings import check_eval_values, register_eval_configs

        register_eval_configs()
        # a placeholder source (<run id>, <sweep id>) names a store's run: only the rest can be checked here
        ovs = shlex.split(re.sub(r"source=<[^>]*>", "", shlex.join(rest).replace("'", "")))
        check_eval_values(cli.compose(ovs, config_name="eval"))
    elif verb == "pipeline":
        from crs.pipeline import compose_pipeline

        compose_pipeline(rest[0], rest[1:])
    elif verb in ("compare", "ui", "runs", "schedule"):
        import crs.cli as cli

        if verb == "compare":
            from crs.compare.cli import main as verb_main
        elif verb == "ui":
            from crs.ui import main as verb_main
        elif verb == "runs":
            from crs.runs.liveness import runs_main as verb_main
        else:
            verb_main = cli.schedule_cmd
        _parse_only(monkeypatch, verb_main, rest)
    else:
        raise AssertionError(f"{cmd}: crs has no verb {verb!r}")


def test_readme_has_the_commands_ci_and_newcomers_need():
    assert "make demo" in COMMANDS and "make test" in COMMANDS  # CI calls the README's test command
    assert any(c.startswith("crs sweep first") for c in COMMANDS)  # "your first comparison"
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_dry_runs(cmd, monkeypatch):
    dry_run(cmd, monkeypatch)


@pytest.mark.parametrize(
    "cmd",
    [
        "make no_such_target",
        "make results SWEEP=no_such_grid",
        "source venv/bin/activate",
        "crs train method=no_such_method",
        "crs train trainer.lr=-1",
        "crs train -m method=grpo,no_such schedule=linear",
        "crs sweep no_such_grid",
        "crs sweep first trainer.no_such_key=1",
        "crs compare --last --no-such-flag",
        "crs ui --no-such-flag",
        "crs schedule sigmoid --no-such-flag",
        "crs eval eval.n=4 eval.k=[1,8]",
        "crs eval source=<sweep id> benchmark=no_such",
        "crs pipeline no_such_pipeline",
        "crs nosuchverb",
        "pip install crs",
    ],
)
def test_a_wrong_command_fails_its_dry_run(cmd, monkeypatch):
    with pytest.raises((AssertionError, SystemExit, Exception)):
        dry_run(cmd, monkeypatch)
