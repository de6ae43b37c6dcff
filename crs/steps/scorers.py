"""Step scorers behind one interface: ``scorer.score(view) -> [B,K]`` scores, chosen by ``method.steps.scorer``.

Every scorer runs where the reward runs (once per rollout, in the trainer's generation step) on a
:class:`RolloutView` — the rollout's prompts, completions, their segmentation and the verifier's
verdicts — and returns one number per step. Scores travel in the batch, never recomputed in the loss.

``rule``
    exact process verifier of a synthetic task (:mod:`crs.steps.rule`): 1 = correct step, 0 = wrong.
``prm``
    a process reward model: any local ``*ForTokenClassification`` checkpoint with 2 labels (PURE's
    PRM, TRL PRM format: label 1 = correct) or causal LM (score = ``P(good) − P(bad)`` of two label
    tokens, Math-Shepherd style), read at each step's end. The PRM sees
    ``prompt ⊕ step_1 ⊕ "\\n" ⊕ step_2 ⊕ "\\n" …``: every step-end token is replaced 1:1 by the step
    token (PURE ``experience_maker.py``), so positions stay aligned. crs builds one for the embedded task
    on first use (:func:`crs.steps.build.ensure_prm`). Score in ``[0, 1]`` = ``P(correct)``.
``judge``
    CAPO's generative critique: a causal LM reads the prompt and the completion with numbered steps and
    writes ``Wrong step list:[i,j]``; ``critiques`` samples per completion are voted
    (:func:`vote`). Score = 1 − vote (a fraction for ``average``). All calls of a rollout
    are one batched ``generate``; time and tokens are logged (``judge/*``). Built offline for the
    embedded task on first use (:func:`crs.steps.build.ensure_judge`).
``implicit``
    OPRL/iStar's implicit PRM: a trainable copy π_φ of the policy; step reward
    ``β·Σ_{t∈step}(log π_φ − log π_θold)``, then one DPO step on outcome-ranked pairs
    (:mod:`crs.steps.implicit`). Returns real-valued step rewards, not probabilities.

Scores of missing steps are 0; :attr:`StepScorer.kind` says whether a scorer returns probabilities
(``prob``) or rewards (``reward``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from crs.errors import ConfigError
from crs.steps.segment import Steps, step_texts


@dataclass
class RolloutView:
    """What a scorer sees of one rollout batch (``B`` completions, groups contiguous).

    Attributes:
        prompt_ids / prompt_mask: ``[B,P]`` (left-padded, as TRL's).
        completion_ids / completion_mask: ``[B,T]`` (right-padded, EOS included).
        rows: the dataset rows (``prompt``, ``answer``, ...).
        step_texts: decoded text of every step of every row.
        steps: the segmentation.
        success: ``[B]`` bool, the verifier's verdict.
        group_size: completions per prompt.
        trainer: the running trainer (scorers that need the policy: ``implicit``), or ``None``.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    rows: Sequence[Mapping[str, Any]]
    step_texts: list[list[str]]
    steps: Steps
    success: Tensor
    group_size: int
    benchmark: str = ""
    trainer: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def decoded(cls, tokenizer, completion_ids: Tensor, steps: Steps, **fields: Any) -> RolloutView:
        """The view of a segmented rollout, its ``step_texts`` decoded by ``tokenizer`` (the one way the
        step hook and R³L's reflection build it)."""
        return cls(
            completion_ids=completion_ids,
            steps=steps,
            step_texts=step_texts(tokenizer, completion_ids, steps),
            **fields,
        )


class StepScorer:
    """Interface: ``score(view) -> [B,K]``; ``metrics`` holds the last call's cost/quality numbers."""

    name = "base"
    kind = "prob"

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def score(self, view: RolloutView) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _pad_steps(rows: list[list[float]], K: int) -> Tensor:
    out = torch.zeros(len(rows), K)
    for b, r in enumerate(rows):
        if r:
            out[b, : len(r)] = torch.tensor(r[:K], dtype=torch.float32)
    return out


class RuleScorer(StepScorer):
    """Exact process verifier (:mod:`crs.steps.rule`) of the benchmark."""

    name = "rule"

    def __init__(self, benchmark: str):
        super().__init__()
        from crs.steps.rule import PROCESS_VERIFIERS, verify_steps

        if benchmark not in PROCESS_VERIFIERS:
            verify_steps(benchmark, [], {})  # raises the clear ConfigError
        self.benchmark = benchmark

    def score(self, view: RolloutView) -> Tensor:
        from crs.steps.rule import verify_steps

        K = view.steps.valid.shape[1]
        return _pad_steps([verify_steps(self.benchmark, t, r) for t, r in zip(view.step_texts, view.rows)], K)


# ---------------------------------------------------------------------------------------------------- PRM


def prm_inputs(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    steps: Steps,
    step_token_id: int,
    pad_id: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """PURE's PRM input, right-padded: ``prompt ⊕ completion`` with every step-end token → ``step_token_id``.

    Returns:
        ``(input_ids [B,S], attention_mask [B,S], score_pos [B,K])`` where ``score_pos`` is the position
        of each step's end (``-1`` for missing steps).
    """
    B = completion_ids.shape[0]
    seqs, pos = [], torch.full_like(steps.ends, -1)
    for b in range(B):
        p = prompt_ids[b][prompt_mask[b].bool()].tolist()
        L = int(steps.lengths[b])
        c = completion_ids[b, :L].clone()
        k_valid = steps.valid[b]
        ends = steps.ends[b][k_valid]
        c[ends] = step_token_id
        seqs.append(p + c.tolist())
        pos[b, : len(ends)] = ends + len(p)
    S = max(len(s) for s in seqs) if seqs else 0
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    att = torch.zeros(B, S, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        att[b, : len(s)] = 1
    return ids, att, pos


class PRMScorer(StepScorer):
    """A local PRM checkpoint (token classification with 2 labels, or a causal LM with two label tokens)."""

    name = "prm"

    def __init__(
        self,
        path: str,
        step_token: str = "\n",
        good_token: str = "+",
        bad_token: str = "-",
        batch_size: int = 64,
        device: str | None = None,
    ):
        super().__init__()
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        cfg = AutoConfig.from_pretrained(path)
        self.token_cls = any(a.endswith("ForTokenClassification") for a in (cfg.architectures or []))
        cls = AutoModelForTokenClassification if self.token_cls else AutoModelForCausalLM
        self.model = cls.from_pretrained(path).eval()
        if device:
            self.model.to(device)
        ids = self.tokenizer(step_token, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ConfigError(
                f"method.steps.prm.step_token {step_token!r} must be one token of the PRM's tokenizer"
            )
        self.step_token_id = ids[0]
        if not self.token_cls:
            g = self.tokenizer(good_token, add_special_tokens=False).input_ids
            b = self.tokenizer(bad_token, add_special_tokens=False).input_ids
            if len(g) != 1 or len(b) != 1:
                raise ConfigError("method.steps.prm.good_token/bad_token must be single tokens")
            self.label_ids = (b[0], g[0])
        self.batch_size = batch_size
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else 0

    @torch.no_grad()
    def probs(self, input_ids: Tensor, attention_mask: Tensor, pos: Tensor) -> Tensor:
        """``[B,K]`` ``P(correct)`` at ``pos`` (0 where ``pos < 0``)."""
        dev = next(self.model.parameters()).device
        out = torch.zeros(pos.shape, dtype=torch.float32)
        for s in range(0, input_ids.shape[0], self.batch_size):
            sl = slice(s, s + self.batch_size)
            logits = self.model(
                input_ids=input_ids[sl].to(dev), attention_mask=attention_mask[sl].to(dev)
            ).logits
            if not self.token_cls:
                logits = logits[..., list(self.label_ids)]
            prob = torch.softmax(logits.float(), -1)[..., 1].cpu()  # [b,S]
            p = pos[sl]
            out[sl] = torch.where(p >= 0, prob.gather(1, p.clamp(min=0)), torch.zeros_like(prob[:, :1]))
        return out

    def score(self, view: RolloutView) -> Tensor:
        t0 = time.perf_counter()
        ids, att, pos = prm_inputs(
            view.prompt_ids,
            view.prompt_mask,
            view.completion_ids,
            view.steps,
            self.step_token_id,
            self.pad_id,
        )
        out = self.probs(ids, att, pos)
        self.metrics = {"prm/time_s": time.perf_counter() - t0, "prm/tokens": float(att.sum())}
        return out


# -------------------------------------------------------------------------------------------------- judge


def first_wrong(scores: Tensor, valid: Tensor, threshold: float = 0.5) -> Tensor:
    """``[B]`` index of the first step scored below ``threshold`` (−1 if none)."""
    bad = (scores < threshold) & valid
    idx = torch.where(bad.any(1), bad.float().argmax(1), torch.full((scores.shape[0],), -1))
    return idx


# CAPO's vote over k critiques (arXiv 2508.02298): majority as the authors' figure
VOTES = ("majority", "intersection", "union", "average")


def vote(critiques: Sequence[Sequence[set[int]]], K: int, rule: str = "majority") -> Tensor:
    """Aggregate per-completion critiques into a ``[B,K]`` flag matrix.

    Args:
        critiques: for each completion, ``k`` sets of 0-based wrong-step indices.
        K: number of step columns.
        rule: ``majority`` (count > k/2), ``intersection``, ``union``, ``average`` (fraction).
    Returns:
        ``[B,K]`` float: 1/0 flags, or fractions for ``average``.
    """
    if rule not in VOTES:
        raise ConfigError(f"method.steps.judge.vote must be one of {', '.join(VOTES)}, got {rule!r}")
    out = torch.zeros(len(critiques), K)
    for b, sets in enumerate(critiques):
        k = len(sets)
        if k == 0:
            continue
        counts = torch.zeros(K)
        for s in sets:
            for j in s:
                if 0 <= j < K:
                    counts[j] += 1
        if rule == "majority":
            out[b] = (counts > k / 2).float()
        elif rule == "intersection":
            out[b] = (counts == k).float()
        elif rule == "union":
            out[b] = (counts > 0).float()
        else:
            out[b] = counts / k
    return out


JUDGE_QUESTION = "\nWrong step list:"
_LIST_RE = re.compile(r"\[([0-9,\s]*)\]")


def judge_prompt(prompt: str, step_texts: Sequence[str]) -> str:
    """The critique request: the problem, the completion with ``#k`` step markers (1-based), the question.

    CAPO's official figure shows GenPRM outputs ``Wrong step list:[1,3]``; App. D numbers the steps
    ([3P]); the judge prompt text itself is unpublished, so this one is crs's.
    """
    body = "".join(f" #{k + 1}{t if t.startswith(' ') else ' ' + t}" for k, t in enumerate(step_texts))
    return f"{prompt}{body}{JUDGE_QUESTION}"


def judge_target(wrong: Sequence[int]) -> str:
    """``[2,3]``: 1-based indices of the wrong steps (``[]`` if none)."""
    return "[" + ",".join(str(k + 1) for k in wrong) + "]"


def parse_critique(text: str, n_steps: int) -> set[int] | None:
    """0-based wrong steps from a critique, ``None`` if it does not parse (indices out of range dropped)."""
    m = _LIST_RE.search(text)
    if m is None:
        return None
    out = set()
    for tok in m.group(1).replace(" ", "").split(","):
        if tok.isdigit() and 1 <= int(tok) <= n_steps:
            out.add(int(tok) - 1)
    return out


class JudgeScorer(StepScorer):
    """CAPO's LLM-as-GenPRM: ``critiques`` sampled critiques per completion, voted per step."""

    name = "judge"

    def __init__(
        self,
        path: str,
        critiques: int = 4,
        vote: str = "majority",
        temperature: float = 1.0,
        max_new_tokens: int = 12,
        batch_size: int = 256,
        device: str | None = None,
    ):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if vote not in VOTES:
            raise ConfigError(f"method.steps.judge.vote must be one of {', '.join(VOTES)}, got {vote!r}")
        if critiques < 1:
            raise ConfigError(f"method.steps.judge.critiques must be >= 1, got {critiques}")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        if device:
            self.model.to(device)
        self.critiques, self.vote, self.temperature = critiques, vote, temperature
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    @torch.no_grad()
    def critique(self, prompts: list[str], n: int, temperature: float | None = None) -> tuple[list[str], int]:
        """``n`` sampled critiques per prompt (flattened, prompt-major) and the number of generated tokens."""
        temp = self.temperature if temperature is None else temperature
        dev = next(self.model.parameters()).device
        texts, n_tokens = [], 0
        flat = [p for p in prompts for _ in range(n)]
        for s in range(0, len(flat), self.batch_size):
            enc = self.tokenizer(
                flat[s : s + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            )
            gen = self.model.generate(
                **{k: v.to(dev) for k, v in enc.items()},
                do_sample=temp > 0,
                temperature=temp if temp > 0 else None,
                top_p=1.0,
                top_k=0,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :].cpu()
            n_tokens += int((new != self.tokenizer.pad_token_id).sum())
            texts += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return texts, n_tokens

    def score(self, view: RolloutView) -> Tensor:

        t0 = time.perf_counter()
        prompts = [judge_prompt(str(r.get("prompt", "")), t) for r, t in zip(view.rows, view.step_texts)]
        texts, n_tok = self.critique(prompts, self.critiques)
        K = view.steps.valid.shape[1]
        sets, fails = [], 0
        for b, t in enumerate(view.step_texts):
            row = []
            for j in range(self.critiques):
                parsed = parse_critique(texts[b * self.critiques + j], len(t))
                fails += parsed is None
                row.append(parsed if parsed is not None else set())
            sets.append(row)
        flagged = vote(sets, K, self.vote)
        self.metrics = {
            "judge/time_s": time.perf_counter() - t0,
            "judge/calls": float(len(texts)),
            "judge/prompt_tokens": float(
                sum(len(self.tokenizer(p).input_ids) for p in prompts) * self.critiques
            ),
            "judge/gen_tokens": float(n_tok),
            "judge/parse_fail": fails / max(1, len(texts)),
        }
        return (1.0 - flagged) * view.steps.valid
