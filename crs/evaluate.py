"""Sampling-based evaluation of a causal LM on a verifiable task: pass@1, pass@k, greedy accuracy, entropy.

The numbers describe the *policy* RL starts from or ends with: ``pass@1`` is the expected accuracy
of one sample at the training temperature (what GRPO's mean reward estimates), ``pass@k`` how often
at least one of ``k`` samples is right (the headroom group-relative RL can exploit), and
``mean_token_entropy`` whether the sampling distribution has collapsed.

Example::

    from crs.evaluate import evaluate_model
    from crs.benchmarks import build_benchmark
    bench = build_benchmark({"name": "arithmetic"}, seed=0)
    metrics = evaluate_model(model, tokenizer, bench.eval["prompt"], bench.eval["answer"], bench.verify, k=8)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al., 2021) from ``n`` samples of which ``c`` are correct.

    ``1 - C(n-c, k) / C(n, k)``; with ``n == k`` it reduces to "any of the k samples is correct".
    """
    if k > n:
        raise ValueError(f"k={k} > n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _completion_mask(gen_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """(B, T) bool mask that is True up to and including the first EOS (like TRL's completion_mask)."""
    is_eos = torch.zeros_like(gen_ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= gen_ids == e
    # number of EOS tokens strictly before position t; a token is valid iff it is 0
    before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return before == 0


@torch.no_grad()
def _generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    do_sample: bool,
    num_return_sequences: int,
    temperature: float,
    max_new_tokens: int,
) -> tuple[list[str], torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Generate for a batch of prompts.

    Returns:
        texts: ``len(prompts) * num_return_sequences`` decoded completions (prompt-major order);
        mask: (N, T) bool completion mask (through the first EOS);
        entropy: (N, T) float per-token entropy in nats of ``softmax(logits / temperature)``, or ``None``
        for greedy decoding;
        truncated: (N,) bool, True where no EOS was generated within ``max_new_tokens``.
    """
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_return_sequences=num_return_sequences,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        return_dict_in_generate=True,
        output_logits=do_sample,
    )
    if do_sample:
        # plain temperature sampling, as GRPO samples (no top-k / top-p truncation)
        gen_kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    out = model.generate(
        input_ids=enc["input_ids"].to(model.device),
        attention_mask=enc["attention_mask"].to(model.device),
        **gen_kwargs,
    )
    gen_ids = out.sequences[:, enc["input_ids"].shape[1] :].cpu()  # (N, T)
    mask = _completion_mask(gen_ids, [eos])
    texts = tokenizer.batch_decode(gen_ids, skip_special_tokens=True)
    entropy = None
    if do_sample:
        logits = torch.stack(out.logits, dim=1).float().cpu()  # (N, T, V) raw logits
        logp = torch.log_softmax(logits / temperature, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)  # (N, T)
    truncated = ~(gen_ids == eos).any(dim=1)
    return texts, mask, entropy, truncated


def evaluate_model(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    answers: list[str],
    verify: Callable[[str, str], bool],
    k: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    seed: int = 0,
    greedy: bool = True,
) -> dict[str, float]:
    """Sample ``k`` completions per prompt (and one greedy completion) and score them with ``verify``.

    Args:
        model: a ``transformers`` causal LM.
        tokenizer: its tokenizer; must pad on the left (decoder-only batched generation).
        prompts (`list[str]`): plain-text prompts (standard, non-chat format).
        answers (`list[str]`): reference answers, aligned with ``prompts``.
        verify: ``verify(completion_text, answer) -> bool``.
        k (`int`): samples per prompt.
        temperature (`float`): sampling temperature (use the RL training temperature).
        max_new_tokens (`int`): generation budget; completions without EOS by then are truncated (and
            usually wrong).
        batch_size (`int`): prompts per ``generate`` call (each expanded to ``k`` sequences).
        seed (`int`): sampling seed. Sampling runs inside ``torch.random.fork_rng()`` so the caller's
            RNG state is untouched; results are deterministic for a given seed and batch_size.
        greedy (`bool`): also decode greedily (one extra pass).

    Returns:
        `dict` with ``pass@1`` (mean accuracy over all samples), ``pass@k`` and ``pass@<k>`` (unbiased
        estimator with n = k, i.e. fraction of prompts with at least one correct sample),
        ``greedy_accuracy``, ``mean_token_entropy`` (nats, over generated tokens through EOS),
        ``mean_completion_tokens`` (including EOS), ``frac_truncated`` (samples without EOS), ``k``,
        ``n_prompts``.
    """
    if len(prompts) != len(answers):
        raise ValueError("prompts and answers must have the same length")
    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs a left-padding tokenizer")
    was_training = model.training
    model.eval()
    correct_per_prompt: list[int] = []
    n_correct_greedy = 0
    ent_sum, tok_sum, n_trunc, n_samples = 0.0, 0, 0, 0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(0, len(prompts), batch_size):
                bp, ba = list(prompts[i : i + batch_size]), list(answers[i : i + batch_size])
                texts, mask, ent, trunc = _generate(
                    model,
                    tokenizer,
                    bp,
                    do_sample=True,
                    num_return_sequences=k,
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                )
                assert ent is not None
                for j, a in enumerate(ba):
                    correct_per_prompt.append(sum(verify(t, a) for t in texts[j * k : (j + 1) * k]))
                ent_sum += float((ent * mask).sum())
                tok_sum += int(mask.sum())
                n_samples += mask.shape[0]
                n_trunc += int(trunc.sum())
                if greedy:
                    gtexts, _, _, _ = _generate(
                        model,
                        tokenizer,
                        bp,
                        do_sample=False,
                        num_return_sequences=1,
                        temperature=1.0,
                        max_new_tokens=max_new_tokens,
                    )
                    n_correct_greedy += sum(verify(t, a) for t, a in zip(gtexts, ba))
    finally:
        model.train(was_training)
    n = len(prompts)
    pk = sum(pass_at_k(k, c, k) for c in correct_per_prompt) / max(n, 1)
    out = {
        "pass@1": sum(correct_per_prompt) / max(n * k, 1),
        "pass@k": pk,
        f"pass@{k}": pk,
        "greedy_accuracy": n_correct_greedy / max(n, 1) if greedy else float("nan"),
        "mean_token_entropy": ent_sum / max(tok_sum, 1),
        "mean_completion_tokens": tok_sum / max(n_samples, 1),
        "frac_truncated": n_trunc / max(n_samples, 1),
        "k": float(k),
        "n_prompts": float(n),
    }
    return out
