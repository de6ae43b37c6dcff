"""Step segmentation: completions → steps → token spans (PURE's rule, CJReinforce/PURE experience_maker.py).

A *separator token* is any vocabulary id whose decoded text ends with one of the configured separator
strings — PURE builds its set by decoding every vocab id, so merged tokens such as ``".\\n\\n"`` count.
Step ``k`` of a completion ends at its ``k``-th separator token ``c_k`` (inclusive: the separator is the
step's *last token*, where PURE places the step's reward); the final step ends at the last valid token
``e`` (the EOS, or the last generated token of a truncated completion). So:

- a completion with no separator is **one** step;
- adjacent separators give an **empty** step (zero content tokens, still scored);
- a truncated completion's last step ends at its last token, whatever it is;
- a completion whose last valid token is itself a separator does not get an extra empty step.

``n_content[b,k]`` counts step ``k``'s tokens *without* its end token (PURE's ``num_tokens_per_step``),
which the token baseline multiplies. The embedded arithmetic task has natural steps separated by ``,``
and ``.``::

    " 7+5=12, 12-3=9. Answer: 9</s>"  →  " 7+5=12," | " 12-3=9." | " Answer: 9</s>"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def separator_token_ids(tokenizer, separators: Sequence[str]) -> frozenset[int]:
    """Every vocab id whose decoded text ends with one of ``separators`` (PURE's separator set ``S``).

    Special tokens (EOS, pad) never count as separators.
    """
    if isinstance(separators, str):
        separators = [separators]
    seps = [s for s in separators if s]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = set()
    for v in range(len(tokenizer)):
        if v in special:
            continue
        text = tokenizer.decode([v])
        if any(text.endswith(s) for s in seps):
            out.add(v)
    return frozenset(out)


@dataclass(frozen=True)
class Steps:
    """Step structure of a batch of ``B`` completions padded to ``T`` positions, at most ``K`` steps.

    Attributes:
        step_id: ``[B,T]`` long, the step each valid token belongs to (``-1`` on padding).
        ends: ``[B,K]`` long, position of each step's last token ``c_k`` (``-1`` for missing steps).
        n_content: ``[B,K]`` long, tokens of step ``k`` without its end token (0 for missing steps).
        valid: ``[B,K]`` bool, the step exists.
        lengths: ``[B]`` valid completion tokens.
    """

    step_id: Tensor
    ends: Tensor
    n_content: Tensor
    valid: Tensor
    lengths: Tensor

    @property
    def n_steps(self) -> Tensor:
        return self.valid.sum(-1)

    def to(self, device) -> Steps:
        """The same structure on ``device`` (segmentation runs on token lists, i.e. on the CPU)."""
        return Steps(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def spans(self, b: int) -> list[tuple[int, int]]:
        """Half-open token spans ``[start, end+1)`` of row ``b``'s steps (end token included)."""
        out, start = [], 0
        for k in range(int(self.valid[b].sum())):
            end = int(self.ends[b, k])
            out.append((start, end + 1))
            start = end + 1
        return out

    def end_mask(self) -> Tensor:
        """``[B,T]`` float, 1 at every step's end token (PURE's reward positions)."""
        B, T = self.step_id.shape
        m = torch.zeros(B, T)
        rows, ks = torch.nonzero(self.valid, as_tuple=True)
        m[rows, self.ends[rows, ks]] = 1.0
        return m

    def scatter(self, per_step: Tensor) -> Tensor:
        """``[B,K]`` → ``[B,T]``: each step's value on its end token, 0 elsewhere."""
        B, T = self.step_id.shape
        out = torch.zeros(B, T, dtype=per_step.dtype)
        rows, ks = torch.nonzero(self.valid, as_tuple=True)
        out[rows, self.ends[rows, ks]] = per_step[rows, ks]
        return out

    def broadcast(self, per_step: Tensor) -> Tensor:
        """``[B,K]`` → ``[B,T]``: each step's value on every token of the step, 0 on padding."""
        idx = self.step_id.clamp(min=0)
        out = (
            per_step.gather(1, idx) if per_step.shape[1] > 0 else torch.zeros_like(idx, dtype=per_step.dtype)
        )
        return out * (self.step_id >= 0).to(out.dtype)

    def sum_over_steps(self, per_token: Tensor) -> Tensor:
        """``[B,T]`` → ``[B,K]``: per-step sum over all tokens of the step (end token included)."""
        B, K = self.valid.shape
        out = torch.zeros(B, max(K, 1), dtype=per_token.dtype)
        valid_tok = self.step_id >= 0
        out.scatter_add_(1, self.step_id.clamp(min=0), per_token * valid_tok.to(per_token.dtype))
        return out[:, :K]


def segment_ids(ids: Sequence[int], sep_ids: Iterable[int] | frozenset[int]) -> list[int]:
    """End positions ``c_1 < … < c_K`` of one completion's steps (``ids`` = its valid tokens only)."""
    sep = sep_ids if isinstance(sep_ids, frozenset | set) else frozenset(sep_ids)
    L = len(ids)
    if L == 0:
        return []
    ends = [t for t, v in enumerate(ids) if v in sep]
    if not ends or ends[-1] != L - 1:
        ends.append(L - 1)
    return ends


def segment_batch(completion_ids: Tensor, completion_mask: Tensor, sep_ids: frozenset[int]) -> Steps:
    """Segment a padded batch (right-padded: valid tokens are a prefix of each row, as TRL's are).

    Args:
        completion_ids: ``[B,T]`` token ids.
        completion_mask: ``[B,T]`` 1 on valid completion tokens (EOS included).
        sep_ids: separator set from :func:`separator_token_ids`.
    """
    B, T = completion_ids.shape
    lengths = completion_mask.long().sum(-1)
    all_ends = [segment_ids(completion_ids[b, : int(lengths[b])].tolist(), sep_ids) for b in range(B)]
    K = max((len(e) for e in all_ends), default=0)
    ends = torch.full((B, K), -1, dtype=torch.long)
    n_content = torch.zeros(B, K, dtype=torch.long)
    valid = torch.zeros(B, K, dtype=torch.bool)
    step_id = torch.full((B, T), -1, dtype=torch.long)
    for b, e in enumerate(all_ends):
        start = 0
        for k, c in enumerate(e):
            ends[b, k] = c
            n_content[b, k] = c - start
            valid[b, k] = True
            step_id[b, start : c + 1] = k
            start = c + 1
    return Steps(step_id=step_id, ends=ends, n_content=n_content, valid=valid, lengths=lengths)


def segment_turns(completion_mask: Tensor, loss_mask: Tensor) -> Steps:
    """Steps = the assistant turns of multi-turn episodes (OPRL/iStar's own unit: one environment step).

    Turn ``k`` = the ``k``-th run of ``loss_mask == 1`` (TRL's ``completion_mask·tool_mask``: tool-result
    tokens are 0), as :func:`crs.envs.turns.turn_index`. ``step_id`` is ``-1`` on tool-result tokens and
    padding, so sums and broadcasts over steps touch only the model's own tokens; a turn's end is its last
    model token.

    Args:
        completion_mask: ``[B,T]`` 1 on valid completion tokens.
        loss_mask: ``[B,T]`` ``completion_mask·tool_mask``.
    """
    from crs.envs.turns import turn_index

    step_id = turn_index(loss_mask * completion_mask).cpu()
    B, T = step_id.shape
    K = int(step_id.max()) + 1 if step_id.numel() else 0
    ends = torch.full((B, K), -1, dtype=torch.long)
    n_content = torch.zeros(B, K, dtype=torch.long)
    valid = torch.zeros(B, K, dtype=torch.bool)
    pos = torch.arange(T)
    for k in range(K):
        on = step_id == k
        has = on.any(-1)
        valid[:, k] = has
        ends[:, k] = torch.where(has, (pos * on).max(-1).values, torch.full((B,), -1))
        n_content[:, k] = (on.sum(-1) - 1).clamp(min=0)
    return Steps(
        step_id=step_id,
        ends=ends,
        n_content=n_content,
        valid=valid,
        lengths=completion_mask.long().sum(-1).cpu(),
    )


def step_texts(tokenizer, completion_ids: Tensor, steps: Steps) -> list[list[str]]:
    """Decoded text of every step (end token included, special tokens skipped), per row."""
    out = []
    for b in range(completion_ids.shape[0]):
        row = completion_ids[b].tolist()
        out.append([tokenizer.decode(row[s:e], skip_special_tokens=True) for s, e in steps.spans(b)])
    return out


def char_to_token_mask(tokenizer, ids: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[float]:
    """1.0 on tokens of ``ids`` whose decoded characters overlap any char span ``[start, end)``.

    Character offsets are those of ``tokenizer.decode(ids, skip_special_tokens=True)``; per-token offsets
    come from decoding growing prefixes, which is exact for byte-level BPE on ASCII and UTF-8 alike.
    """
    out = [0.0] * len(ids)
    if not spans:
        return out
    prev = 0
    for t in range(len(ids)):
        cur = len(tokenizer.decode(list(ids[: t + 1]), skip_special_tokens=True))
        if cur > prev and any(s < cur and prev < e for s, e in spans):
            out[t] = 1.0
        prev = cur
    return out
