"""A controlled bifurcation task: a known, small, early set of tokens decides success.

Credit-assignment methods claim to put the learning signal "where it belongs"; this task makes *where*
known. The prompts and the policy are the embedded arithmetic task's (same format, same warm-started
model), but the reward is decided by the **first step's result** alone::

    prompt:      "Q: 7+5-3+8\\nA:"
    completion:  " 7+5=12, 12-3=9, 9+8=17. Answer: 17"      reward 1 iff the first step "7+5=12" is right
                        ^^ decisive tokens (the digits of the first result)

Everything before the decisive digits is a near-deterministic copy of the prompt (the warm-started
policy's entropy there is ≈ 0); everything after is irrelevant to the reward. The decisive positions of
every completion are known (:func:`decisive_spans`), so the *credit-localization* metrics
(:mod:`crs.steps.localization`) can measure which share of the advantage mass and of the policy change
lands on them. The survey arXiv 2604.09459 asks for exactly such "controlled bifurcation tasks".

Example::

    crs train benchmark=bifurcation method=pure diagnostics.every=1
    crs compare --last            # loc/adv_share, loc/kl_share per method
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from datasets import Dataset

from crs.benchmarks import Benchmark, register_benchmark
from crs.benchmarks.arithmetic import (
    _STEP_RE,
    PROMPT_TEMPLATE,
    ArithmeticConfig,
    _text,
    eval_problems,
    sample_problems,
    sft_dataset,
    step_scores,
)


def first_step(completion: str, prompt: str) -> tuple[bool, tuple[int, int] | None]:
    """``(correct, (char_start, char_end) of the first step's result)`` of a completion.

    The first step must be the first thing written: ``a op b=c`` with the prompt's first operation and
    ``c`` right. No parsable step → ``(False, None)``.
    """
    m = _STEP_RE.search(completion)
    if m is None or completion[: m.start()].strip():
        return False, None
    scores = step_scores(completion, {"prompt": prompt})
    return bool(scores and scores[0][2] == 1.0), (m.start(4), m.end(4))


def decisive_spans(completion: Any, row: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Char spans of the decisive tokens: the digits of the first step's result (empty if none)."""
    _, span = first_step(_text(completion), str(row.get("prompt", "")))
    return [span] if span is not None else []


def first_step_reward(
    prompts: list[Any],
    completions: list[Any],
    log_metric: Callable[[str, float], None] | None = None,
    **kwargs: Any,
) -> list[float]:
    """TRL reward: 1.0 iff the first written step is the prompt's first operation, computed right."""
    scores = [
        1.0 if first_step(_text(c), _text(p))[0] else 0.0 for p, c in zip(prompts, completions, strict=True)
    ]
    if log_metric is not None and scores:
        log_metric("accuracy", sum(scores) / len(scores))
    return scores


first_step_reward.__name__ = "first_step"


def verify(completion: str, answer: str) -> bool:
    """Lenient check used outside the trainer: the first written result equals ``answer``."""
    m = _STEP_RE.search(_text(completion))
    return m is not None and m.group(4) == str(answer).strip()


def _to_dataset(problems) -> Dataset:
    return Dataset.from_dict(
        {"prompt": [p.prompt for p in problems], "answer": [str(p.results()[0]) for p in problems]}
    )


@register_benchmark("bifurcation")
def build(cfg: Mapping[str, Any], seed: int) -> Benchmark:
    """The arithmetic task's prompts with a first-step reward; ``answer`` = the first step's result."""
    acfg = ArithmeticConfig.from_mapping({**dict(cfg), "name": "bifurcation"})
    ev = eval_problems(acfg)
    train = sample_problems(acfg.n_train, "train", seed, acfg, exclude=[p.prompt for p in ev])
    return Benchmark(
        name="bifurcation",
        train=_to_dataset(train),
        eval=_to_dataset(ev),
        reward_funcs=[first_step_reward],
        verify=verify,
        sft=functools.partial(sft_dataset, cfg=acfg),
        decisive=decisive_spans,
        info={"config": asdict(acfg), "format": PROMPT_TEMPLATE, "decisive": "digits of the first result"},
    )
