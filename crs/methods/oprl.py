"""OPRL / iStar (arXiv 2509.19199; Tongyi-ConvAI ``CharacterRL-iStar``): outcome advantage plus the
standardised step advantage of an implicit PRM learned online by DPO (:mod:`crs.steps.implicit`)::

    A = A^E + w·A^S          A^S = (r_s − mean R_s)/std R_s over all step rewards of the group

On single-turn tasks a step is a segment of one completion; on crs's environments it is an assistant
turn (iStar's own unit), and only the implicit scorer applies there::

    crs train method=oprl
    crs train method=oprl benchmark=maze
"""

from __future__ import annotations

from torch import Tensor

from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError
from crs.steps.scorers import RolloutView


def batch_max_norm(r: Tensor, valid: Tensor) -> Tensor:
    """iStar ``batch_norm``: ``r / (max over the batch of |reverse-cumsum_k r| + 1e-6)``."""
    r = r * valid
    rc = r.flip(-1).cumsum(-1).flip(-1).abs()
    return r / (rc.max() + 1e-6)


def step_advantages(r: Tensor, valid: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """``A^S = (r − mean)/std`` over all valid step rewards of each group (``[B,K]``, 0 on missing steps)."""
    B, K = r.shape
    rg, vg = r.view(-1, group_size * K), valid.view(-1, group_size * K).float()
    n = vg.sum(1, keepdim=True).clamp(min=1.0)
    mean = (rg * vg).sum(1, keepdim=True) / n
    var = (((rg - mean) ** 2) * vg).sum(1, keepdim=True) / (n - 1).clamp(min=1.0)
    A = (rg - mean) / (var.sqrt() + eps) * vg
    return A.view(B, K)


def produce(view: RolloutView, scores: Tensor, kind: str, args, outcome: Tensor) -> dict[str, Tensor]:
    """Rollout time: implicit-PRM step rewards → (batch-max normalised) step advantages on every step token."""
    valid = view.steps.valid.float()
    r = scores * valid
    if args["norm"] == "batch_max":
        r = batch_max_norm(r, valid)
    AS = step_advantages(r, view.steps.valid, view.group_size)
    return {"oprl_step_adv": view.steps.broadcast(AS) * view.completion_mask.float().cpu()}


def oprl(batch: CreditBatch, w: float = 1.0, norm: str = "batch_max") -> CreditBatch:
    """OPRL/iStar (arXiv 2509.19199): ``A = A^E + w·A^S`` — the outcome (GRPO) advantage plus the
    standardised implicit-PRM step advantage on every token of the step. The schedule drives ``w``."""
    if norm not in ("batch_max", "none"):
        raise ConfigError(f"oprl.norm must be batch_max or none, got {norm!r}")
    tok = batch.features.get("oprl_step_adv")
    if tok is None or tok.dim() != 2:
        return batch
    return batch.replace(advantages=batch.token_advantages() + w * tok.to(batch.mask.dtype) * batch.mask)


def check(cfg, args) -> None:
    """On environments a step is a turn and only the online implicit PRM can score it."""
    from crs.benchmarks import is_multi_turn

    if is_multi_turn(cfg.benchmark.name) and cfg.method.steps.scorer != "implicit":
        raise ConfigError(
            f"on multi-turn environments (benchmark={cfg.benchmark.name}) the step level is the turn and "
            f"only oprl with method.steps.scorer=implicit applies (got scorer={cfg.method.steps.scorer})"
        )


METHOD = Method(
    "oprl",
    oprl,
    help={
        "w": "Weight w of the step advantage: A = A^E + w·A^S (iStar: 1). Collapses the toy policy at 1 "
        "(README); 0 = GRPO.",
        "norm": "batch_max: iStar's istar_norm=batch_norm (r / max |reverse-cumsum r|); none.",
    },
    ranges={"w": "[0, inf)"},
    substrate="steps",
    token_features=("oprl_step_adv",),
    produce=produce,
    check=check,
)
