"""Batched generation for ``crs eval``: ``n`` samples per problem at a temperature, plus one greedy decode.

Problems are generated ``eval.batch_size`` at a time, each expanded to ``n`` sequences in one
``generate`` call (left padding); ``eval.engine=hf_static`` uses transformers' static KV cache (several
times faster decode steps on GPUs, docs/gpu.md). Chat prompts go through the tokenizer's chat template
(Qwen3: its default thinking mode); a tokenizer without one joins the messages' text. Sampling runs inside
``torch.random.fork_rng`` from ``eval.seed``, so the same model, seed and batch size give the same samples.
A rich progress bar shows problems/s.

    from crs.eval.sampling import generate_all
    outs = generate_all(model, tok, prompts, n=8, temperature=1.0, max_new_tokens=64)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Generations:
    """One problem's completions: ``samples`` (n texts), ``greedy`` (text or None), token counts."""

    samples: list[str]
    greedy: str | None
    tokens: int  # generated tokens over the n samples (through EOS)
    truncated: int  # samples without EOS within the budget


def render_prompt(tokenizer: Any, prompt: Any) -> str:
    """A plain string as is; chat messages through the chat template (or their text joined)."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "\n".join(str(m.get("content", "")) for m in prompt)


def _generate(model, tokenizer, texts: list[str], *, sample: bool, n: int, settings: dict[str, Any]):
    import torch

    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    kwargs: dict[str, Any] = dict(
        max_new_tokens=settings["max_new_tokens"],
        do_sample=sample,
        num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
    )
    if sample:
        kwargs.update(temperature=settings["temperature"], top_p=settings["top_p"], top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if settings.get("engine") == "hf_static":
        kwargs["cache_implementation"] = "static"
    with torch.no_grad():
        out = model.generate(
            input_ids=enc["input_ids"].to(model.device),
            attention_mask=enc["attention_mask"].to(model.device),
            **kwargs,
        )
    gen = out[:, enc["input_ids"].shape[1] :].cpu()
    is_eos = gen == eos
    has_eos = is_eos.any(dim=1)
    first = torch.where(
        has_eos, is_eos.int().argmax(dim=1) + 1, torch.full_like(has_eos, gen.shape[1], dtype=torch.long)
    )
    decoded = tokenizer.batch_decode(gen, skip_special_tokens=True)
    return decoded, first.tolist(), (~has_eos).tolist()


def generate_all(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    n: int,
    temperature: float,
    max_new_tokens: int,
    top_p: float = 1.0,
    batch_size: int = 16,
    greedy: bool = True,
    seed: int = 0,
    engine: str = "hf",
    label: str = "eval",
) -> list[Generations]:
    """``n`` samples (and a greedy decode) for every prompt, in prompt order.

    Args:
        model: a transformers causal LM (eval mode is set and restored).
        tokenizer: its tokenizer; left padding is set for the call.
        prompts: strings or chat messages.
        n, temperature, top_p, max_new_tokens: sampling settings (no top-k truncation).
        batch_size: problems per generate call (× n sequences).
        greedy: one greedy decode per problem too.
        seed: sampling seed (the caller's RNG state is untouched).
        engine: ``hf`` (dynamic cache) or ``hf_static``.
        label: the progress bar's description.
    """
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from crs.progress import console

    settings = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, engine=engine)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    texts = [render_prompt(tokenizer, p) for p in prompts]
    out: list[Generations] = []
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("problems"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    try:
        with torch.random.fork_rng(devices=[]), Progress(*columns, console=console, transient=True) as bar:
            torch.manual_seed(seed)
            task = bar.add_task(label, total=len(texts), rate="")
            for i in range(0, len(texts), batch_size):
                chunk = texts[i : i + batch_size]
                samples, lengths, trunc = _generate(
                    model, tokenizer, chunk, sample=True, n=n, settings=settings
                )
                greedy_texts = [None] * len(chunk)
                if greedy:
                    greedy_texts, _, _ = _generate(
                        model, tokenizer, chunk, sample=False, n=1, settings=settings
                    )
                for j in range(len(chunk)):
                    sl = slice(j * n, (j + 1) * n)
                    out.append(Generations(samples[sl], greedy_texts[j], sum(lengths[sl]), sum(trunc[sl])))
                bar.advance(task, len(chunk))
                speed = bar.tasks[0].speed
                bar.update(task, rate=f"{speed:.2f} problems/s" if speed else "")
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out
