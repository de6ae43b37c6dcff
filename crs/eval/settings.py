"""Config schemas of ``crs eval`` (``conf/eval.yaml``, ``crs/eval/conf/suite/*.yaml``) and its cheap value checks.

No torch, transformers or datasets here: ``crs eval`` composes and checks the command line with these
before any model loads, so a typo or a bad value is one line on stderr and exit 2.

    crs eval --cfg job suite=paper eval.n=16
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from crs.errors import ConfigError
from crs.fields import help_field as _f


@dataclass
class EvalSettings:
    n: int = _f(
        8,
        "Samples per problem. avg@n is their mean accuracy (the paper's avg@k); pass@k uses the unbiased "
        "estimator 1 − C(n−c,k)/C(n,k) (Chen et al. 2021), whose variance shrinks as n grows past k.",
    )
    k: list[int] = _f(
        [1, 4, 8], "pass@k reported for each k ≤ n (k=1 equals avg@n: the estimator is unbiased)."
    )
    temperature: float = _f(
        1.0,
        "Sampling temperature. RLVR-Schedule trains at 1.2; its eval temperature is not released "
        "[UNVERIFIED]; 0.6–1.0 is common for Qwen3. Higher = more diverse samples, higher pass@k, lower avg@k.",
    )
    top_p: float = _f(1.0, "Nucleus sampling (1.0 = off; Qwen3's card suggests 0.95).")
    max_new_tokens: int = _f(
        48,
        "Generation budget per sample. The paper trains with 39 936 response tokens; an eval budget "
        "shorter than the model's reasoning truncates it (counted as frac_truncated, usually wrong).",
    )
    batch_size: int = _f(16, "Problems per generate call (each expanded to n samples): memory vs speed.")
    greedy: bool = _f(True, "Also decode greedily once per problem (greedy accuracy).")
    seed: int = _f(0, "Sampling seed: same model, benchmark, seed and batch size give the same samples.")
    engine: str = _f(
        "hf",
        "Generation engine: hf = transformers generate with the dynamic KV cache; hf_static = its static "
        "cache (several times faster per token on GPUs, docs/gpu.md; no gain on CPU).",
    )
    n_problems: int | None = _f(
        None, "Cap on problems per benchmark (first N, fixed); null = the benchmark's benchmark.n_eval."
    )
    cache: bool = _f(
        True,
        "Reuse results cached under paths.cache_dir/eval by (model hash, benchmark, sampling config); "
        "false recomputes (and rewrites) them.",
    )
    log_to: str = _f(
        "auto",
        "MLflow: auto = on the evaluated run when the model came from one (metrics eval/<benchmark>/*), "
        "else an own run in tracking.experiment tagged crs.eval_of; own = always an own run; none = no logging.",
    )
    device: str = _f("auto", "auto (cuda if available), cpu or cuda.")
    num_threads: int | None = _f(None, "torch CPU threads; null = all cores.")


@dataclass
class SuiteConfig:
    name: str = _f(MISSING, "Suite name (tag in MLflow).")
    benchmarks: list[str] = _f([], "conf/benchmark options evaluated in order (suite=paper: the paper's).")
    set: dict[str, Any] = _f(
        {},
        "Values set on every member's benchmark config (+suite.set.chat=false, +suite.set.n_eval=50: new keys take Hydra's +); "
        "benchmark.* overrides reach only the benchmark group's own choice.",
    )
    data_dir: str | None = _f(
        None,
        "Local files instead of the hub: <data_dir>/<benchmark>.{jsonl,json,parquet,csv} in the hub's "
        "format (same column names); null = each benchmark's own benchmark.path.",
    )


ENGINES = ("hf", "hf_static")
LOG_TO = ("auto", "own", "none")


def register_eval_configs() -> None:
    """Register the eval schemas in Hydra's ConfigStore (idempotent), next to crs's own."""
    from crs.config import register_configs

    register_configs()
    cs = ConfigStore.instance()
    cs.store(name="base_eval", node=EvalSettings, package="eval")
    cs.store(group="suite", name="base_suite", node=SuiteConfig)


def check_eval_values(cfg: DictConfig) -> None:
    """Values the types cannot check; one :class:`ConfigError` line naming the key."""
    e = cfg.eval
    if e.n < 1:
        raise ConfigError(f"eval.n must be >= 1 (got {e.n})")
    if not e.k:
        raise ConfigError("eval.k must list at least one k (e.g. eval.k=[1,8])")
    for k in e.k:
        if not 1 <= k <= e.n:
            raise ConfigError(f"eval.k: every k must be in [1, eval.n={e.n}] (got {k})")
    if e.temperature <= 0:
        raise ConfigError(f"eval.temperature must be > 0 (got {e.temperature}); greedy is eval.greedy")
    if not 0 < e.top_p <= 1:
        raise ConfigError(f"eval.top_p must be in (0, 1] (got {e.top_p})")
    for key in ("max_new_tokens", "batch_size"):
        if e[key] < 1:
            raise ConfigError(f"eval.{key} must be >= 1 (got {e[key]})")
    if e.n_problems is not None and e.n_problems < 1:
        raise ConfigError(f"eval.n_problems must be >= 1 or null (got {e.n_problems})")
    if e.engine not in ENGINES:
        raise ConfigError(f"eval.engine must be one of {', '.join(ENGINES)} (got {e.engine!r})")
    if e.log_to not in LOG_TO:
        raise ConfigError(f"eval.log_to must be one of {', '.join(LOG_TO)} (got {e.log_to!r})")
    if e.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"eval.device must be auto, cpu or cuda (got {e.device!r})")
