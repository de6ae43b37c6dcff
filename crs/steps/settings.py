"""``method.steps``: how completions are cut into steps and which scorer scores them (schema + help texts).

Kept free of torch imports: :mod:`crs.config` imports it to build the Hydra schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crs.fields import help_field as _f


@dataclass
class BuildSettings:
    """How crs builds a small scorer for the embedded task from the policy's own rule-labelled samples."""

    n_prompts: int = _f(
        768, "Training prompts sampled from the task (their own stream, never the eval split)."
    )
    samples_per_prompt: int = _f(4, "Policy samples per prompt (temperature 1): the PRM/judge training data.")
    train_steps: int = _f(
        600, "Optimizer steps of the build (AdamW, batch 32, cosine). Linear in build time."
    )
    lr: float = _f(2e-3, "Peak learning rate of the build (toy models tolerate large rates).")
    n_eval_prompts: int = _f(128, "Held-out prompts (eval split) for the step precision/recall report.")


@dataclass
class PRMSettings(BuildSettings):
    path: str | None = _f(
        None,
        "Local PRM checkpoint: *ForTokenClassification with 2 labels (PURE, TRL PRM format) or a causal LM "
        "(label tokens below). null = build a small one for the embedded task (cached).",
    )
    step_token: str = _f(
        "\n", "Token that replaces every step end in the PRM input (PURE: '\\n', TRL PRM default)."
    )
    good_token: str = _f(
        "+", "Causal-LM PRMs only: token whose probability means 'step correct' (Math-Shepherd)."
    )
    bad_token: str = _f("-", "Causal-LM PRMs only: token whose probability means 'step wrong'.")


@dataclass
class JudgeSettings(BuildSettings):
    path: str | None = _f(
        None, "Local causal-LM judge (writes 'Wrong step list:[i,j]'). null = build a small one (cached)."
    )
    critiques: int = _f(
        4, "CAPO k: critiques sampled per completion ([3P] default 4; 2→4→8 helps per the paper)."
    )
    vote: str = _f(
        "majority",
        "CAPO vote: majority (> k/2, as the authors' figure), intersection (best for 1B/1.5B policies per [3P]), union, average "
        "(fractional penalty; undefined in the paper, crs's reading).",
    )
    temperature: float = _f(1.0, "Judge sampling temperature (needs > 0 for several distinct critiques).")


@dataclass
class ImplicitSettings:
    beta: float = _f(0.05, "iStar β (beta_train): step reward β·Σ log π_φ/π_θold.")
    lr: float = _f(
        1e-4, "π_φ learning rate (AdamW, wd 0). iStar uses 1e-6 for 7B models; toy models need far more."
    )
    traj_agg: str = _f("mean", "Q_τ over steps: mean (iStar code) or sum (the paper's log π(τ)).")


@dataclass
class StepsConfig:
    separators: list[str] = _f(
        [",", "."],
        "A token ending with any of these ends a step (PURE: '\\n\\n' for real math). The embedded task's steps "
        "end with ',' and '.' ('7+5=12,' | '12-3=9.' | 'Answer: 9').",
    )
    scorer: str = _f(
        "rule",
        "Step scorer for step-level methods: rule (exact process verifier of the synthetic tasks), prm, judge "
        "(CAPO critiques), implicit (OPRL's online implicit PRM).",
    )
    prm: PRMSettings = field(default_factory=PRMSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    implicit: ImplicitSettings = field(default_factory=ImplicitSettings)
