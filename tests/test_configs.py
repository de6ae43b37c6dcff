"""Every option of every config group composes and validates; schemas reject typos and bad values.

pytest tests/test_configs.py
"""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crs.cli import compose
from crs.config import validate
from crs.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def _options(group: str) -> list[str]:
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


GROUPS = ["method", "schedule", "loss", "model", "benchmark", "trainer", "tracking", "debug", "experiment"]


def _option_values(group: str, option: str) -> tuple[dict, list[tuple[str, str]]]:
    """An option file's own values where they land in the composed config (its ``# @package``, else its
    group) and its ``override /<group>: <option>`` defaults."""
    path = CONF / group / f"{option}.yaml"
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    defaults = data.pop("defaults", None) or []
    package = group
    for line in path.read_text().splitlines():
        m = re.match(r"#\s*@package\s+(\S+)", line)
        if m:
            package = m.group(1)
            break
        if line.strip() and not line.startswith("#"):
            break
    if package != "_global_":
        for part in reversed(package.split(".")):
            data = {part: data}
    overrides = [
        (k[len("override /") :].split("@")[0], v)  # `override /schedule@_global_.schedule` -> schedule
        for d in defaults
        if isinstance(d, dict)
        for k, v in d.items()
        if k.startswith("override /")
    ]
    return data, overrides


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)], ids=lambda x: str(x))
def test_every_option_composes_and_validates(group, option, tmp_path):
    from crs.methods import METHODS

    extra, values = [], {}
    if group == "method":  # turn methods validate on an environment (single-turn is refused up front)
        credit = OmegaConf.load(CONF / "method" / f"{option}.yaml").get("credit") or {}
        if "opd" in credit:  # on-policy distillation needs a teacher folder (checked for its config.json)
            (tmp_path / "config.json").write_text("{}")
            values = {"method.credit.opd.teacher": str(tmp_path)}
        if any(n in METHODS and "single_turn" not in METHODS[n].benchmarks for n in credit):
            extra = ["benchmark=maze"]
        if "f_grpo" in credit:  # per-phase credit needs a benchmark with slate and ranking parts
            extra = ["benchmark=slate_rank"]
        if "orch_credit" in credit:  # orchestration credit reads spawn/collect events
            extra = ["benchmark=orchestra"]
        if any(n in METHODS and "grpo" not in METHODS[n].trainers for n in credit):  # preference methods
            extra = ["trainer=dpo"]
    if group == "trainer":  # a trainer that needs a method (trainer=dpo) validates with one that runs on it
        from crs.trainers import TRAINERS

        kind = OmegaConf.load(CONF / "trainer" / f"{option}.yaml").get("kind", "grpo")
        if TRAINERS[kind].needs_method:
            extra = [f"method={next(n for n, m in sorted(METHODS.items()) if kind in m.trainers)}"]
    cfg = compose([f"{group}={option}", *extra, *(f"{k}={v}" for k, v in values.items())])
    chain = validate(cfg)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    assert isinstance(method, dict) and method["name"]
    # the chain validate built is the method's credit steps, in order, with the config's arguments
    credit = method.get("credit") or {}
    assert [s.method.name for s in chain.steps] == list(credit)
    for s in chain.steps:
        given = {k: v for k, v in (credit[s.method.name] or {}).items() if k != "drive"}
        assert {k: s.args[k] for k in given} == given, s.method.name
    # every value the option file sets (and the options it overrides to) is in the composed config, raw
    expected: dict = {}
    own, overrides = _option_values(group, option)
    for g, o in overrides:
        expected = OmegaConf.to_container(OmegaConf.merge(expected, _option_values(g, o)[0]))
    expected = OmegaConf.to_container(OmegaConf.merge(expected, own))
    for g, o in (x.split("=") for x in extra):  # composed after the option's group
        expected = OmegaConf.to_container(OmegaConf.merge(expected, _option_values(g, o)[0]))
    raw = OmegaConf.to_container(cfg, resolve=False)
    leaves = list(_leaves(expected))
    assert leaves, f"{group}={option} sets nothing"
    expected_values = {**dict(leaves), **values}  # a value given on the command line wins over the file's
    for key, value in expected_values.items():
        got = raw
        for part in key.split("."):
            assert isinstance(got, dict) and part in got, f"{group}={option}: {key} missing from the config"
            got = got[part]
        assert got == value, f"{group}={option}: {key} = {got!r}, the option file says {value!r}"
    if group in ("method", "schedule", "model", "tracking") and "name" in own.get(group, {}):
        assert cfg[group].name == own[group]["name"]


@pytest.mark.parametrize("launcher", [p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")])
def test_launchers_compose(launcher):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hcompose(
            config_name="train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True
        )
    assert (
        "submitit" in cfg.hydra.launcher._target_.lower() or "joblib" in cfg.hydra.launcher._target_.lower()
    )


@pytest.mark.parametrize("grid", [p.stem for p in SWEEPS.glob("*.yaml")])
def test_sweep_grids_compose(grid):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from crs.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        cfg = hcompose(
            config_name=grid, overrides=[f"hydra.searchpath=[file://{CONF}]"], return_hydra_config=True
        )
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params, "a grid must sweep something"
    # the grid's first job: the first value of every swept key (a grid's base alone may not be a job,
    # e.g. sweeps/t_reg.yaml sets trainer=dpo and sweeps method=dpo,t_reg)
    first = [f"{k}={str(v).split(',')[0].strip()}" for k, v in cfg.hydra.sweeper.params.items()]
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        job = hcompose(config_name=grid, overrides=[f"hydra.searchpath=[file://{CONF}]", *first])
    validate(job)


def test_defaults():
    cfg = compose([])
    assert (
        cfg.method.name == "grpo"
        and cfg.schedule.name == "constant"
        and cfg.trainer.loss_type == "token_mean"
    )
    assert cfg.tracking.name == "mlflow" and cfg.model.name_or_path is None


def test_loss_presets_patch_the_trainer():
    dr = compose(["loss=dr_grpo"]).trainer
    assert dr.loss_type == "dr_grpo" and dr.scale_rewards == "none"  # both Dr.GRPO fixes, not only the loss
    dapo = compose(["loss=dapo"]).trainer
    assert (dapo.epsilon, dapo.epsilon_high, dapo.loss_type) == (0.2, 0.28, "dapo")
    # the DAPO recipe: soft overlong penalty WITHOUT overlong filtering (else truncated samples never get it)
    assert dapo.filter_zero_std_groups and dapo.soft_overlong_cache and not dapo.mask_truncated_completions
    tm = compose(["loss=token_mean"]).trainer
    assert tm.loss_type == "token_mean" and tm.epsilon_high is None
    assert compose(["loss=opmd"]).trainer.loss_type == "opmd"
    gspo = compose(["loss=gspo"]).trainer
    assert gspo.importance_sampling_level == "sequence" and gspo.epsilon == 3e-4 and gspo.epsilon_high == 4e-4
    # a command-line value still wins over the preset
    assert compose(["loss=dapo", "trainer.epsilon_high=0.3"]).trainer.epsilon_high == 0.3


@pytest.mark.parametrize(
    "override,needle",
    [
        ("trainer.lr=-1", "trainer.lr"),
        ("trainer.loss_type=ppo", "trainer.loss_type"),
        ("trainer.num_generations=1", "num_generations"),
        ("trainer.per_device_train_batch_size=6", "divisible"),
        ("schedule.end=0", "schedule"),
        ("+trainer.extra.not_a_field=1", "trainer.extra.not_a_field"),
        ("+method.credit.nope={}", "unknown step"),
    ],
)
def test_invalid_values_raise_config_error(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        validate(compose([override]))


@pytest.mark.parametrize(
    "override", ["trainer.lrr=1", "trainer.lr=abc", "method=nope", "model.embedded.hidden=3"]
)
def test_typos_and_types_fail_at_composition(override):
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match=override.split("=")[0].split(".")[-1].replace("method", "nope")):
        compose([override])


@pytest.mark.parametrize("grid", [p.stem for p in SWEEPS.glob("*.yaml")])
def test_sweep_grid_options_exist(grid):
    """Each swept group value names a real option (a glob that matches nothing would launch 0 jobs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.load(SWEEPS / f"{grid}.yaml").hydra.sweeper.params
    parser = OverridesParser.create()
    n_jobs = 1
    for key, value in params.items():
        override = parser.parse_overrides([f"{key}={value}"])[0]
        choices = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        assert choices, f"{grid}: {key} sweeps over nothing"
        n_jobs *= len(choices)
        if (CONF / key).is_dir():
            for choice in choices:
                assert (CONF / key / f"{choice}.yaml").exists(), f"{grid}: {key}={choice} is not an option"
    assert n_jobs >= 2


@pytest.mark.parametrize(
    "row",
    [
        "grpo",
        "tp_schedule",
        "entropy_adv_static",
        "entropy_adv_schedule",
        "forking_static",
        "forking_schedule",
    ],
)
def test_table1_grpo_backbone_rows_train_with_token_mean(row):
    """RLVR-Schedule trains every row with loss_agg_mode=token-mean (run_schedule_4b.sh:97)."""
    cfg = compose([f"experiment=table1/{row}"])
    assert cfg.trainer.loss_type == "token_mean"


@pytest.mark.parametrize("row", ["tp_schedule", "gspo_tp_schedule"])
def test_table1_tp_rows_score_only_the_suffix(row):
    cfg = compose([f"experiment=table1/{row}"])
    assert cfg.method.credit.tp_schedule.reward_on == "suffix"
