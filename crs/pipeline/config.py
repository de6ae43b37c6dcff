"""The pipeline config's schema: every field of ``crs/pipeline/conf/<name>.yaml`` with its help text.

A pipeline is a list of stages; each stage is a ``crs train`` config given as overrides (so every group
and option of ``crs train`` works inside a stage) plus what the stage runner adds (the models it reads by
path, its MLflow parent). Registered in Hydra's ConfigStore as ``base_pipeline``, so a typo is one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crs.fields import help_field as _f

STAGES = ("teacher_rl", "fkl", "on_policy", "student_rl")
OPD_ESTIMATORS = ("sampled_pg", "full_rkl")


@dataclass
class FKLSettings:
    estimator: str = _f(
        "full",
        "Stage 2a estimator of KL(π_T‖π_S) on teacher samples: full = TRL GKDTrainer's full-vocabulary "
        "forward KL (beta=0; exact per position, default); sampled = SFT on the teacher's tokens (equal up "
        "to the teacher entropy in expectation, one forward less, noisier).",
    )
    max_steps: int = _f(100, "Optimizer steps of stage 2a.")
    batch_size: int = _f(32, "Teacher samples (prompts) per step.")
    lr: float = _f(3e-4, "AdamW learning rate of stage 2a (toy models need large rates).")


@dataclass
class OPDSettings:
    estimator: str = _f(
        "sampled_pg",
        "Stage 2b estimator: sampled_pg = crs GRPO with per-token a_t = log π_T − log π_S as the advantage "
        "and TRL's PPO clip as the trust region (default: the paper's 'local trust-region update'; a "
        "one-sampled-token estimate of the reverse-KL gradient per position, kept small by the clip); "
        "full_rkl = TRL DistillationTrainer with beta=1 (crs/trainers/distill.py): the exact full-vocabulary "
        "reverse KL(π_S‖π_T) gradient on the student's own samples, no clip and no advantage, one no-grad "
        "teacher forward per step. full_rkl reads its steps, lr, completions per step (one per prompt), "
        "temperature and length from the on_policy stage's trainer.* (no settings of its own), so the two "
        "estimators run the same budget and the size presets apply to both; its prompts are stage 2a's "
        "(generated, prompt column only).",
    )
    reward: str = _f("k1", "Per-token reward estimator (method.credit.opd.reward): k1 (unbiased) or k3.")


@dataclass
class EvalSettings:
    prompts: int = _f(
        128, "Held-out prompts every stage's output model is scored on (the benchmark's eval split)."
    )
    k: int = _f(4, "Samples per prompt: pass@1 = mean over k samples, pass@k = any of k (temperature 1).")
    max_new_tokens: int = _f(48, "Generation budget of the held-out evaluation.")


@dataclass
class PipelineTracking:
    uri: str | None = _f(None, "MLflow tracking URI (null = sqlite:///<cwd>/mlflow.db, like crs train).")
    experiment: str = _f("crs", "MLflow experiment of the parent run and every stage run.")


@dataclass
class PipelineConfig:
    name: str = _f("sparse_to_dense", "Pipeline name (MLflow parent run name and folder prefix).")
    seed: int = _f(0, "Seed of every stage (data, init, sampling); the labeled set L is a function of it.")
    skip: list[str] = _f(
        [],
        "Stages not run (the paper's ablations): [fkl] = no FKL warm-up, [on_policy] = no OPD, [teacher_rl] = "
        "raw teacher; [teacher_rl, fkl, on_policy] with student_rl=true = GRPO on the student directly.",
    )
    student_rl: bool = _f(
        False,
        "Also run the optional stage 3, GRPO of the (bridged) student on the labeled set (off by default, as "
        "in the paper's main comparison); with every other stage skipped it is the direct-GRPO baseline.",
    )
    student_rl_labels: str = _f(
        "fresh",
        "Labels of stage 3 after the bridge: fresh = a held-out labeled set L′ of the same size (the paper's "
        "stage 3: new labels, data_seed = seed + 7919); replay = the stage-1 set L again (the matched replay "
        "control, arXiv 2605.12483 §3.4: same steps, no new labels; which control the authors ran is not "
        "published, this one isolates the value of new labels). The direct-GRPO baseline always uses L.",
    )
    arm: str | None = _f(None, "Label of this pipeline in a comparison (tag sweep.arm); null = from skip.")
    labeled: int = _f(
        256, "Labeled budget L: RL prompts (with answers) of the RL stages (benchmark.n_train)."
    )
    unlabeled: int = _f(
        4000, "Prompts of the distillation stages (generated; stage 2a never sees an answer column)."
    )
    root: str = _f(
        "outputs/pipelines", "Where stage folders live; a stage's folder is named by its content key."
    )
    common: list[str] = _f([], "crs train overrides added to every stage.")
    stages: dict[str, list[str]] = _f(
        {}, "Per stage: its crs train overrides (teacher_rl, fkl, on_policy, student_rl)."
    )
    sized: dict[str, list[str]] = _f({}, "The size preset's overrides (pipeline/size: common and per stage).")
    fkl: FKLSettings = field(default_factory=FKLSettings)
    opd: OPDSettings = field(default_factory=OPDSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    tracking: PipelineTracking = field(default_factory=PipelineTracking)
    sweep: dict[str, Any] = _f({}, "Set by `crs pipeline sweep`: the sweep parent this pipeline reports to.")


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_pipeline", node=PipelineConfig)
