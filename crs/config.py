"""Structured-config schemas for every Hydra group, and the semantic checks run before any model loads.

YAML in ``conf/`` is the user surface; each option extends a schema registered here
(``defaults: [base_<group>, _self_]``), so a typo (``trainer.lrr=1``) or a wrong type
(``trainer.lr=abc``) fails at composition. Value checks that types cannot express (``trainer.lr=-1``)
live in :func:`validate` and raise :class:`~crs.errors.ConfigError` with one line naming the key.

Every field carries a help text (TRL style) naming the paper and the trade-off; ``crs train --cfg job``
shows the resolved values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from crs.checks import check_field_ranges, check_names, trl_config_fields
from crs.embedded import EmbeddedModelConfig
from crs.errors import ConfigError, did_you_mean
from crs.fields import help_field as _f
from crs.rollout import GENERATIONS
from crs.steps.settings import StepsConfig

# ---------------------------------------------------------------------------------------------------
# groups


@dataclass
class MethodConfig:
    name: str = _f(MISSING, "Method name (tag in MLflow).")
    credit: dict[str, Any] = _f(
        {},
        "Ordered credit steps {step: {args..., drive: {knob, neutral}}} applied to TRL's advantages/loss mask "
        "(crs/credit/). Empty = plain GRPO. The schedule drives `knob` as neutral + (value − neutral)·ρ.",
    )
    description: str = _f("", "One line: the paper and the idea.")
    source: str | None = _f(
        None,
        "A Python file that defines METHOD = crs.credit.method.Method(...) (or METHODS), loaded before the "
        "config check, so a method can be tried without editing crs (docs/adding-a-method.md).",
    )
    steps: StepsConfig = field(
        default_factory=StepsConfig,
        metadata={
            "help": "Step segmentation and step scorer for step-level methods (pure, capo, oprl; crs/steps)."
        },
    )


@dataclass
class ScheduleConfig:
    name: str = _f(MISSING, "Shape: constant, linear, cosine, sigmoid, gamma, step (crs/schedules.py).")
    m: float = _f(0.99, "Magnitude m: ρ held before `start` (RLVR-Schedule initial_schedule_magnitude=0.99).")
    start: float = _f(0.0, "Fraction of training where ρ starts to move (min_schedule_ratio; paper: 0).")
    end: float = _f(
        0.8, "Fraction of training where ρ reaches 0 (max_schedule_ratio; paper: 0.8, last 20% = plain GRPO)."
    )
    invert: bool = _f(False, "Mirror in time: ρ rises from 0 instead of falling (e.g. to phase a method in).")
    k: float = _f(8.0, "sigmoid steepness (hard-coded 8 in the authors' code).")
    gamma: float = _f(2.0, "gamma shape exponent: ρ = (m(1−p))^γ (authors' default 2).")
    milestones: list[float] = _f([], "step shape: schedule-progress points where the value changes.")
    values: list[float] = _f([], "step shape: value from each milestone on.")


@dataclass
class TrainerConfig:
    kind: str = _f(
        "grpo",
        "Which TRL trainer crs wraps (crs/trainers/): grpo = GRPOTrainer. A method declares the kinds it "
        "supports; a wrong pair is one error line before any model loads.",
    )
    max_steps: int = _f(300, "Optimizer steps. The schedule clock is global_step / max_steps.")
    per_device_train_batch_size: int = _f(
        64,
        "Completions (not prompts) per device per micro-step; prompts/step = this × accumulation / num_generations.",
    )
    num_generations: int = _f(
        8, "Group size G: completions per prompt for the group-relative baseline (GRPO)."
    )
    gradient_accumulation_steps: int = _f(
        1,
        "Micro-steps per optimizer step. The token_mean divisor and forking's selected-token normaliser count the "
        "trained tokens of all micro-batches of one optimizer step, over all processes (verl's token-mean; "
        "CreditGRPOTrainer._token_mean_items), so any value gives the one-batch loss.",
    )
    steps_per_generation: int | None = _f(
        None,
        "Micro-steps served from one rollout (TRL default: = gradient_accumulation_steps, i.e. on-policy).",
    )
    num_iterations: int = _f(
        1, "μ: PPO epochs over each rollout (>1 makes the ratio/clip matter; GRPO paper)."
    )
    lr: float = _f(1e-4, "Learning rate (AdamW). Toy models need far more than the 1e-6 used for 4B models.")
    lr_scheduler_type: str = _f("constant", "transformers LR schedule (constant, linear, cosine, ...).")
    warmup_steps: float = _f(
        0, "LR warm-up: an integer number of steps, or a float in (0, 1) as a fraction of max_steps."
    )
    weight_decay: float = _f(0.0, "AdamW weight decay (DAPO/80-20 recipes: 0.1).")
    adam_beta1: float = _f(
        0.9, "AdamW β1. Small batches give noisy policy gradients; heavier momentum (0.98) averages them out."
    )
    adam_beta2: float = _f(0.999, "AdamW β2 (DAPO/80-20 recipes: 0.99... 0.999).")
    max_grad_norm: float = _f(1.0, "Gradient clipping.")
    beta: float = _f(
        0.0,
        "KL coefficient to the reference model (k3 estimator). 0 = no reference model (DAPO, Dr.GRPO, paper).",
    )
    epsilon: float = _f(0.2, "PPO clip ε_low (GRPO 0.2; GSPO 3e-4).")
    epsilon_high: float | None = _f(None, "Clip ε_high; null = ε_low. DAPO clip-higher: 0.28; GSPO 4e-4.")
    loss_type: str = _f(
        "token_mean",
        "Loss aggregation. token_mean: verl's token-mean, Σℓ over the trained tokens of the optimizer step "
        "divided by their global count (all micro-batches, all processes) — what RLVR-Schedule, DAPO and "
        "the 80/20 paper train with, TRL's dapo normaliser made exact; grpo: DeepSeekMath per-sequence mean, "
        "then mean over sequences (a one-token TP suffix weighs as much as a whole response); bnpo: "
        "micro-batch token mean; dr_grpo: constant B·L_max normaliser; dapo: = token_mean (TRL's name); "
        "opmd: R³L's OPMD, −A·log π token-mean × 1/(1+opmd_tau), no ratio or clip.",
    )
    opmd_tau: float = _f(
        1.0,
        "OPMD regulariser τ (R³L opmd_policy_loss.py): the loss is scaled by 1/(1+τ). loss_type=opmd only.",
    )
    scale_rewards: str = _f("group", "Advantage scaling: group (GRPO std), batch (Lite-PPO), none (Dr.GRPO).")
    importance_sampling_level: str = _f(
        "token", "token = per-token ratio (GRPO); sequence = GSPO's length-normalised sequence ratio."
    )
    mask_truncated_completions: bool = _f(
        False, "DAPO overlong filtering: truncated completions get no loss."
    )
    filter_zero_std_groups: bool = _f(
        False,
        "DAPO dynamic sampling, filter half: groups whose rewards are all equal leave the loss and its "
        "normaliser. The refill half (over-sampling prompts until the batch is full) is not implemented.",
    )
    soft_overlong_cache: int | None = _f(
        None,
        "DAPO soft overlong punishment: extra reward term, linear penalty over the last L_cache tokens before "
        "max_completion_length (TRL get_soft_overlong_punishment). null = off.",
    )
    temperature: float = _f(1.0, "Sampling temperature (also divides logits for log-probs and entropies).")
    top_p: float = _f(1.0, "Nucleus sampling.")
    max_completion_length: int = _f(48, "Max new tokens per completion.")
    eval_steps: int = _f(0, "Evaluate on the held-out split every N steps (0 = only at start/end).")
    eval_on_start: bool = _f(True, "Evaluate before the first update (the baseline of every learning curve).")
    num_generations_eval: int = _f(4, "Samples per eval prompt; eval_accuracy is pass@1 averaged over them.")
    eval_prompts: int = _f(64, "Held-out prompts used per evaluation (≤ benchmark eval split).")
    device: str = _f("auto", "auto (cuda if available), cpu or cuda.")
    precision: str = _f(
        "auto",
        "auto, fp32, bf16, fp16 (mixed precision: fp32 weights, autocast compute). auto = fp32 on CPU and for "
        "models under 100M parameters on GPU (launch-bound: bf16 buys no speed, and its 8-bit mantissa blurs "
        "log-prob ratios and sampling of tiny models), bf16 on a bf16-capable GPU above that (crs/precision.py).",
    )
    cudnn_attention: bool = _f(
        False,
        "Allow PyTorch's cuDNN attention kernel on CUDA. Off: its backward gave non-finite gradients on a "
        "left-padded bf16 batch (H200, torch 2.11), which NaN'd every weight (crs/precision.py); flash, "
        "memory-efficient and math kernels still serve attention.",
    )
    generation: str = _f(
        "hf",
        "Rollout engine (crs/rollout): hf = TRL's model.generate (dynamic KV cache); hf_static = the same with "
        "transformers' static cache; static = crs's static-cache decoder, the decode step replayed as a CUDA "
        "graph on GPUs (same sampling semantics, several times faster steps there; eager on CPU); vllm = TRL's "
        "vLLM integration (needs vllm installed; see trainer.vllm_mode).",
    )
    vllm_mode: str = _f(
        "colocate",
        "generation=vllm only: colocate (vLLM inside each training process, shares the GPU; TRL "
        "vllm_gpu_memory_utilization via trainer.extra) or server (a separate `trl vllm-serve` process; "
        "trainer.extra.vllm_server_base_url).",
    )
    num_threads: int | None = _f(
        None,
        "torch CPU threads; null = cores / concurrent jobs (SLURM_CPUS_PER_TASK or local launcher n_jobs).",
    )
    gradient_checkpointing: bool = _f(False, "Trade compute for memory on large models.")
    save_model: bool = _f(False, "Save the final policy (and LoRA adapter) into the job's output folder.")
    extra: dict[str, Any] = _f({}, "Any other GRPOConfig field, passed through unchanged (checked by name).")


@dataclass
class LoraSettings:
    enabled: bool = _f(False, "Train a LoRA adapter (PEFT) instead of all weights.")
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha (scale = alpha / r).")
    dropout: float = _f(0.0, "LoRA dropout.")
    target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get adapters.")


@dataclass
class ModelConfig:
    name: str = _f(MISSING, "Model tag in MLflow.")
    name_or_path: str | None = _f(
        None, "Hub id or local folder (transformers from_pretrained). null = the embedded model crs builds."
    )
    dtype: str = _f("auto", "Weights dtype: auto, float32, bfloat16, float16.")
    trust_remote_code: bool = _f(False, "Allow custom model code from the hub.")
    lora: LoraSettings = field(default_factory=LoraSettings)
    embedded: EmbeddedModelConfig = field(
        default_factory=EmbeddedModelConfig,
        metadata={
            "help": "How crs builds its own model (tokenizer, toy Qwen2, SFT warm-start) when name_or_path is null."
        },
    )


@dataclass
class HFDatasetConfig:
    name: str = _f("hf", "Registry name of the loader (crs/benchmarks/hf.py).")
    path: str = _f(MISSING, "Hub dataset id, local folder, or a .jsonl/.json/.parquet/.csv file.")
    subset: str | None = _f(None, "Dataset config name (e.g. gsm8k: main).")
    train_split: str = _f("train", "Split used for RL prompts.")
    eval_split: str = _f("test", "Held-out split for evaluation.")
    question_field: str = _f("question", "Column with the problem text.")
    answer_field: str = _f("answer", "Column with the reference answer.")
    answer_format: str = _f(
        "raw",
        "How to read the reference: raw, gsm8k (text after '####'), boxed (last \\boxed{} in a solution), "
        "list (the first element of a list column: OlympiadBench's final_answer), gpqa (four choices "
        "shuffled into the question by a seed from its text; the reference is the letter).",
    )
    prompt_template: str = _f(
        "{question}\nPut your final answer within \\boxed{{}}.", "User message; {question} is replaced."
    )
    system_prompt: str | None = _f(None, "Optional system message.")
    chat: bool = _f(True, "Conversational prompts (chat template) instead of plain text.")
    n_train: int | None = _f(None, "Cap on training prompts (null = all), shuffled with the run seed.")
    n_eval: int | None = _f(200, "Cap on eval prompts (first N; fixed across seeds).")


@dataclass
class TrackingConfig:
    name: str = _f(MISSING, "mlflow or none (a null tracker).")
    uri: str | None = _f(
        None,
        "MLflow tracking URI; null = sqlite:///<launch dir>/mlflow.db. http://host:port for a shared server.",
    )
    experiment: str = _f("crs", "MLflow experiment name.")
    run_name: str | None = _f(None, "Run name; null = <method>-<schedule>-s<seed> (+ overrides in sweeps).")
    sample_steps: int = _f(
        4, "Steps (evenly spaced, first and last included) whose rollouts are saved as JSON."
    )
    sample_size: int = _f(8, "Completions saved per sampled step.")


@dataclass
class DiagnosticsConfig:
    every: int = _f(
        5, "Every N steps log entropy and post-update KL to the rollout policy per trajectory-percentile bin."
    )
    bins: int = _f(10, "Number of trajectory-percentile bins (relative position t / L_i).")
    kl: bool = _f(
        True, "Measure per-bin KL after the update (one extra no-grad forward every `every` steps)."
    )
    heatmap: bool = _f(True, "Draw percentile × step heatmaps as PNG artifacts at the end of the run.")


@dataclass
class RunsConfig:
    checkpoint_every: int = _f(
        -1,
        "Save a resumable checkpoint (model, optimizer, scheduler, RNG, data position, crs samples) every N "
        "optimizer steps; -1 = auto: every ceil(max_steps/10) steps, so a killed run loses at most ~10% of its "
        "steps (step-based, so the cadence is the same on any machine); 0 = never. Cost: one save of the "
        "weights and optimizer state (≈3× the model size) each time.",
    )
    keep: int = _f(2, "Complete checkpoints kept per run (the newest); older ones are deleted.")
    keep_on_finish: bool = _f(
        False,
        "Keep the checkpoints of a FINISHED run (off: deleted at the end; save the policy with trainer.save_model).",
    )
    heartbeat_s: float = _f(30.0, "Seconds between heartbeats (MLflow tag crs.heartbeat); 0 = off.")
    stale_after_s: float = _f(
        600.0, "A RUNNING run whose heartbeat is older than this is dead (crs compare / crs runs clean)."
    )
    check_finite: bool = _f(
        True,
        "Stop the run (FAILED) at the first non-finite loss, gradient, advantage, logit or parameter. One "
        "reduction per forward/step; turn off only to measure its cost.",
    )
    collapse_steps: int = _f(
        5, "Warn when token entropy is near ln|V| with reward 0 for this many logged steps (0 = off)."
    )


@dataclass
class PathsConfig:
    cache_dir: str = _f("${oc.env:CRS_CACHE_DIR,${oc.env:HOME}/.cache/crs}", "Embedded model cache.")
    output_dir: str = _f("${hydra:runtime.output_dir}", "This job's folder (Hydra).")


def register_configs() -> None:
    """Register every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(group="method", name="base_method", node=MethodConfig)
    cs.store(group="schedule", name="base_schedule", node=ScheduleConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="tracking", name="base_tracking", node=TrackingConfig)
    cs.store(group="benchmark", name="base_hf", node=HFDatasetConfig)
    from crs.benchmarks.arithmetic import ArithmeticConfig

    cs.store(group="benchmark", name="base_arithmetic", node=ArithmeticConfig)
    cs.store(name="base_diagnostics", node=DiagnosticsConfig, package="diagnostics")
    cs.store(name="base_paths", node=PathsConfig, package="paths")
    cs.store(name="base_runs", node=RunsConfig, package="runs")
    _register_resolvers()


def _register_resolvers() -> None:
    """``${crs_uid:}``: a short random id, cached per config like Hydra's ``${now:}``, so two jobs
    launched in the same second never share an output folder."""
    import secrets

    if not OmegaConf.has_resolver("crs_uid"):
        OmegaConf.register_new_resolver("crs_uid", lambda: secrets.token_hex(3), use_cache=True)


# ---------------------------------------------------------------------------------------------------
# semantic checks (run before any model or dataset loads)

_CHOICES = {
    "trainer.loss_type": ("token_mean", "grpo", "bnpo", "dr_grpo", "dapo", "opmd"),
    "trainer.scale_rewards": ("group", "batch", "none"),
    "trainer.importance_sampling_level": ("token", "sequence"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.precision": ("auto", "fp32", "bf16", "fp16"),
    "trainer.generation": GENERATIONS,
    "trainer.vllm_mode": ("colocate", "server"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "tracking.name": ("mlflow", "none"),
}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


VALIDATED: dict[str, Any] = {}  # config text -> its credit chain: one validation per config and process


def validate(cfg: DictConfig):
    """Check values that types cannot; raise :class:`ConfigError` naming the key and what is accepted.

    Returns the run's :class:`~crs.methods.chain.CreditChain`, built here once: the CLI's early check
    and the run itself share it (a second call with the same config returns it without re-checking).
    """
    import os

    key = OmegaConf.to_yaml(cfg, resolve=False) + f"WORLD_SIZE={os.environ.get('WORLD_SIZE', '1')}"
    if key not in VALIDATED:
        VALIDATED[key] = _validate(cfg)
    return VALIDATED[key]


def validate_values(cfg: DictConfig) -> None:
    """Every check of :func:`validate` that needs no method module (so no torch): names, choices,
    trainer/schedule/runs values, the trainer kind. The CLI runs it, then the resource checks, then
    :func:`validate`."""
    check_names(OmegaConf.to_container(cfg, resolve=False))
    seed = cfg.get("seed")
    _check(
        isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32,
        f"seed must be an integer in [0, 2^32) (got {seed!r})",
    )
    data_seed = cfg.get("data_seed")
    _check(
        data_seed is None
        or (isinstance(data_seed, int) and not isinstance(data_seed, bool) and data_seed >= 0),
        f"data_seed must be null or an integer >= 0 (got {data_seed!r})",
    )
    for key, choices in _CHOICES.items():
        val = OmegaConf.select(cfg, key)
        _check(val in choices, f"{key} must be one of {', '.join(choices)} (got {val!r})")
    t = cfg.trainer
    _check(t.lr > 0, f"trainer.lr must be > 0 (got {t.lr})")
    _check(t.max_steps >= 1, f"trainer.max_steps must be >= 1 (got {t.max_steps})")
    _check(
        t.num_generations >= 2,
        f"trainer.num_generations must be >= 2 for a group baseline (got {t.num_generations})",
    )
    _check(t.per_device_train_batch_size >= 1, "trainer.per_device_train_batch_size must be >= 1")
    _check(t.gradient_accumulation_steps >= 1, "trainer.gradient_accumulation_steps must be >= 1")
    spg = t.steps_per_generation or t.gradient_accumulation_steps
    _check(
        (t.per_device_train_batch_size * spg) % t.num_generations == 0,
        f"trainer.per_device_train_batch_size × steps_per_generation ({t.per_device_train_batch_size}×{spg}) must be "
        f"divisible by trainer.num_generations ({t.num_generations})",
    )
    _check(t.temperature > 0, f"trainer.temperature must be > 0 (got {t.temperature})")
    _check(0 < t.top_p <= 1, f"trainer.top_p must be in (0, 1] (got {t.top_p})")
    _check(t.max_completion_length >= 1, "trainer.max_completion_length must be >= 1")
    _check(t.beta >= 0, f"trainer.beta must be >= 0 (got {t.beta})")
    _check(t.epsilon > 0, f"trainer.epsilon must be > 0 (got {t.epsilon})")
    _check(t.opmd_tau >= 0, f"trainer.opmd_tau must be >= 0 (got {t.opmd_tau})")
    _check(t.epsilon_high is None or t.epsilon_high > 0, "trainer.epsilon_high must be > 0 or null")
    _check(
        t.warmup_steps >= 0, "trainer.warmup_steps must be >= 0 (steps, or a fraction of max_steps if < 1)"
    )
    _check(0 <= t.adam_beta1 < 1 and 0 <= t.adam_beta2 < 1, "trainer.adam_beta1/adam_beta2 must be in [0, 1)")
    _check(t.num_iterations >= 1, "trainer.num_iterations must be >= 1")
    _check(t.eval_steps >= 0, "trainer.eval_steps must be >= 0")
    _check(t.num_generations_eval >= 1, "trainer.num_generations_eval must be >= 1")
    _check(
        t.soft_overlong_cache is None or 0 < t.soft_overlong_cache < t.max_completion_length,
        "trainer.soft_overlong_cache must be null or in (0, max_completion_length)",
    )
    if t.generation == "vllm":
        from crs.rollout import vllm_available

        _check(
            vllm_available(),
            "trainer.generation=vllm needs the vllm package (pip install vllm, on a CUDA machine); "
            "use trainer.generation=static otherwise",
        )
    if t.extra:
        from crs.trainers import TRAINERS

        kind = TRAINERS.get(t.kind)
        known, cls = trl_config_fields(kind.trl_class) if kind else (None, "GRPOConfig")
        for key in t.extra:
            _check(
                known is None or key in known,
                f"trainer.extra.{key} is not a {cls} field{did_you_mean(str(key), known or ())}",
            )
    s = cfg.schedule
    from crs.schedules import SCHEDULES, check_schedule, schedule_from_cfg

    _check(
        s.name in SCHEDULES, f"schedule.name must be one of {', '.join(sorted(SCHEDULES))} (got {s.name!r})"
    )
    _check(
        0 <= s.start < 1 and 0 < s.end <= 1,
        f"schedule.start/end must be fractions of training (got {s.start}, {s.end})",
    )
    check_schedule(s)
    try:
        schedule_from_cfg(s)
    except ValueError as err:
        raise ConfigError(f"schedule: {err}") from None
    from crs.trainers import TRAINERS

    _check(t.kind in TRAINERS, f"trainer.kind must be one of {', '.join(TRAINERS)} (got {t.kind!r})")
    needs = TRAINERS[t.kind].needs_method
    _check(
        not needs or bool(cfg.method.get("credit")),
        f"trainer.kind={t.kind} needs {needs} (got method={cfg.method.get('name')})",
    )
    r = cfg.get("runs")
    if r is not None:
        _check(
            r.checkpoint_every >= -1,
            f"runs.checkpoint_every must be -1 (auto), 0 (never) or a number of steps (got {r.checkpoint_every})",
        )
        _check(r.keep >= 1, f"runs.keep must be >= 1 (got {r.keep})")
        _check(
            r.heartbeat_s >= 0 and r.stale_after_s > 0,
            "runs.heartbeat_s must be >= 0 and runs.stale_after_s > 0",
        )
        _check(r.collapse_steps >= 0, "runs.collapse_steps must be >= 0")
    resume = cfg.get("resume", "auto")
    _check(
        isinstance(resume, str) and bool(resume),
        f"resume must be auto, never or a checkpoint folder (got {resume!r})",
    )
    if resume not in ("auto", "never"):
        from pathlib import Path

        _check(
            Path(resume).expanduser().exists(),
            f"resume: no such checkpoint folder {resume!r} (or use auto / never)",
        )
    check_field_ranges(cfg)
    d = cfg.diagnostics
    _check(d.every >= 0 and d.bins >= 1, "diagnostics.every must be >= 0 and diagnostics.bins >= 1")
    if cfg.get("inject_failure_at_step") is not None:
        _check(cfg.inject_failure_at_step >= 0, "inject_failure_at_step must be >= 0 or null")


def _validate(cfg: DictConfig):
    validate_values(cfg)
    from crs.methods import load_source
    from crs.methods.chain import CreditChain

    if cfg.method.get("source"):
        load_source(cfg.method.source)  # a method defined in the user's own file
    chain = CreditChain(cfg.method.credit)  # raises ConfigError on unknown steps/arguments
    from crs.steps.hook import validate_steps

    validate_steps(cfg, chain)  # method.steps: scorer, vote, a process verifier where one is needed
    chain.check_run(cfg)  # each method's declarations: trainer kind, benchmark kind, processes, own checks
    return chain
