"""InT — self-proposed interventions (arXiv 2601.14209; code intervention-training/int, no licence).

Spec: docs/methods/steps.md §4. For a *failed* trace the model locates its first wrong step (conditioned on
a reference solution) and proposes a one-step fix; the policy is fine-tuned on **prefix + intervention**
(never the suffix, no EOS), then RL goes on. crs runs this stage inside RL, once per rollout, as the
``int`` credit step's rollout-time producer (so it is schedulable like every method: the schedule
drives ``rate``, the fraction of failed traces that get an intervention):

1. **locate** the first wrong step of each failed completion with the configured step scorer
   (``method.steps.scorer``: ``judge`` = a critique model, ``prm``, or ``rule`` = the exact verifier,
   an oracle upper bound); the rule verifier tells how often the located step is the true first error
   (``int/located_correct``, logged);
2. **propose**: the policy itself samples ``candidates`` replacements for that step from the prefix; the
   reference solution selects one that agrees with its own step (InT conditions the proposer on the
   reference in-context; a 0.3M-parameter policy cannot read one, so the reference acts as a filter —
   the same role as InT's optional "≥ 1 of 32 continuations correct" filter) [INF, documented];
3. **SFT** the policy on ``prompt → prefix ⊕ intervention`` (loss on the completion part, no EOS) for
   ``sft_steps`` AdamW steps with its own optimizer (InT: lr 1e-6 for a 4B model; toy models need more).

The RL loss of the rollout is GRPO's (the step leaves advantages unchanged). Logged: ``int/failed``,
``int/located_correct``, ``int/fix_found``, ``int/sft_loss``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError
from crs.steps.scorers import RolloutView, first_wrong


def reference_steps(prompt: str) -> list[str] | None:
    """The embedded task's worked solution cut into steps (``' 7+5=12,'``, …, ``' Answer: 9'``)."""
    from crs.benchmarks.arithmetic import Problem, parse_prompt, solution_text

    parsed = parse_prompt(prompt)
    if parsed is None:
        return None
    text = solution_text(Problem(tuple(parsed[0]), tuple(parsed[1])))
    parts, cur = [], ""
    for ch in text:
        cur += ch
        if ch in ",.":
            parts.append(cur)
            cur = ""
    if cur:
        parts.append(cur)
    return parts


def _norm(s: str) -> str:
    return s.strip().rstrip(",.").strip()


class _SFT:
    def __init__(self, lr: float):
        self.lr, self.opt, self.model = lr, None, None

    def step(self, model, tokenizer, prompts: list[str], targets: list[str], steps: int) -> float:
        if self.opt is None or self.model is not model:
            self.model = model
            self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.lr)
        dev = next(model.parameters()).device
        p_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        t_ids = [tokenizer(t, add_special_tokens=False).input_ids for t in targets]
        S = max(len(a) + len(b) for a, b in zip(p_ids, t_ids))
        pad = tokenizer.pad_token_id or 0
        ids = torch.full((len(prompts), S), pad)
        att = torch.zeros(len(prompts), S, dtype=torch.long)
        labels = torch.full((len(prompts), S), -100)
        for i, (a, b) in enumerate(zip(p_ids, t_ids)):
            ids[i, : len(a) + len(b)] = torch.tensor(a + b)
            att[i, : len(a) + len(b)] = 1
            labels[i, len(a) : len(a) + len(b)] = torch.tensor(b)
        ids, att, labels = ids.to(dev), att.to(dev), labels.to(dev)
        was = model.training
        model.train()
        loss_v = float("nan")
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            self.opt.step()
            loss_v = float(loss.detach())
        model.train(was)
        return loss_v


_SFT_STATE: dict[int, _SFT] = {}


@torch.no_grad()
def _propose(model, tokenizer, contexts: list[str], n: int, max_new_tokens: int = 12) -> list[list[str]]:
    dev = next(model.parameters()).device
    tokenizer.padding_side = "left"
    enc = tokenizer(
        [c for c in contexts for _ in range(n)], return_tensors="pt", padding=True, add_special_tokens=False
    )
    gen = model.generate(
        **{k: v.to(dev) for k, v in enc.items()},
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :].cpu(), skip_special_tokens=True)
    out = []
    for i in range(len(contexts)):
        cands = []
        for t in texts[i * n : (i + 1) * n]:
            cut = min([j for j in (t.find(","), t.find(".")) if j >= 0], default=-1)
            cands.append(t[: cut + 1] if cut >= 0 else t)
        out.append(cands)
    return out


def produce(view: RolloutView, scores: Tensor, kind: str, args: Mapping[str, Any], outcome: Tensor):
    tr = view.trainer
    metrics = tr._metrics["train"] if tr is not None else None
    failed = (~view.success.bool()).nonzero().flatten().tolist()
    if not failed or tr is None:
        return {}
    from crs.steps.rule import PROCESS_VERIFIERS, verify_steps

    g = torch.Generator().manual_seed(int(tr.state.global_step))
    chosen = [b for b in failed if float(torch.rand(1, generator=g)) < args["rate"]][
        : args["max_per_rollout"]
    ]
    loc = first_wrong(scores if kind == "prob" else (scores >= 0).float(), view.steps.valid)
    located_ok, contexts, meta = [], [], []
    for b in chosen:
        k = int(loc[b])
        row = view.rows[b]
        if view.benchmark in PROCESS_VERIFIERS:
            truth = verify_steps(view.benchmark, view.step_texts[b], row)
            true_k = next((i for i, v in enumerate(truth) if v < 0.5), -1)
            located_ok.append(float(k == true_k))
        ref = reference_steps(str(row.get("prompt", "")))
        if k < 0 or ref is None or k >= len(ref):
            continue
        prefix = "".join(view.step_texts[b][:k])
        contexts.append(str(row.get("prompt", "")) + prefix)
        meta.append((str(row.get("prompt", "")), prefix, ref[k]))
    model = tr.accelerator.unwrap_model(tr.model)
    prompts, targets = [], []
    if contexts:
        cands = _propose(model, tr.processing_class, contexts, int(args["candidates"]))
        for (prompt, prefix, ref_step), cs in zip(meta, cands):
            fix = next((c for c in cs if _norm(c) == _norm(ref_step)), None)
            if fix is not None:
                prompts.append(prompt)
                targets.append(prefix + (fix if fix.startswith(" ") or not prefix else fix))
    if metrics is not None:
        metrics["int/failed"].append(float(len(failed)))
        if located_ok:
            metrics["int/located_correct"].append(sum(located_ok) / len(located_ok))
        if chosen:
            metrics["int/fix_found"].append(len(targets) / len(chosen))
    if targets:
        sft = _SFT_STATE.setdefault(id(tr), _SFT(float(args["lr"])))
        loss = sft.step(model, tr.processing_class, prompts, targets, int(args["sft_steps"]))
        if metrics is not None:
            metrics["int/sft_loss"].append(loss)
    return {}


def intervention(
    batch: CreditBatch,
    rate: float = 1.0,
    # read by produce() from Method.defaults, never by this step: a mutant here is equivalent under mutmut
    # (its wrapper keeps the original signature), so they are not mutated (docs/mutation.md)
    max_per_rollout: int = 16,  # pragma: no mutate
    candidates: int = 8,  # pragma: no mutate
    sft_steps: int = 1,  # pragma: no mutate
    lr: float = 1e-4,  # pragma: no mutate
) -> CreditBatch:
    """InT (arXiv 2601.14209): SFT on prefix + self-proposed one-step fix of failed traces, then RL.

    The intervention stage runs at rollout time (:func:`produce`); the RL loss is GRPO's.
    The schedule drives ``rate`` (fraction of failed traces intervened on; ρ = 0: GRPO).
    """
    if not 0 <= rate <= 1:
        raise ConfigError(f"int.rate must be in [0, 1], got {rate}")
    if candidates < 1 or sft_steps < 0 or lr <= 0:
        raise ConfigError("int.candidates must be >= 1, int.sft_steps >= 0 and int.lr > 0")
    return batch


METHOD = Method(
    "int",
    intervention,
    help={
        "rate": "Fraction of failed traces that get an intervention (the schedule's knob; 0 = GRPO).",
        "max_per_rollout": "At most this many interventions per rollout (bounds the SFT cost).",
        "candidates": "Replacement steps the policy samples for the located wrong step.",
        "sft_steps": "AdamW steps of SFT on prefix + intervention per rollout (InT: 1 pass).",
        "lr": "SFT learning rate (InT: 1e-6 for a 4B model; toy models need far more).",
    },
    ranges={
        "rate": "[0, 1]",
        "max_per_rollout": "[1, inf)",
        "candidates": "[1, inf)",
        "sft_steps": "[0, inf)",
        "lr": "(0, inf)",
    },
    substrate="steps",
    benchmarks=("single_turn",),
    one_process="its SFT on the interventions updates the policy inside the rollout hook, which the other "
    "processes would not see",
    produce=produce,
)
