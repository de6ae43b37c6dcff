"""What ``trainer.precision: auto`` means: fp32 for small models and on CPU, bf16 for real models on GPUs.

Mixed precision (TRL/transformers ``bf16=True``: fp32 master weights, bf16 autocast compute) buys
speed only when matrix products are big enough to be arithmetic- or bandwidth-bound. A model of a
few million parameters is launch-bound on a GPU: on an H200 the embedded 0.34M-parameter default
ran 60 steps in 39 s in fp32 against 47 s in bf16 (docs/gpu.md). What bf16 costs such a
model is numerics: its 8-bit mantissa rounds logits by up to ~0.4% (a tiny, sharp policy's logits
reach tens), which moves PPO ratios and the sampled distribution. So ``auto`` keeps fp32 below
:data:`AUTO_BF16_MIN_PARAMS` and uses bf16 above it on bf16-capable GPUs (Ampere and later); fp16
is never chosen automatically (it needs loss scaling and overflows easily).

    crs train trainer.precision=auto      # the default
    crs train trainer.precision=bf16      # force mixed bf16 even for a tiny model

The end-of-run crash of issue 12 (``probability tensor contains either inf, nan or element < 0`` in
the final evaluation after 300 bf16 steps on an H200) was this: at step 300 of seed 0's data order the
backward pass of PyTorch's **cuDNN** scaled-dot-product-attention kernel returned non-finite
gradients (weights, logits, loss and advantages all finite; first module with a non-finite input
gradient: ``model.layers.2``), AdamW wrote NaN into every weight, and the next ``generate`` sampled
from NaN probabilities. Re-running that micro-batch with the same weights gave finite gradients with
the math and memory-efficient SDPA kernels and non-finite ones with cuDNN again; a 310-step run failed
at the same step 300 (the batch, not the end of training); the fp32 run finished (eval pass@1
0.340 → 0.375; cuDNN attention serves only fp16/bf16). That batch was 16 prompt + 48 completion = 64
tokens long: the condition of pytorch/pytorch#196678 (cuDNN SDPA backward NaN for an explicit mask and
``seq_len % 128 == 64`` on H100/H200, torch 2.11), which is why shorter runs did not meet it. Evidence:
``scripts/gpu_long_run.py`` (docs/gpu.md). So besides fp32 for small models, crs turns the cuDNN SDPA
backend off on CUDA unless ``trainer.cudnn_attention=true``; flash, memory-efficient and math kernels
still serve every call.
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


def configure_cuda_attention(cudnn_attention: bool) -> None:
    """Enable or disable PyTorch's cuDNN SDPA backend for this process (see the module docstring)."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(bool(cudnn_attention))
