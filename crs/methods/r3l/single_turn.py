"""R³L reflect-then-retry generation, single-turn (arXiv 2601.03715; ``shiweijiezero/R3L``).

The authors' loop (``R3L_workflow.py`` l.190-349, spec ``docs/methods/turns.md`` §4): per task, ``n/2`` first
attempts; each failed one is *reflected on* (the policy writes a JSON report naming ``retry_from_step``),
then *retried* from that pivot — the first attempt's steps before the pivot are replayed verbatim, the
rest regenerated with the same sampling settings and a guidance message in context; the retry's training
sample has the guidance **removed** ("distilled out"). First attempts and distilled retries form one
advantage group; **pivotal credit** zeroes the loss on the shared prefix of *both* the retry and its
matching first attempt, and positive amplification (``r3l_amplify``) reshapes the advantages.

crs's port, run at rollout time inside TRL's ``_generate_single_turn`` (wired by ``CreditGRPOTrainer``):

1. **Slots.** TRL's batch has a fixed shape (prompts × ``G``); groups are contiguous. The first
   ``G − R`` slots of each group are first attempts, the last ``R = round(retry_share·G)`` are retry
   slots (``retry_share = 0.5`` = the authors' ``n/2`` + up to ``n/2``). Retry slot ``j`` retries the
   ``j``-th *eligible* failed first attempt of its group (index order); a slot with no failure left is a
   fresh sample from the prompt. **Deviation:** the authors' group has variable size (4-8: only retries
   of failures join it); crs keeps TRL's fixed shape and fills the gap with fresh samples, so a group
   without failures is plain GRPO. (:func:`assign_retries`)
2. **Reflect.** A 0.3M-parameter policy cannot write a JSON report, so the reflection is the configured
   step scorer (``method.steps.scorer``): ``rule`` = the exact process verifier (an oracle reflector, an
   upper bound), ``judge`` / ``prm`` = crs's built critique model / PRM (learned, imperfect reflectors).
   Pivot = the first step scored wrong; none found ⇒ no retry (the authors' invalid/perfect-report path).
   The verifier (the benchmark's first reward function) decides failure: reward < 1 (full reward).
   ``rate`` (the schedulable knob) is the chance an eligible failure is retried (ρ = 0: no retries).
3. **Retry.** Context = ``guidance? ⊕ prompt ⊕ prefix`` where ``prefix`` = the first attempt's own
   tokens of steps ``< pivot`` (exact ids, never re-tokenised); the policy continues with TRL's
   generation (same temperature/top-p/max tokens). The retry's completion = ``prefix ⊕ new tokens``
   (capped at ``max_completion_length``); its prompt is TRL's prompt, so the training sample never holds
   the guidance. (:func:`splice`)
4. **Guidance** (``guidance``, default ``null``): a format string (``{step}`` = 1-based pivot step,
   ``{text}`` = the wrong step's text) put *before* the prompt — the authors' pivot-0 placement (merged
   into the system prompt); for pivot > 0 they add a system message after the replayed prefix, which in a
   plain-text completion would sit inside the answer. Off by default: the tiny models never saw such
   text (it derails them), and a retry sampled under guidance but trained without it is off-policy, which
   the authors tolerate only because their OPMD loss has no ratio (use ``loss=opmd`` with guidance).
5. **Pivotal credit.** :func:`pivot_rows` gives each row its pivot *token* position (retry slot and its
   source first attempt alike, 0 elsewhere); the ``r3l`` mask step multiplies
   :func:`crs.methods.r3l.masks.pivot_token_mask` into TRL's loss-only ``tool_mask`` (``pivotal: false`` = the
   authors' ``w/o_credit`` ablation).

Not ported: the authors' SFT-like extras — the reflection generation itself (reward 1, singleton group)
and the *guided* retry on improvement — since crs's reflector is not the policy. The multi-turn path
(``benchmark=maze`` / ``calc_tool``: pivot = a turn, the prefix's actions replayed in the slot's own
environment) is :mod:`crs.methods.r3l.episodes`, which reuses this module's slot rule, verifier call and record.

Logged (``r3l/*``): ``first_success`` (first attempts), ``retry_rate`` (retries / failed first attempts),
``retry_success`` (verifier success of retries), ``pivot_step`` (mean pivot, 0-based step),
``pivot_token`` (mean prefix length), ``pivot_is_rule`` (share of retries whose pivot is the rule
verifier's first wrong step; only when the scorer is not ``rule``), ``slot_fill`` (retries / retry slots).

    crs train method=r3l                                   # oracle reflector (rule verifier)
    crs train method=r3l method.steps.scorer=judge         # the built critique model reflects
    crs train method=r3l loss=opmd                         # with the authors' ratio-free OPMD loss
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

SCORERS = ("rule", "prm", "judge")


# --------------------------------------------------------------------------------------------- pure math


def retry_slot_count(group_size: int, retry_share: float) -> int:
    """``R = round(retry_share·G)`` retry slots per group (at least 1 first attempt must remain)."""
    return int(round(retry_share * group_size))


def assign_retries(eligible: Tensor, group_size: int, retry_slots: int) -> Tensor:
    """Which first attempt each retry slot retries.

    Args:
        eligible: ``[B]`` bool, the first attempt failed, has a pivot, and was drawn for a retry
            (only the first ``G − R`` slots of each group are read).
        group_size: ``G`` (groups are contiguous rows).
        retry_slots: ``R`` (the last ``R`` slots of each group).
    Returns:
        ``[B]`` long ``source``: for retry slot ``b``, the row index of the first attempt it retries, or
        ``−1`` (a fresh sample); ``−1`` on first-attempt slots.
    """
    B, G, R = eligible.shape[0], group_size, retry_slots
    src = torch.full((B,), -1, dtype=torch.long)
    for g0 in range(0, B, G):
        cands = [g0 + i for i in range(G - R) if bool(eligible[g0 + i])]
        for j, s in enumerate(cands[:R]):
            src[g0 + G - R + j] = s
    return src


def step_start(ends: Tensor, pivot_step: Tensor) -> Tensor:
    """``[B]`` long: first token of step ``pivot_step[b]`` (0 for step 0, ``ends[b,k−1]+1`` otherwise).

    Args:
        ends: ``[B,K]`` last token of each step (:class:`crs.steps.segment.Steps`).
        pivot_step: ``[B]`` long step index (``< 0`` ⇒ 0).
    """
    k = pivot_step.long().clamp(min=0)
    prev = ends.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1) + 1 if ends.numel() else k * 0
    return torch.where(k > 0, prev, torch.zeros_like(k))


def pivot_rows(source: Tensor, first_pos: Tensor) -> Tensor:
    """``[B]`` pivot token position of every row: a retry slot and the first attempt it retries share
    ``first_pos[source]``; every other row gets 0 (fully trained).

    Args:
        source: ``[B]`` from :func:`assign_retries`.
        first_pos: ``[B]`` pivot token position computed on the first attempts (read at source rows).
    """
    pos = torch.zeros_like(source)
    r = (source >= 0).nonzero().flatten()
    if r.numel():
        pos[r] = first_pos[source[r]]
        pos[source[r]] = first_pos[source[r]]
    return pos


def splice(prefix: Sequence[int], suffix: Sequence[int], max_len: int) -> list[int]:
    """The retry's completion ids: the replayed prefix then the regenerated tokens, at most ``max_len``."""
    return (list(prefix) + list(suffix))[:max_len]


# --------------------------------------------------------------------------------------------- the stage


def _pad(seqs: Sequence[Sequence[int]], pad: int, left: bool) -> tuple[Tensor, Tensor]:
    L = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), max(L, 1)), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), max(L, 1), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            sl = slice(L - len(s), L) if left else slice(0, len(s))
            ids[i, sl], mask[i, sl] = torch.tensor(list(s)), 1
    return ids, mask


class R3LRetry:
    """Built once per run (like :class:`crs.steps.hook.StepHook`) when the chain holds ``r3l`` (:data:`crs.methods.r3l.METHOD`'s ``rollouts`` hook).

    Args:
        chain: the run's :class:`~crs.methods.chain.CreditChain`.
        steps_cfg: ``method.steps`` (separators, scorer).
        benchmark: the built benchmark (its name picks the rule verifier; the trainer's first reward
            function is the verifier that decides failure).
        tokenizer: the policy's tokenizer.
        policy_path / cache_dir: where PRM/judge builds start from / are cached.
        scorer: a ready :class:`~crs.steps.scorers.StepScorer` (tests), else built from ``steps_cfg``.
    """

    def __init__(self, chain, steps_cfg, benchmark, tokenizer, policy_path=None, cache_dir=None, scorer=None):
        from crs.steps.choose import build_scorer
        from crs.steps.rule import PROCESS_VERIFIERS
        from crs.steps.segment import separator_token_ids

        self.chain = chain
        self.tokenizer = tokenizer
        self.benchmark = benchmark
        self.last: dict[str, Any] = {}
        self.multi_turn = (getattr(benchmark, "info", None) or {}).get("environment_factory") is not None
        self.scorer, self.check_rule = scorer, False
        if self.multi_turn:  # turns are reflected on by crs.envs.verifiers.TURN_VERIFIERS
            return
        self.sep_ids = separator_token_ids(tokenizer, list(steps_cfg.get("separators") or [",", "."]))
        task = (getattr(benchmark, "info", None) or {}).get("config")
        self.scorer = scorer or build_scorer(steps_cfg, benchmark.name, cache_dir, policy_path, task)
        self.check_rule = self.scorer.name != "rule" and benchmark.name in PROCESS_VERIFIERS

    def args(self, rho: float) -> dict[str, Any]:
        return next(a for p, a in self.chain.args_at(rho) if p.method.name == "r3l")

    @staticmethod
    def _rewards(trainer, rows, texts, ids, **extra: Any) -> list[float]:
        """The trainer's first reward function (the verifier, as for ``success``) on the first attempts."""
        verifier = trainer.reward_funcs[0]
        if isinstance(verifier, torch.nn.Module):
            raise RuntimeError(
                "r3l needs a function verifier as the first reward function, not a reward model"
            )
        keys = [k for k in rows[0] if k not in ("prompt", "completion", "completion_ids")] if rows else []
        kw = {k: [r.get(k) for r in rows] for k in keys} | extra
        out = verifier(prompts=[r.get("prompt") for r in rows], completions=texts, completion_ids=ids, **kw)
        return [float("nan") if v is None else float(v) for v in out]

    def _reflect(self, prompt_ids, comps, rows, success, group_size):
        """Pivot step (−1 = none) and its first token per first attempt, plus step texts."""
        from crs.steps.scorers import RolloutView, first_wrong
        from crs.steps.segment import segment_batch

        pad = self.tokenizer.pad_token_id or 0
        p_ids, p_mask = _pad(prompt_ids, pad, left=True)
        c_ids, c_mask = _pad(comps, pad, left=False)
        steps = segment_batch(c_ids, c_mask, self.sep_ids)
        view = RolloutView.decoded(
            self.tokenizer,
            c_ids,
            steps,
            prompt_ids=p_ids,
            prompt_mask=p_mask,
            completion_mask=c_mask,
            rows=rows,
            success=success,
            group_size=group_size,
            benchmark=self.benchmark.name,
        )
        scores = self.scorer.score(view).float().cpu()
        k = first_wrong(scores, steps.valid) if scores.numel() else torch.full((len(comps),), -1)
        return k, step_start(steps.ends, k), view.step_texts

    def generate(
        self,
        trainer,
        prompt_ids: list[list[int]],
        rows: Sequence[Mapping[str, Any]],
        gen: Callable[[list[list[int]]], tuple[list[list[int]], list | None]],
        rho: float,
    ) -> tuple[list[list[int]], list | None]:
        """First attempts → reflect → retries; returns TRL's ``(completion_ids, logprobs)`` for all rows.

        ``gen(prompt_ids) -> (completion_ids, logprobs)`` is the trainer's own generation (same settings).
        """
        a = self.args(rho)
        B, G = len(prompt_ids), int(trainer.num_generations)
        R = retry_slot_count(G, float(a["retry_share"]))
        if B % G:
            raise RuntimeError(f"r3l: the rollout batch ({B}) is not whole groups of {G}")
        first = [b for b in range(B) if b % G < G - R]
        c1, lp1 = gen([prompt_ids[b] for b in first])
        comps: list[list[int]] = [[] for _ in range(B)]
        for b, c in zip(first, c1):
            comps[b] = list(c)
        frows = [rows[b] for b in first]
        texts = self.tokenizer.batch_decode(c1, skip_special_tokens=True)
        r1 = torch.tensor(self._rewards(trainer, frows, texts, c1))
        failed_f = ~(r1 >= 1.0)  # reward below full (NaN = no verdict counts as a failure)
        # reflect on the failed first attempts only (a judge's critiques cost a generation each)
        k_f, pos_f = (
            torch.full((len(first),), -1, dtype=torch.long),
            torch.zeros(len(first), dtype=torch.long),
        )
        steps_f: list[list[str]] = [[] for _ in first]
        fail_i = failed_f.nonzero().flatten().tolist()
        if fail_i:
            k, pos, texts_f = self._reflect(
                [prompt_ids[first[i]] for i in fail_i],
                [c1[i] for i in fail_i],
                [frows[i] for i in fail_i],
                torch.zeros(len(fail_i), dtype=torch.bool),
                1,  # the failed rows are not whole groups (rule/prm/judge do not read group_size)
            )
            k_f[fail_i], pos_f[fail_i] = k.long(), pos.long()
            for i, t in zip(fail_i, texts_f):
                steps_f[i] = t
        g = torch.Generator().manual_seed(int(trainer.state.global_step) if trainer is not None else 0)
        drawn = torch.rand(len(first), generator=g) < float(a["rate"])
        idx = torch.tensor(first, dtype=torch.long)
        eligible = torch.zeros(B, dtype=torch.bool)
        eligible[idx] = failed_f & (k_f >= 0) & drawn
        pivot_step = torch.full((B,), -1, dtype=torch.long)
        pivot_step[idx] = k_f
        first_pos = torch.zeros(B, dtype=torch.long)
        first_pos[idx] = pos_f
        source = assign_retries(eligible, G, R)
        # retry contexts (guidance? ⊕ prompt ⊕ prefix) and fresh samples for unfilled slots
        slots = [b for b in range(B) if b % G >= G - R]
        guidance = a.get("guidance")
        ctx, prefixes = [], []
        for b in slots:
            s = int(source[b])
            if s < 0:
                ctx.append(list(prompt_ids[b]))
                prefixes.append([])
                continue
            prefix = comps[s][: int(first_pos[s])]
            head: list[int] = []
            if guidance:
                k = int(pivot_step[s])
                fi = first.index(s)
                text = steps_f[fi][k] if k < len(steps_f[fi]) else ""
                head = self.tokenizer(
                    str(guidance).format(step=k + 1, text=text.strip()), add_special_tokens=False
                )["input_ids"]
            ctx.append(head + list(prompt_ids[b]) + prefix)
            prefixes.append(prefix)
        c2, lp2 = gen(ctx) if ctx else ([], None)
        max_len = int(trainer.max_completion_length) if trainer is not None else 10**9
        for b, prefix, c in zip(slots, prefixes, c2):
            comps[b] = splice(prefix, c, max_len)
        logprobs = None
        if lp1 is not None and lp2 is not None:  # vLLM: the prefix keeps the first attempt's log-probs
            lps: list[list[float]] = [[] for _ in range(B)]
            for b, lp in zip(first, lp1):
                lps[b] = list(lp)
            for b, prefix, lp in zip(slots, prefixes, lp2):
                s = int(source[b])
                lps[b] = ((lps[s][: len(prefix)] if s >= 0 else []) + list(lp))[: len(comps[b])]
            logprobs = lps
        self.last = {
            "source": source,
            "pivot_pos": pivot_rows(source, first_pos),
            "pivot_step": pivot_step,
            "pivot_token": first_pos,
            "first_failed": int(failed_f.sum()),
            "first_success": float((~failed_f).float().mean()) if len(first) else float("nan"),
            "contexts": dict(zip(slots, ctx)),
            "generated": {b: list(c) for b, c in zip(slots, c2)},
            "slots": R * (B // G),
            "rule_match": self._rule_match(source, pivot_step, steps_f, first, rows),
        }
        return comps, logprobs

    def _rule_match(self, source, pivot_step, steps_f, first, rows) -> list[float]:
        if not self.check_rule:
            return []
        from crs.steps.rule import verify_steps

        out = []
        for s in source[source >= 0].tolist():
            truth = verify_steps(self.benchmark.name, steps_f[first.index(s)], rows[s])
            true_k = next((i for i, v in enumerate(truth) if v < 0.5), -1)
            out.append(float(int(pivot_step[s]) == true_k))
        return out

    def features(self, trainer, out: Mapping[str, Tensor], success: Tensor, rho: float) -> dict[str, Tensor]:
        """``{"r3l_keep": [B,T]}`` (1 on trainable tokens; all ones with ``pivotal: false``) and the logs.

        Args:
            out: TRL's rollout dict (``completion_mask``, ``tool_mask``; rows in generation order).
            success: ``[B]`` bool verifier verdicts of the final rows.
        """
        from crs.methods.r3l.masks import pivot_suffix_mask, pivot_token_mask

        completion_mask = out["completion_mask"]

        last = self.last  # this rollout's record (kept for inspection until the next rollout)
        if not last:
            return {}
        src, pos = last["source"], last["pivot_pos"]
        if not self.args(rho)["pivotal"]:
            pos = torch.zeros_like(pos)
        pos = pos.to(completion_mask.device)
        if last.get("kind") == "turn":  # multi-turn: pos = pivot turn (episodes.py)
            loss = completion_mask.float() * out.get("tool_mask", torch.ones_like(completion_mask)).float()
            keep = pivot_suffix_mask(loss, pos)
        else:
            keep = pivot_token_mask(torch.ones_like(completion_mask, dtype=torch.float32), pos)
        if trainer is not None:
            m = trainer._metrics["train"]
            retries = src >= 0
            n = int(retries.sum())
            m["r3l/first_success"].append(last["first_success"])
            m["r3l/retry_rate"].append(n / last["first_failed"] if last["first_failed"] else 0.0)
            m["r3l/slot_fill"].append(n / last["slots"] if last["slots"] else 0.0)
            for key, v in (self.scorer.metrics if self.scorer is not None else {}).items():
                m[key].append(float(v))
            if n:
                m["r3l/retry_success"].append(float(success.cpu()[retries].float().mean()))
                m["r3l/pivot_step"].append(float(last["pivot_step"][src[retries]].float().mean()))
                m["r3l/pivot_token"].append(float(last["pivot_token"][src[retries]].float().mean()))
            if last["rule_match"]:
                m["r3l/pivot_is_rule"].append(sum(last["rule_match"]) / len(last["rule_match"]))
        return {"r3l_keep": keep}
