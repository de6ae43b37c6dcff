"""A static-KV-cache decode loop, with the one-token step captured as a CUDA graph on GPUs.

Why: transformers ``generate`` spends most of a small model's decode step in Python and kernel
launches (16 layers × ~15 kernels per token), not in arithmetic. Capturing one decode step (the
model forward on a ``[B, 1]`` token into a preallocated :class:`transformers.StaticCache`) as a CUDA
graph turns it into one launch; ``torch.multinomial`` and the logits processors stay eager (a
handful of small kernels per token).

Semantics, matched to ``GenerationMixin._sample`` (transformers 5.x) line by line:

* the ``GenerationConfig`` is completed by the model's own ``_prepare_generation_config`` and the
  logits processors come from its ``_get_logits_processor`` (temperature, top-k, top-p, min-p,
  repetition penalty: whatever ``generate`` would apply, in the same order);
* scores are float32 copies of the last-position logits; ``softmax`` → ``torch.multinomial``;
* positions are ``cumsum(attention_mask) - 1`` (0 on left padding), then +1 per new token;
* after EOS a row emits ``pad_token_id``; generation stops when every row has emitted EOS or after
  ``max_new_tokens``; the output is cut after the first EOS exactly as TRL cuts ``generate``'s.

Deviations (none changes what is sampled): the cache is sized ``round_up(P + T, 64)`` so one graph
serves steps whose prompt lengths differ; padded query rows may attend to themselves (they would
otherwise be fully masked: NaN in some SDPA kernels, and NaN × 0 in a later layer's ``P @ V`` is NaN);
"all rows finished" is checked every ``check_every`` tokens on CUDA instead of every token (rows that
finished only emit pads meanwhile), so the GPU is not stalled by a host sync per token.

    from crs.rollout.static import StaticDecoder
    completions = StaticDecoder().generate(model, prompt_ids, generation_config,
                                           eos_token_ids=[2], max_new_tokens=48)
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

_MASK_KINDS = {"sdpa": "bool", "eager": "additive"}


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass
class _Slot:
    """One preallocated cache (+ graph) for a (batch, cache length) shape."""

    cache: Any
    ids: torch.Tensor  # [B, 1] next input token
    pos: torch.Tensor  # [B, 1] its position id
    mask: torch.Tensor  # [B, 1, 1, L] keys the next token may attend to (bool, or additive float)
    graph: Any = None
    logits: torch.Tensor | None = None  # the graph's static output
    params: tuple = field(default_factory=tuple)


class StaticDecoder:
    """Sampling with a static KV cache; on CUDA the decode step is a replayed CUDA graph.

    Args:
        cuda_graph: capture the decode step (None = on CUDA devices). Falls back to eager steps, with a
            warning, if capture fails.
        length_bucket: the cache length is ``prompt + max_new_tokens`` rounded up to this, so prompts of
            different lengths reuse one cache and one graph.
        check_every: on CUDA, test "every row finished" (a host sync) every N tokens.
        max_slots: caches/graphs kept (least recently used dropped): train and eval batches differ.
    """

    def __init__(
        self,
        cuda_graph: bool | None = None,
        length_bucket: int = 64,
        check_every: int = 8,
        max_slots: int = 2,
    ):
        self.cuda_graph = cuda_graph
        self.length_bucket = length_bucket
        self.check_every = check_every
        self.max_slots = max_slots
        self._slots: OrderedDict[tuple, _Slot] = OrderedDict()
        self.stats: dict[str, Any] = {"calls": 0, "captures": 0, "graph_failures": 0, "tokens": 0}

    # ------------------------------------------------------------------------------- TRL entry point
    def generate_for(self, trainer, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Generate for a ``GRPOTrainer`` exactly where TRL's ``generate`` would (same unwrap context)."""
        from trl.extras.profiling import profiling_context
        from trl.models import unwrap_model_for_generation

        with (
            profiling_context(trainer, "crs.static_generate"),
            unwrap_model_for_generation(
                trainer.model_wrapped,
                trainer.accelerator,
                gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                generation_kwargs=trainer.generation_kwargs,
                gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
            ) as model,
            torch.no_grad(),
        ):
            return self.generate(
                model,
                prompt_ids,
                trainer.generation_config,
                eos_token_ids=trainer.eos_token_ids,
                max_new_tokens=trainer.max_completion_length,
                device=trainer.accelerator.device,
            )

    # ---------------------------------------------------------------------------------------- engine
    @torch.no_grad()
    def generate(
        self,
        model,
        prompt_ids: list[list[int]],
        generation_config,
        *,
        eos_token_ids: list[int] | int | None,
        max_new_tokens: int,
        device: torch.device | str | None = None,
    ) -> list[list[int]]:
        """Sample one completion per prompt; returns token ids cut after the first EOS (kept)."""
        device = torch.device(device) if device is not None else next(model.parameters()).device
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        attn = getattr(base.config, "_attn_implementation", "sdpa")
        if attn not in _MASK_KINDS:
            raise RuntimeError(
                f"trainer.generation=static supports attn_implementation sdpa or eager (got {attn!r}); "
                "use trainer.generation=hf_static"
            )
        additive = _MASK_KINDS[attn] == "additive"
        gc, _ = base._prepare_generation_config(generation_config)
        eos = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids or [])
        pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else 0)
        b, p_len, t_max = len(prompt_ids), max(len(p) for p in prompt_ids), int(max_new_tokens)
        length = _round_up(p_len + t_max, self.length_bucket)

        # left-padded prompts, positions and the prefill mask (cols ≥ p_len: generated tokens, causal)
        seq = torch.full((b, length), pad, dtype=torch.long)
        valid = torch.zeros((b, length), dtype=torch.bool)
        for i, p in enumerate(prompt_ids):
            if p:
                seq[i, p_len - len(p) : p_len] = torch.tensor(p, dtype=torch.long)
                valid[i, p_len - len(p) : p_len] = True
        seq, valid = seq.to(device), valid.to(device)
        prompt_valid = valid[:, :p_len]
        pos = (prompt_valid.long().cumsum(-1) - 1).masked_fill(~prompt_valid, 0)
        q = torch.arange(p_len, device=device)
        k = torch.arange(length, device=device)
        allowed = (k[None, :] <= q[:, None])[None] & valid[:, None, :]
        allowed |= (k[None, :] == q[:, None])[None]  # padded query rows see themselves (no NaN rows)
        prefill_mask = self._typed(allowed[:, None], additive)

        slot, fresh = self._slot(model, base, b, length, device, additive)
        cache_kw = self._cache_kw(base)
        for layer in slot.cache.layers if slot.cache.is_initialized else ():
            layer.cumulative_length.zero_()
        out = model(
            input_ids=seq[:, :p_len],
            attention_mask=prefill_mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: slot.cache},
        )
        logits = out.logits[:, -1]
        del out
        self._check_cache(slot.cache)
        # decode-step inputs: keys = valid prompt tokens + the generated ones so far (set per step)
        slot.mask.copy_(self._typed(valid[:, None, None, :].clone(), additive))
        if additive:
            slot.mask[..., p_len:] = torch.finfo(slot.mask.dtype).min
        else:
            slot.mask[..., p_len:] = False
        slot.pos.copy_(pos[:, -1:])
        use_graph = self._want_graph(device)
        if use_graph and (fresh or slot.graph is None) and self.stats["graph_failures"] == 0:
            self._capture(model, slot, cache_kw, p_len)

        processors = base._get_logits_processor(
            generation_config=gc,
            input_ids_seq_length=p_len,
            encoder_input_ids=seq[:, :p_len],
            logits_processor=None,
            device=device,
            model_kwargs={},
        )
        eos_t = torch.tensor(eos, dtype=torch.long, device=device)
        unfinished = torch.ones(b, dtype=torch.long, device=device)
        check = self.check_every if device.type == "cuda" else 1
        n = 0
        for t in range(t_max):
            s = p_len + t
            scores = processors(seq[:, :s], logits.to(copy=True, dtype=torch.float32))
            probs = torch.nn.functional.softmax(scores, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
            if eos:
                nxt = nxt * unfinished + pad * (1 - unfinished)
                unfinished = unfinished & ~torch.isin(nxt, eos_t)
            seq[:, s] = nxt
            n = t + 1
            if n == t_max or (eos and n % check == 0 and not bool(unfinished.any())):
                break
            slot.ids.copy_(nxt[:, None])
            slot.pos.add_(1)
            if additive:
                slot.mask[..., s] = 0.0
            else:
                slot.mask[..., s] = True
            if slot.graph is not None:
                slot.graph.replay()
                logits = slot.logits[:, -1]
            else:
                logits = self._step(model, slot, cache_kw)[:, -1]
        self.stats["calls"] += 1
        self.stats["tokens"] += b * n
        return _cut_after_eos(seq[:, p_len : p_len + n], eos)

    # ------------------------------------------------------------------------------------- internals
    @staticmethod
    def _typed(allowed: torch.Tensor, additive: bool) -> torch.Tensor:
        if not additive:
            return allowed
        return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(torch.float32).min
        )

    @staticmethod
    def _cache_kw(base) -> str:
        params = inspect.signature(base.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @staticmethod
    def _check_cache(cache) -> None:
        if not all(hasattr(layer, "cumulative_length") for layer in cache.layers):
            raise RuntimeError(
                "trainer.generation=static needs transformers>=5.24 (StaticCache layers with cumulative_length)"
            )

    def _want_graph(self, device: torch.device) -> bool:
        if self.cuda_graph is None:
            return device.type == "cuda"
        return bool(self.cuda_graph) and device.type == "cuda"

    def _slot(self, model, base, b: int, length: int, device, additive: bool) -> tuple[_Slot, bool]:
        from transformers import StaticCache

        params = tuple(p.data_ptr() for p in model.parameters())
        key = (b, length, additive, str(device))
        slot = self._slots.get(key)
        if slot is not None and slot.params == params:
            self._slots.move_to_end(key)
            return slot, False
        if slot is not None:  # weights were re-allocated (e.g. moved, merged): the graph reads stale memory
            self._slots.pop(key)
        while len(self._slots) >= self.max_slots:
            self._slots.popitem(last=False)
        mask_dtype = torch.float32 if additive else torch.bool
        slot = _Slot(
            cache=StaticCache(config=base.config, max_cache_len=length),
            ids=torch.zeros((b, 1), dtype=torch.long, device=device),
            pos=torch.zeros((b, 1), dtype=torch.long, device=device),
            mask=torch.zeros((b, 1, 1, length), dtype=mask_dtype, device=device),
            params=params,
        )
        self._slots[key] = slot
        return slot, True

    @staticmethod
    def _step(model, slot: _Slot, cache_kw: str) -> torch.Tensor:
        out = model(
            input_ids=slot.ids,
            attention_mask=slot.mask,
            position_ids=slot.pos,
            use_cache=True,
            **{cache_kw: slot.cache},
        )
        return out.logits

    def _capture(self, model, slot: _Slot, cache_kw: str, p_len: int) -> None:
        """Warm up on a side stream, capture one decode step, then rewind the cache counters to p_len
        (warm-up steps wrote junk at slots ≥ p_len: the real steps overwrite them before any query sees them)."""
        t0 = time.perf_counter()
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step(model, slot, cache_kw)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                slot.logits = self._step(model, slot, cache_kw)
            slot.graph = graph
            self.stats["captures"] += 1
        except Exception as err:  # keep training: eager steps are correct, only slower
            import warnings

            slot.graph, slot.logits = None, None
            self.stats["graph_failures"] += 1
            self.stats["graph_error"] = f"{type(err).__name__}: {err}"[:300]
            warnings.warn(
                f"crs: CUDA-graph capture failed, decoding eagerly: {self.stats['graph_error']}", stacklevel=2
            )
            torch.cuda.synchronize()
        finally:
            for layer in slot.cache.layers:
                layer.cumulative_length.fill_(p_len)
        self.stats["capture_s"] = self.stats.get("capture_s", 0.0) + time.perf_counter() - t0


def _cut_after_eos(completion: torch.Tensor, eos: list[int]) -> list[list[int]]:
    """TRL's cut (grpo_trainer._generate_single_turn): keep tokens up to and including the first EOS."""
    device = completion.device
    if not eos or completion.numel() == 0:
        return completion.cpu().tolist()
    is_eos = torch.isin(completion, torch.tensor(eos, device=device))
    eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long, device=device)
    eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
    idx = torch.arange(is_eos.size(1), device=device).expand(is_eos.size(0), -1)
    keep = idx <= eos_idx.unsqueeze(1)
    return [c[m].tolist() for c, m in zip(completion.cpu(), keep.cpu())]
