"""Contrastive token rewards ``r̂`` for tokenized preference pairs (T-REG, arXiv 2412.02685 §3).

The evaluator (the reference model, before any update) scores every response token twice, once after a
"better" and once after a "worse" version of the prompt::

    r̂_t = σ(log π_ref(y_t | x_better, y_<t) − log π_ref(y_t | x_worse, y_<t)) − 0.5        ∈ (−0.5, 0.5)

``x_better``/``x_worse`` are the prompt put through ``better_template``/``worse_template`` (``{prompt}`` = the
prompt text; for a conversational prompt, the last user message's text). The responses are TRL's own
tokenized ``chosen_ids``/``rejected_ids``, so ``r̂`` is aligned token for token with what the DPO loss trains on.

    from crs.prefs.rewards import add_token_rewards
    ds = add_token_rewards(trainer.train_dataset, model, tok, "[+]{prompt}", "[-]{prompt}")
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def contrastive_token_rewards(logp_better: Tensor, logp_worse: Tensor) -> Tensor:
    """``r̂ = σ(log π(y_t|better) − log π(y_t|worse)) − 0.5`` ∈ (−0.5, 0.5), elementwise (any shape, e.g. ``[B,T]``)."""
    return torch.sigmoid(logp_better - logp_worse) - 0.5


@torch.no_grad()
def response_logps(
    model: Any, contexts: list[list[int]], responses: list[list[int]], pad_id: int, batch_size: int = 32
) -> list[torch.Tensor]:
    """Per-token ``log π(y_t | context, y_<t)`` of each response (``[len(response)]`` each), right-padded batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for i in range(0, len(contexts), batch_size):
        ctx, resp = contexts[i : i + batch_size], responses[i : i + batch_size]
        seqs = [c + r for c, r in zip(ctx, resp, strict=True)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            att[j, : len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        logp = (
            torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        )
        for j, (c, r) in enumerate(zip(ctx, resp, strict=True)):
            # the token at position p is predicted at p − 1: response tokens c .. c+len(r)−1
            out.append(logp[j, len(c) - 1 : len(c) - 1 + len(r)].cpu())
    model.train(was_training)
    return out


def _wrap(tokenizer: Any, prompt: Any, template: str) -> list[int]:
    """Token ids of the prompt put through ``template`` (text, or the last user turn of a conversation)."""
    if isinstance(prompt, str):
        return list(tokenizer(template.format(prompt=prompt))["input_ids"])
    messages = [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if users:
        messages[users[-1]]["content"] = template.format(prompt=messages[users[-1]]["content"])
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def add_token_rewards(
    dataset: Any, model: Any, tokenizer: Any, better_template: str, worse_template: str, batch_size: int = 32
) -> Any:
    """Add ``chosen_token_rewards``/``rejected_token_rewards`` (one float per ``chosen_ids``/``rejected_ids``
    token) to a dataset TRL's ``DPOTrainer._prepare_dataset`` tokenized (columns ``prompt``, ``chosen_ids``,
    ``rejected_ids``)."""
    prompts = dataset["prompt"]
    better = [_wrap(tokenizer, p, better_template) for p in prompts]
    worse = [_wrap(tokenizer, p, worse_template) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cols: dict[str, list[list[float]]] = {}
    for side in ("chosen", "rejected"):
        resp = [list(r) for r in dataset[f"{side}_ids"]]
        lb = response_logps(model, better, resp, pad, batch_size)
        lw = response_logps(model, worse, resp, pad, batch_size)
        cols[f"{side}_token_rewards"] = [contrastive_token_rewards(b, w).tolist() for b, w in zip(lb, lw)]
    for name, values in cols.items():
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
        dataset = dataset.add_column(name, values)
    return dataset
