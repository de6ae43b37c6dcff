"""``crs eval`` entry point: sources → problems → (cached) samples → grades → metrics → tables and MLflow.

Order matters for the user: every config value, source and data file is checked (one line, exit 2)
before the first model loads; then each model is loaded once and scored on every benchmark.

    crs eval                                        # the embedded model on its arithmetic task
    crs eval source=<sweep id> benchmark=math500    # every final model of a sweep
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from crs.errors import ConfigError
from crs.eval.settings import check_eval_values, register_eval_configs
from crs.locations import CONF_DIR

register_eval_configs()

SAMPLING_KEYS = ("n", "temperature", "top_p", "max_new_tokens", "batch_size", "greedy", "seed", "engine")


def prepare(cfg: DictConfig, choice: str | None, compose, overrides: list[str]):
    """Checks that need no model: values, sources, benchmark configs and local files."""
    from crs.eval.problems import check_files, member_configs
    from crs.eval.sources import resolve_sources

    check_eval_values(cfg)
    benches = member_configs(cfg, choice, compose, overrides)
    check_files(benches)
    targets = resolve_sources(cfg)
    return targets, benches


def _load(cfg: DictConfig, target):
    """Model and tokenizer of a target on the eval device (LoRA adapters merged)."""
    import torch

    from crs.assemble import load_model, resolve_model_path

    path = target.path
    if path is None:
        path, _ = resolve_model_path(cfg)
        target.path = path
    model, tok = load_model(cfg, path)
    if target.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, target.adapter).merge_and_unload()
    device = cfg.eval.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), tok, device


def score(problems, gens) -> list:
    from crs.eval.metrics import ProblemResult

    out = []
    for gold, g in zip(problems.answers, gens):
        graded = [problems.grader.grade(t, gold) for t in g.samples]
        ge, gc = problems.grader.grade(g.greedy, gold) if g.greedy is not None else (None, None)
        out.append(
            ProblemResult([c for _, c in graded], [e for e, _ in graded], gc, ge, g.truncated, g.tokens)
        )
    return out


def run_eval(cfg: DictConfig, targets, benches) -> list:
    """Score every target on every benchmark; returns :class:`crs.eval.report.Result` rows."""
    import torch

    from crs.eval import cache
    from crs.eval.metrics import ProblemResult, summarize
    from crs.eval.problems import load_problems
    from crs.eval.report import Result
    from crs.eval.sampling import generate_all

    e = cfg.eval
    if e.num_threads:
        torch.set_num_threads(int(e.num_threads))
    problem_sets = [load_problems(name, b, e.n_problems) for name, b in benches]  # data errors first
    sampling = {k: OmegaConf.select(e, k) for k in SAMPLING_KEYS}
    cache_dir = Path(cfg.paths.cache_dir)
    results = []
    for target in targets:
        model = tok = None
        for probs in problem_sets:
            if model is None:
                model, tok, device = _load(cfg, target)
                mhash = cache.model_hash(
                    target.path if Path(str(target.path)).is_dir() else None, target.adapter
                )
                if not Path(str(target.path)).is_dir():
                    mhash = f"hub:{target.path}"
            key = cache.cache_key(mhash, probs.config, e.n_problems, {**sampling, "device": device})
            hit = cache.load(cache_dir, key) if e.cache else None
            if hit is not None:
                per = [ProblemResult(**p) for p in hit["problems"]]
            else:
                gens = generate_all(
                    model, tok, probs.prompts, label=f"{target.label} · {probs.name}", **sampling
                )
                per = score(probs, gens)
                cache.store(
                    cache_dir,
                    key,
                    {
                        "model": mhash,
                        "benchmark": probs.name,
                        "sampling": sampling,
                        "problems": [p.as_dict() for p in per],
                        "samples": [g.samples[:2] for g in gens[:4]],
                    },
                )
            results.append(Result(target, probs.name, summarize(per, list(e.k)), cached=hit is not None))
        del model
    return results


def evaluate(cfg: DictConfig, choice: str | None, compose, overrides: list[str]) -> list:
    """Prepare, score, print the tables, log to MLflow; returns the results."""
    from crs.eval.report import groups_table, log_results, results_table
    from crs.progress import console

    targets, benches = prepare(cfg, choice, compose, overrides)
    results = run_eval(cfg, targets, benches)
    from rich.console import Console

    # a pipe or a log file gets rich's 80 columns, too few for the intervals: give it room
    out = console if console.is_terminal else Console(width=160)
    out.print(results_table(results, cfg.eval.n, list(cfg.eval.k)))
    if len({r.target.group for r in results if r.target.group}) and len(targets) > 1:
        out.print(groups_table(results, f"avg@{cfg.eval.n}"))
    params = {
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "benchmarks": ",".join(n for n, _ in benches),
    }
    runs = log_results(results, OmegaConf.to_container(cfg.tracking, resolve=True), cfg.eval.log_to, params)
    if runs:
        console.print(
            f"crs eval: logged eval/<benchmark>/* to {len(runs)} MLflow run(s): {', '.join(r[:8] for r in runs)}"
        )
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> Any:
    """Hydra entry point: a ConfigError is one line on stderr and exit 2."""
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    try:
        return evaluate(
            cfg,
            hc.runtime.choices.get("benchmark"),
            lambda ov: hydra_compose(config_name="eval", overrides=ov),
            overrides,
        )
    except ConfigError as err:
        from crs.progress import error_line

        error_line(str(err))
        sys.exit(2)
