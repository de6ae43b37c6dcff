"""The one ``DistillationTrainer`` subclass: full reverse-KL on-policy distillation (s2d stage 2b, ``full_rkl``).

Sparse-to-dense (arXiv 2605.12483) moves the RL teacher into the student by on-policy distillation on the
student's own samples: ``E_{y~π_S} Σ_t KL(π_S ‖ π_T)(· | x, y_<t)`` (docs/s2d.md). crs's default estimator
(``sampled_pg``, crs/methods/opd.py) credits each sampled token with ``log π_T − log π_S`` under the PPO
trust region; ``full_rkl`` is the exact gradient of that objective: TRL's stable ``trl.DistillationTrainer``,
whose student always generates the batch (there is no lmbda / teacher-sample mixing in it,
distillation_trainer.py ``_generate_single_turn`` samples from ``self.model``) and whose loss with
``beta=1`` is the full-vocabulary reverse KL over the completion tokens, projected through both LM heads in
chunks (``_chunked_divergence_loss``), divided by the generated completion-token count of the batch. No
clip, no advantage, one no-grad teacher forward per step. Wiring only; TRL's loss is called, never copied:

``__init__``
    Fixes ``beta=1`` (reverse KL(π_S‖π_T); 0 would be the forward KL of stage 2a) and
    ``remove_unused_columns=True``: TRL keeps only its signature columns (``prompt``, ``image``,
    ``images``), so an ``answer`` column never reaches the batch (``tests/test_s2d_rkl.py``). TRL's own
    batching reads ``row["prompt"]`` only and tokenises a plain-text prompt as is
    (``processing_class(text=prompts)``; the chat template is applied to conversational prompts only), so
    crs's prompts need neither a chat template nor :class:`~crs.trainers.gkd.PromptCollator`
    (``data_collator`` is TRL's identity, not an argument). Its token count is taken on the generated
    completions, not on placeholder labels, so nothing of GKD's ``training_step`` fix is needed here.

::

    crs pipeline sparse_to_dense opd.estimator=full_rkl      # stage 2b (the default is sampled_pg)
"""

from __future__ import annotations

from typing import Any

from trl import DistillationConfig, DistillationTrainer

FIXED = {"beta": 1.0, "remove_unused_columns": True}


class CreditDistillationTrainer(DistillationTrainer):
    """``DistillationTrainer`` fixed to the reverse KL on student samples (module docstring).

    Args:
        *args, **kwargs: passed to ``DistillationTrainer`` (``teacher_model``, ``args``: a ``DistillationConfig``).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        cfg: DistillationConfig = kwargs["args"]
        for k, v in FIXED.items():
            setattr(cfg, k, v)
        super().__init__(*args, **kwargs)


def distill_config(**kwargs: Any) -> DistillationConfig:
    """A ``DistillationConfig`` with the fields this trainer fixes already set (``beta=1``, prompt column only)."""
    return DistillationConfig(**FIXED, **kwargs)
