"""Rollout engines: how completions are generated during GRPO training (``trainer.generation``).

On a GPU the training step of an RLVR run is mostly generation, and TRL's default (transformers
``generate`` with a dynamic KV cache, ``disable_compile=True``) is bound by per-token Python and
kernel-launch overhead, far above what the card can do (``docs/gpu.md``: 4.7 s for
128 × 256 tokens of a 180M model on an H200, 1.2 s with a static cache). The options:

``hf``
    TRL's own path, unchanged (the default; identical to plain ``GRPOTrainer``).
``hf_static``
    TRL's path with transformers' static KV cache (``GRPOConfig.cache_implementation="static"``):
    no concatenation per token, still one Python-driven ``generate`` step per token.
``static``
    crs's decode loop (:class:`~crs.rollout.static.StaticDecoder`): a static KV cache sized once per
    (batch, prompt-length bucket); on CUDA the one-token decode step is captured once as a CUDA graph
    and replayed, so a token costs one graph launch plus a few sampling kernels. Sampling uses
    transformers' own logits processors built from the same ``GenerationConfig`` TRL builds
    (temperature, top-k, top-p, min-p, repetition penalty), ``torch.multinomial``, pad after EOS,
    positions from the attention mask: the same semantics as ``generate``. On CPU it runs the same
    loop eagerly (no graph).
``vllm``
    TRL's vLLM integration (``use_vllm=True``; ``trainer.vllm_mode`` colocate or server). vLLM is not
    a crs dependency: without it installed this is a one-line config error.

    crs train trainer.generation=static                 # the fast path on a GPU
    crs train trainer.generation=vllm trainer.vllm_mode=colocate

Log-probs: TRL recomputes the policy's log-probs with the training forward after generation (no
engine's sampling log-probs enter the loss unless vLLM's importance-sampling correction is on), so
every engine feeds the trainer the same kind of data; ``tests/test_rollout.py`` checks the static
decoder's per-token logits against one full forward over the generated sequences.
"""

from __future__ import annotations

import importlib.util

GENERATIONS = ("hf", "hf_static", "static", "vllm")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def grpo_generation_kwargs(generation: str, vllm_mode: str) -> dict:
    """The ``GRPOConfig`` fields an option sets (TRL's own switches; ``static`` needs none)."""
    if generation == "hf_static":
        return {"cache_implementation": "static"}
    if generation == "vllm":
        return {"use_vllm": True, "vllm_mode": vllm_mode}
    return {}


def build_decoder(generation: str, **kwargs):
    """The crs engine for ``generation`` (None = TRL generates)."""
    if generation != "static":
        return None
    from crs.rollout.static import StaticDecoder

    return StaticDecoder(**kwargs)
