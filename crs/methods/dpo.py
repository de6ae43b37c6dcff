"""DPO (Rafailov et al., arXiv 2305.18290) on TRL's ``DPOTrainer``: the preference baseline, and the pairs.

The loss is TRL's own (``loss_type=sigmoid``: ``−log σ(β(log π/π_ref(y_w) − log π/π_ref(y_l)))``); this step
changes nothing in it (``crs train trainer=dpo method=dpo`` is gradient-equal to plain ``DPOTrainer``,
``tests/test_dpo.py``). Its arguments say where the preference pairs come from (crs/prefs/data.py): on-policy
pairs sampled from the warm-started policy and labelled by the verifier (T-REG's pipeline with the verifier as
the reward model), or a local file in TRL's preference format::

    crs train trainer=dpo method=dpo
    crs train trainer=dpo method=dpo method.credit.dpo.data_file=pairs.jsonl
"""

from __future__ import annotations

from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError


def dpo(
    batch: CreditBatch,
    samples: int = 5,
    n_prompts: int = 256,
    data_seed: int = 0,
    data_file: str | None = None,
) -> CreditBatch:
    """Identity on the batch (``[2N,T]`` rows ``[chosen; rejected]``): DPO's loss is TRL's. The arguments
    configure the pairs (read by :func:`crs.prefs.data.preference_dataset`)."""
    return batch


def _check(cfg, args) -> None:
    if args["data_file"]:
        from pathlib import Path

        if not Path(str(args["data_file"])).expanduser().is_file():
            raise ConfigError(
                f"method.credit.dpo.data_file: no such file {str(args['data_file'])!r} "
                "(a .jsonl/.json with prompt/chosen/rejected)"
            )


METHOD = Method(
    "dpo",
    dpo,
    help={
        "samples": "Completions sampled per prompt to build a pair (T-REG's pipeline: 5 from the reference "
        "policy); best by the verifier = chosen, worst = rejected, all-equal groups dropped. More samples "
        "find more pairs (and harder ones) at proportional sampling cost.",
        "n_prompts": "Training prompts sampled from to build pairs (the pair count is what survives the tie "
        "filter: roughly the prompts the policy solves sometimes but not always).",
        "data_seed": "Seed of the pair sampling (fixed: every run seed trains on the same cached pairs, so "
        "seeds differ only in training order).",
        "data_file": "A local .jsonl/.json in TRL's preference format (prompt/chosen/rejected, text or "
        "conversational) instead of on-policy pairs; null = build them.",
    },
    ranges={"samples": "[2, inf)", "n_prompts": "[1, inf)", "data_seed": "[0, inf)"},
    substrate="sequences",
    trainers=("dpo",),
    check=_check,
)
