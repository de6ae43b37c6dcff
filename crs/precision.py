"""What ``trainer.precision: auto`` means: fp32 for small models and on CPU, bf16 for real models on GPUs.

Mixed precision (TRL/transformers ``bf16=True``: fp32 master weights, bf16 autocast compute) buys
speed only when matrix products are big enough to be arithmetic- or bandwidth-bound. A model of a
few million parameters is launch-bound on a GPU: on an H200 the embedded 0.34M-parameter default
ran 60 steps in 39 s in fp32 against 47 s in bf16 (../shared/docs/gpu.md). What bf16 costs such a
model is numerics: its 8-bit mantissa rounds logits by up to ~0.4% (a tiny, sharp policy's logits
reach tens), which moves PPO ratios and the sampled distribution. So ``auto`` keeps fp32 below
:data:`AUTO_BF16_MIN_PARAMS` and uses bf16 above it on bf16-capable GPUs (Ampere and later); fp16
is never chosen automatically (it needs loss scaling and overflows easily).

    crs train trainer.precision=auto      # the default
    crs train trainer.precision=bf16      # force mixed bf16 even for a tiny model
"""

from __future__ import annotations

AUTO_BF16_MIN_PARAMS = 100_000_000


def resolve_precision(precision: str, cuda: bool, n_params: int | None, bf16_supported: bool) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for a job.

    Args:
        precision: the config value (auto, fp32, bf16, fp16).
        cuda: training runs on a CUDA device.
        n_params: the policy's parameter count (None = unknown: treated as a real model).
        bf16_supported: ``torch.cuda.is_bf16_supported()``.
    """
    if precision != "auto":
        return precision
    if not cuda or not bf16_supported:
        return "fp32"
    if n_params is not None and n_params < AUTO_BF16_MIN_PARAMS:
        return "fp32"
    return "bf16"
