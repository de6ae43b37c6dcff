"""R³L pivotal credit (arXiv 2601.03715; ``shiweijiezero/R3L`` Trinity-RFT workflows): masks and the step.

R³L reflects on a failed attempt, retries from the diagnosed pivot step, and trains **only the
diverging suffix** of both attempts: in the authors' trajectory-level workflow
(``R3L_workflow.py`` l.149-188, 272-279) the first ``pivot`` assistant segments — maximal runs of
``action_mask == 1``, i.e. turns — get ``action_mask = 0`` in the first attempt *and* in the retry, so
the shared prefix gets no gradient. :func:`~crs.methods.r3l.masks.pivot_suffix_mask` is that rule on crs's turn layout
(turn k = k-th run of ``completion_mask·tool_mask``); :func:`~crs.methods.r3l.masks.pivot_token_mask` is the single-turn
analogue (a token position instead of a turn). Positive amplification is the existing
``r3l_amplify`` step.

The ``r3l`` credit step (mask phase) multiplies the rollout's ``r3l_keep`` ``[B,T]`` tensor into the
loss mask; the reflect-then-retry *generation* that produces it is :mod:`crs.methods.r3l.single_turn` (single-turn,
the embedded arithmetic and bifurcation tasks: :func:`pivot_token_mask`) and :mod:`crs.methods.r3l.episodes`
(multi-turn, maze / calc_tool: the first attempt's actions before the pivot turn replayed in a fresh
environment; :func:`pivot_suffix_mask`)::

    crs train method=r3l
    crs train method=r3l benchmark=calc_tool

Not implemented: the step-level variant's asymmetric mask (base steps < pivot kept, one experience per
step) — TRL keeps an episode in one sequence.
"""

from __future__ import annotations

from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError
from crs.methods.r3l.episodes import retry_episodes
from crs.methods.r3l.masks import pivot_suffix_mask, pivot_token_mask  # noqa: F401  (re-exported)
from crs.methods.r3l.single_turn import SCORERS, R3LRetry, retry_slot_count


def r3l(
    batch: CreditBatch,
    rate: float = 1.0,
    retry_share: float = 0.5,
    guidance: str | None = None,
    pivotal: bool = True,
) -> CreditBatch:
    """R³L reflect-then-retry with pivotal credit (arXiv 2601.03715).

    The retries are generated at rollout time (:class:`R3LRollouts`, which reads ``rate``,
    ``retry_share`` and ``guidance``); this step only applies the pivotal mask: ``mask·r3l_keep``,
    where ``r3l_keep`` ``[B,T]`` is 0 on the shared prefix of each retry and of its first attempt
    (absent outside training rollouts: the mask is unchanged). ``pivotal: false`` = the authors'
    ``w/o_credit`` ablation (``r3l_keep`` is then all ones).
    """
    keep = batch.features.get("r3l_keep")
    if keep is None or not pivotal:
        return batch
    return batch.replace(mask=batch.mask * keep[:, : batch.mask.shape[1]].to(batch.mask))


class R3LRollouts(R3LRetry):
    """The ``rollouts`` hook's object: single-turn retries (:class:`R3LRetry`) plus replayed episodes."""

    def episodes(self, trainer, prompts, out: tuple, rows, rho: float) -> tuple:
        return retry_episodes(self, trainer, prompts, out, rows, rho)


def rollouts(chain, steps_cfg, benchmark, tokenizer, policy_path=None, cache_dir=None) -> R3LRollouts:
    """Built once per run: R³L generates its training rollouts itself (first attempts, pivot, retries)."""
    return R3LRollouts(chain, steps_cfg, benchmark, tokenizer, policy_path, cache_dir)


def check(cfg, a) -> None:
    """Config-time checks of ``method=r3l`` (one clear error line before any model loads)."""
    from crs.benchmarks import is_multi_turn
    from crs.steps.rule import PROCESS_VERIFIERS

    bench, s = cfg.benchmark.name, cfg.method.steps
    # More than one process (accelerate launch, torchrun, SLURM tasks_per_node > 1) needs no gathering: a
    # retry slot must see its own group's first attempts, and every process generates whole groups, since
    # TRL's RepeatSampler lays each prompt's G copies out contiguously and crs requires
    # per_device_train_batch_size × steps_per_generation to be a multiple of num_generations (config check).
    # Both generate() calls run on every process with equal batch sizes, so collective generation backends
    # (vLLM, ZeRO-3 gathers) stay in step. tests/test_multiprocess.py::test_r3l_on_two_processes.
    if is_multi_turn(bench):
        from crs.envs.verifiers import TURN_VERIFIERS

        if bench not in TURN_VERIFIERS:
            raise ConfigError(
                f"method r3l: no turn verifier for benchmark {bench!r} (known: {', '.join(TURN_VERIFIERS)})"
            )
        if s.scorer != "rule":
            raise ConfigError(
                f"method r3l on {bench}: turns are reflected on by the exact turn verifier; use method.steps.scorer=rule"
            )
        if a.get("guidance") is not None:
            raise ConfigError(
                f"method r3l on {bench}: credit.r3l.guidance is single-turn only (set it to null)"
            )
        return
    if s.scorer not in SCORERS:
        raise ConfigError(
            f"method r3l: method.steps.scorer must name wrong steps: one of {', '.join(SCORERS)} (got {s.scorer!r})"
        )
    if (s.scorer == "rule" or not s[s.scorer].path) and bench not in PROCESS_VERIFIERS:
        raise ConfigError(
            f"method r3l: method.steps.scorer={s.scorer} needs a process verifier for benchmark {bench!r} "
            f"(known: {', '.join(sorted(PROCESS_VERIFIERS))}); give method.steps.{s.scorer}.path for other tasks"
        )
    G = int(cfg.trainer.num_generations)
    R = retry_slot_count(G, float(a["retry_share"]))
    if not 1 <= R <= G - 1:
        raise ConfigError(
            f"method r3l: retry_share={a['retry_share']} gives {R} retry slots of trainer.num_generations={G}; "
            "need at least one retry slot and one first attempt per group"
        )
    if a.get("guidance") is not None and not isinstance(a["guidance"], str):
        raise ConfigError("method r3l: credit.r3l.guidance must be a string or null")


METHOD = Method(
    "r3l",
    r3l,
    help={
        "rate": "Chance that an eligible failed first attempt is retried (the schedule's knob; 0 = GRPO).",
        "retry_share": "Share of each group's slots that hold retries (authors: n/2 first attempts + up to n/2).",
        "guidance": "Format string put before the prompt of a retry ({step}, {text}); null = none (the tiny "
        "policies never saw such text). Single-turn only.",
        "pivotal": "Train only the diverging suffix of a retry and its first attempt (false = the authors' "
        "w/o_credit ablation).",
    },
    ranges={"rate": "[0, 1]", "retry_share": "(0, 1)"},
    phase="mask",
    substrate="turns",
    token_features=("r3l_keep",),
    rollouts=rollouts,
    check=check,
)
