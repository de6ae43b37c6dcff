"""Factorized F-GRPO (arXiv 2605.12995): each phase of a slate-then-rank completion gets its own
group-relative advantage, on its own tokens.

One completion writes a slate of candidates and then a ranking of slate items. Joint GRPO gives every
token ``A = R_joint − mean_G R_joint`` with ``R_joint = R_slate + λ·R_rank``, so a good slate followed by a
bad ranking is blamed as a whole. F-GRPO gives the slate's tokens ``A_s = R_slate − mean_G R_slate`` and
the ranking's tokens ``λ·A_r`` (``A_r = R_rank − mean_G R_rank``; Dr. GRPO centring, no std), so each
phase's gradient carries only its own reward ("first-order separability"). Tokens outside both spans
(tags, EOS) follow ``assign``; ``mix`` blends towards joint GRPO (``mix = 0`` is joint GRPO, the neutral
point a schedule can drive). Not Focal GRPO (``focal_grpo``). Spec: docs/methods/wave3.md §1; design and
unknowns: docs/f_grpo.md::

    crs train benchmark=slate_rank method=f_grpo loss=dr_grpo
    crs train benchmark=slate_rank method=f_grpo method.credit.f_grpo.assign=content

The per-phase tensors come from the benchmark's ``parts`` (:class:`crs.benchmarks.Benchmark`) through the
step hook (:mod:`crs.steps.hook`): ``part_slate`` / ``part_rank`` ``[B,T]`` masks of the ids written in each
block, ``part_slate_side`` ``[B,T]`` (everything up to ``</S>``), ``part_adv_slate`` / ``part_adv_rank``
``[B]`` group-centred phase rewards, computed at rollout time on whole groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError

ASSIGN = ("prefix", "content", "joint")
_TOKEN = ("part_slate", "part_rank", "part_slate_side")
_ROW = ("part_adv_slate", "part_adv_rank")


def f_grpo(batch: CreditBatch, lam: float = 1.0, assign: str = "prefix", mix: float = 1.0) -> CreditBatch:
    """Factorized F-GRPO (arXiv 2605.12995): per-phase group-relative advantages on each phase's tokens.

    Reads ``features``: ``part_adv_slate`` ``A_s`` and ``part_adv_rank`` ``A_r`` ``[B]``; ``part_slate`` ``S``,
    ``part_rank`` ``K`` and ``part_slate_side`` ``P`` ``[B,T]`` masks. Writes ``[B,T]`` advantages::

        A_joint = A_s + λ·A_r                                  (joint GRPO's Dr. GRPO advantage)
        prefix:  A_fact = A_s·P + λ·A_r·(1 − P)                (everything up to </S> is the slate's)
        content: A_fact = A_s·S + λ·A_r·K                      (tags, EOS: 0)
        joint:   A_fact = A_s·S + λ·A_r·K + A_joint·(1 − S − K) (tags, EOS: the joint advantage)
        A = (1 − mix)·A_joint + mix·A_fact

    Without the part tensors (evaluation, a benchmark without parts) the batch is returned unchanged.
    """
    if assign not in ASSIGN:
        raise ConfigError(f"f_grpo.assign must be one of {', '.join(ASSIGN)} (got {assign!r})")
    f = batch.features
    if any(k not in f for k in _TOKEN + _ROW):
        return batch
    a_s = f["part_adv_slate"].float().unsqueeze(1)  # [B,1]
    a_r = f["part_adv_rank"].float().unsqueeze(1)
    S, K, P = (f[k].float() for k in _TOKEN)  # [B,T]
    joint = (a_s + lam * a_r).expand_as(batch.mask)
    if assign == "prefix":
        fact = a_s * P + lam * a_r * (1.0 - P)
    elif assign == "content":
        fact = a_s * S + lam * a_r * K
    else:
        fact = a_s * S + lam * a_r * K + joint * (1.0 - (S + K).clamp(max=1.0))
    adv = joint if mix == 0 else (1.0 - mix) * joint + mix * fact
    return batch.replace(advantages=adv * batch.mask)


def check(cfg: Any, args: Mapping[str, Any]) -> None:
    """The benchmark must have slate and ranking parts; λ ≠ 1 needs the joint baseline's reward weights."""
    from crs.benchmarks import get_benchmark

    name = cfg.benchmark.name
    try:
        factory = get_benchmark(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    have = set(getattr(factory, "parts", ()) or ())
    if not {"slate", "rank", "slate_side"} <= have:
        raise ConfigError(
            f"method f_grpo needs a benchmark whose completions have a slate and a ranking part "
            f"(benchmark=slate_rank); benchmark={name} has {sorted(have) or 'none'}"
        )
    validate = getattr(factory, "validate", None)
    if validate is not None:
        validate(dict(cfg.benchmark))  # one ConfigError line for a bad benchmark value
    if args.get("assign") not in ASSIGN:
        raise ConfigError(
            f"method.credit.f_grpo.assign must be one of {', '.join(ASSIGN)} (got {args.get('assign')!r})"
        )


METHOD = Method(
    "f_grpo",
    f_grpo,
    help={
        "lam": "λ, the ranking phase's weight (R_joint = R_slate + λ·R_rank). The paper: 1.0 best, 0.5 lowers "
        "NDCG@1 and Recall@1 (Fig. 4a). The joint GRPO baseline weighs its rewards by TRL's reward_weights: "
        "for λ ≠ 1 give it trainer.extra.reward_weights=[1,λ].",
        "assign": "Credit of tokens outside both id spans (tags, EOS), [UNVERIFIED] in the paper: prefix (the "
        "spec's default: up to </S> gets A_s, the rest λ·A_r), content (0: only ids learn; tags keep "
        "whatever SFT taught), joint (the joint advantage: tags learn the whole reward).",
        "mix": "A = (1 − mix)·A_joint + mix·A_factorized: 1 = F-GRPO, 0 = joint GRPO (the neutral point a "
        "schedule drives: drive: {knob: mix, neutral: 0}); in between trades separability for the "
        "joint signal's shared credit.",
    },
    ranges={"lam": "[0, inf)", "mix": "[0, 1]"},
    substrate="phases",
    token_features=_TOKEN,
    check=check,
)
