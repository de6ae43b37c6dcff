"""Names shown to the user: the console progress line."""


def test_progress_line_shows_rho_only_when_a_knob_is_driven():
    from crs.progress import RichProgressCallback

    logs = {"reward": 0.5, "accuracy": 0.5, "schedule/rho": 1.0, "entropy/all": 0.2}
    plain, driven = RichProgressCallback("grpo", show_rho=False), RichProgressCallback("tp")
    plain.last, driven.last = logs, logs
    assert "ρ" not in plain._stats() and "ρ 1.00" in driven._stats()


# --- issue 23: names that tell runs apart ---


def _top_level_name(*overrides: str) -> str:
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from crs.config import register_configs
    from crs.locations import CONF_DIR
    from crs.naming import run_name

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hcompose("train", list(overrides), return_hydra_config=True)
    ctx = {"choices": dict(cfg.hydra.runtime.choices), "overrides": list(overrides)}
    return run_name(cfg, ctx, None)


def test_top_level_names_carry_benchmark_and_size_where_not_default():
    assert _top_level_name() == "grpo·s0"
    assert _top_level_name("method=tp_schedule", "seed=1") == "tp_schedule·linear·s1"
    assert _top_level_name("benchmark=bifurcation") == "grpo·bifurcation·s0"
    # debug=fast: another task (arithmetic_easy) and a smaller embedded model than the default run's
    assert _top_level_name("debug=fast") == "grpo·arithmetic_easy·h64x2·s0"
    assert _top_level_name("model=qwen2.5-0.5b", "benchmark=gsm8k") == "grpo·gsm8k·qwen2.5-0.5b·s0"


def test_sweep_jobs_keep_short_names():
    from crs.naming import run_name

    class Cfg(dict):
        __getattr__ = dict.__getitem__

    cfg = Cfg(
        tracking=Cfg(get=lambda k, d=None: None),
        method=Cfg(name="grpo", credit={}),
        schedule=Cfg(name="constant"),
        seed=0,
    )
    parent = {"swept_keys": ["method", "seed"]}
    assert run_name(cfg, {"choices": {"benchmark": "maze"}, "overrides": []}, parent) == "grpo·s0"


def test_adhoc_grid_parent_named_by_its_varied_overrides():
    from crs.naming import parent_name

    grid = {"method": ["grpo", "tp_schedule"], "seed": ["0", "1"]}
    assert parent_name("train", ["method", "seed"], grid) == "sweep: method=grpo,tp_schedule × seed=0,1"
    assert parent_name("train", ["seed"], {"seed": [str(i) for i in range(8)]}) == "sweep: seed (8)"
    assert parent_name("table1", ["experiment", "seed"], grid) == "sweep table1: experiment × seed"
