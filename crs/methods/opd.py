"""On-policy distillation (OPD), stage 2b of sparse-to-dense (arXiv 2605.12483; docs/s2d.md).

The student samples ``y ~ π_S``; every completion token is credited by the teacher–student log-ratio

    a_t = log π_T(y_t | x, y_<t) − log π_S(y_t | x, y_<t)

(the dense per-token reward whose expectation under ``π_S`` is ``−KL(π_S ‖ π_T)``, the reverse KL), used
as a ``[B,T]`` advantage in TRL's clipped GRPO loss: no group baseline (the advantage *replaces* TRL's
group-normalised one), ``beta = 0``, PPO clip = the paper's "local trust-region update under a dense
teacher-induced implicit reward". On-policy with one PPO epoch the ratio is 1 and the gradient equals
TRL's IW-OPD with ``γ = 0`` (``tests/test_s2d.py`` S7).

The teacher's log-probs are computed once per rollout by this method's ``rollouts`` hook (a no-grad
teacher forward on prompt + completion, at the rollout's sampling temperature) into the per-token
feature ``opd_teacher_logp``; the step reads it together with the student's detached log-probs of the
loss forward. Labels are never read: the reward function still runs (it is logged as a monitor), but
the advantage does not depend on it. ::

    crs train method=opd method.credit.opd.teacher=/path/to/teacher    # the student is model=...
    crs pipeline sparse_to_dense                                         # stage 3 of the pipeline
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError

TEACHER_FEATURE = "opd_teacher_logp"


def opd_advantages(teacher_logp: Tensor, student_logp: Tensor, mask: Tensor, reward: str = "k1") -> Tensor:
    """``[B,T]`` per-token OPD reward on the masked tokens (zero elsewhere).

    Args:
        teacher_logp: ``[B,T]`` log π_T of the sampled tokens.
        student_logp: ``[B,T]`` log π_S of the same tokens (detached; the rollout policy).
        mask: ``[B,T]`` 1 on tokens in the objective.
        reward: ``k1`` = ``log π_T − log π_S`` (unbiased for −RKL, S3); ``k3`` = ``−((r − 1) − log r)``
            with ``r = π_T/π_S`` (Schulman's low-variance, always ≤ 0 estimate of the same −KL value).
    """
    log_ratio = teacher_logp - student_logp
    if reward == "k1":
        a = log_ratio
    elif reward == "k3":
        a = -(torch.expm1(log_ratio) - log_ratio)
    else:
        raise ValueError(f"reward must be k1 or k3, got {reward!r}")
    return a * mask


def iw_position_weights(adv: Tensor, mask: Tensor, gamma: float, eps: float = 1e-8) -> Tensor:
    """IW-OPD's position weights ``w_t = 1 + γ·(1 − Σ_{s<t}|a_s| / Σ_s |a_s|)`` (``[B,T]``; γ = 0 → 1).

    TRL's ``IWOPDTrainer._compute_iw_opd_loss`` (``iw_opd_gamma``); S4 checks the numbers against it.
    """
    a = (adv * mask).abs()
    prefix = a.cumsum(dim=1) - a
    total = a.sum(dim=1, keepdim=True).clamp_min(eps)
    return 1.0 + gamma * (1.0 - prefix / total)


def opd(
    batch: CreditBatch,
    reward: str = "k1",
    iw_gamma: float = 0.0,
    adv_clip: float = 0.0,
    teacher: str = "",
) -> CreditBatch:
    """Replace the advantages by the ``[B,T]`` OPD reward ``a_t`` (shapes: features ``[B,T]``, logps ``[B,T]``).

    Outside training rollouts (evaluation) the teacher feature is absent and the batch is unchanged.
    """
    t_lp = batch.features.get(TEACHER_FEATURE)
    if t_lp is None or batch.logps is None:
        return batch
    a = opd_advantages(t_lp, batch.logps.detach(), batch.mask, reward)
    if iw_gamma > 0:
        a = a * iw_position_weights(a, batch.mask, iw_gamma)
    if adv_clip > 0:
        a = a.clamp(-adv_clip, adv_clip)
    return batch.replace(advantages=a * batch.mask)


class TeacherLogps:
    """The ``rollouts`` hook's object: generation is TRL's own; ``features`` adds the teacher's log-probs.

    The teacher is loaded once (``from_pretrained`` of ``method.credit.opd.teacher``) onto the policy's
    device in eval mode; it must share the student's tokenizer (TRL's distillation trainers require the
    same; checked on the vocabulary size).
    """

    def __init__(self, path: str):
        self.path = path
        self.model = None

    def _load(self, trainer) -> Any:
        if self.model is None:
            from transformers import AutoModelForCausalLM

            device = next(trainer.model.parameters()).device
            self.model = (
                AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).to(device).eval()
            )
            v_t = self.model.config.get_text_config().vocab_size
            v_s = trainer.model.config.get_text_config().vocab_size
            if v_t != v_s:
                raise ConfigError(
                    f"method opd: the teacher's vocabulary ({v_t}) differs from the student's ({v_s}); "
                    "OPD needs the same tokenizer"
                )
        return self.model

    def generate(self, trainer, prompt_ids, rows, gen, rho: float):
        return gen(prompt_ids)  # the student's own samples: OPD is on-policy

    @torch.no_grad()
    def features(self, trainer, out: Mapping[str, Tensor], success: Tensor, rho: float) -> dict[str, Tensor]:
        """``{"opd_teacher_logp": [B,T]}``: log π_T of each sampled completion token."""
        teacher = self._load(trainer)
        p_ids, p_mask = out["prompt_ids"], out["prompt_mask"]
        c_ids, c_mask = out["completion_ids"], out["completion_mask"]
        ids = torch.cat([p_ids, c_ids], dim=1)
        attn = torch.cat([p_mask, c_mask], dim=1)
        T = c_ids.shape[1]
        logits = teacher(input_ids=ids, attention_mask=attn).logits[:, -T - 1 : -1, :].float()
        logits = logits / float(getattr(trainer, "temperature", 1.0) or 1.0)  # as TRL scores the student
        lp = torch.log_softmax(logits, dim=-1).gather(-1, c_ids.unsqueeze(-1)).squeeze(-1)
        lp = lp * c_mask.float()
        if trainer is not None and hasattr(trainer, "_metrics"):
            m = c_mask.float()
            trainer._metrics["train"]["s2d/teacher_logp"].append(float((lp * m).sum() / m.sum().clamp(min=1)))
        return {TEACHER_FEATURE: lp}

    def episodes(self, trainer, prompts, out, rows, rho: float):
        return out


def rollouts(chain, steps_cfg, benchmark, tokenizer, policy_path=None, cache_dir=None) -> TeacherLogps:
    """Built once per run: the teacher-forward hook (the teacher path is ``method.credit.opd.teacher``)."""
    (args,) = [a for m, a in chain.hooked("rollouts") if m.name == METHOD.name]
    if not args.get("teacher"):
        raise ConfigError(
            "method.credit.opd.teacher: the teacher model folder is required "
            "(crs pipeline sparse_to_dense sets it to stage 1's model)"
        )
    return TeacherLogps(str(args["teacher"]))


def check(cfg, a) -> None:
    """Config-time checks of ``method=opd`` (one line before any model loads)."""
    from pathlib import Path

    if a.get("reward") not in ("k1", "k3"):
        raise ConfigError(f"method.credit.opd.reward must be k1 or k3 (got {a.get('reward')!r})")
    if not a.get("teacher"):  # before any model loads (the rollouts hook refuses it too, for direct callers)
        raise ConfigError(
            "method.credit.opd.teacher: the teacher model folder is required "
            "(crs train method=opd method.credit.opd.teacher=/path/to/teacher; crs pipeline sets it)"
        )
    if not (Path(str(a["teacher"])) / "config.json").is_file():
        raise ConfigError(f"method.credit.opd.teacher: no model at {a['teacher']} (no config.json)")
    if float(cfg.trainer.beta) != 0.0:
        raise ConfigError("method opd: trainer.beta must be 0 (the teacher, not a reference, is the anchor)")


METHOD = Method(
    "opd",
    opd,
    help={
        "reward": "Per-token estimator of −KL(π_S‖π_T): k1 = log π_T − log π_S (default: unbiased, the "
        "paper's dense implicit reward, S3); k3 = −((r−1) − log r), lower variance but biased as a reward.",
        "iw_gamma": "IW-OPD position weights (TRL IWOPDTrainer iw_opd_gamma, arXiv 2606.22600): γ > 0 "
        "up-weights early tokens; 0 (default) = plain OPD, the paper's estimator.",
        "adv_clip": "Clip |a_t| at this value (0 = off, default): a guard against a teacher that puts "
        "≈0 mass on a student token (a_t → −∞); the PPO clip only bounds the ratio.",
        "teacher": "Folder of the teacher model (same tokenizer as the student). The pipeline passes stage "
        "1's output by path.",
    },
    ranges={"iw_gamma": "[0, inf)", "adv_clip": "[0, inf)"},
    substrate="tokens",
    token_features=(TEACHER_FEATURE,),
    rollouts=rollouts,
    check=check,
    one_process="the teacher forward runs on each process's rows but is untested with several processes",
)
