"""Forking tokens — "Beyond the 80/20 rule" (Wang et al., arXiv 2506.01939): gradient only on the
high-entropy minority tokens where a reasoning path forks.

``keep_fraction`` of the tokens (by entropy) keep their policy gradient; a schedule can move it
(``drive: {knob: keep_fraction, neutral: 1.0}`` = ``1 − ρ``)::

    crs train method=forking_tokens schedule=linear
"""

from __future__ import annotations

from crs.credit.method import CreditBatch, Method
from crs.credit.primitives import top_entropy_mask
from crs.errors import ConfigError


def forking_tokens(
    batch: CreditBatch,
    keep_fraction: float = 0.2,
    selection: str = "batch_topk",
    normalize: str = "selected",
) -> CreditBatch:
    """High-entropy minority tokens (Wang et al., arXiv 2506.01939): gradient only on forking tokens.

    ``normalize: selected`` divides the loss by the number of selected tokens (official code);
    ``normalize: all_tokens`` keeps TRL's normaliser and equals TRL's ``top_entropy_quantile`` with
    ``selection: batch_quantile``.
    """
    if normalize not in ("selected", "all_tokens"):
        raise ConfigError(f"forking_tokens.normalize must be 'selected' or 'all_tokens', got {normalize!r}")
    sel = top_entropy_mask(batch.entropies, batch.mask, keep_fraction, selection)
    w = sel if batch.token_weights is None else batch.token_weights * sel
    return batch.replace(token_weights=w, renormalize=batch.renormalize or normalize == "selected")


METHOD = Method(
    "forking_tokens",
    forking_tokens,
    help={
        "keep_fraction": "Fraction of tokens (highest entropy) that keep their gradient: 0.2 in the paper; "
        "1 = GRPO. Lower keeps fewer, more decisive tokens but a noisier gradient.",
        "selection": "batch_topk (official code: top-k over the whole micro-batch), batch_quantile (TRL's "
        "top_entropy_quantile), per_sequence (top-k within each response).",
        "normalize": "selected: the loss is a mean over the selected tokens (official code); all_tokens: "
        "TRL's normaliser over every token (smaller steps).",
    },
    ranges={"keep_fraction": "[0, 1]"},
    needs_entropies=True,
)
