"""A default ``crs train`` run under a finiteness watch: where do non-finite values first appear?

Used for issue 12's end-of-run crash (``probability tensor contains either inf, nan or element < 0``
in the final evaluation after 300 bf16 steps on an H200). Before every generation (training and
evaluation) it runs one forward on the prompts and, if any logit is non-finite, names the first
module whose output is non-finite and raises a Python error *before* ``torch.multinomial`` can
trigger a device-side assert (which kills the CUDA context, and with it any diagnosis). After every
optimizer step it checks the weights, and before every optimizer step the gradients: on the first
non-finite gradient it re-runs that micro-batch's loss and backward (weights still as before the update)
with backward hooks (which module first turns the gradient non-finite) and under each SDPA backend. Every 25 steps (and at the end) it prints one JSON line.

    python scripts/gpu_long_run.py tracking=none trainer.precision=bf16      # any crs train overrides
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch
from trl.trainer.utils import pad

import crs.trainers.grpo as T
from crs.cli import compose
from crs.train import train

state = {"max_abs_logit": 0.0, "first_bad": None, "checks": 0, "inputs": None, "grad_diagnosis": None}


def _first_nonfinite_module(model, input_ids, attention_mask):
    found = []

    def hook(mod, inp, out, name=None):
        t = out[0] if isinstance(out, tuple) else out
        if not found and torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            found.append(name)

    hs = [
        m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n))
        for n, m in model.named_modules()
        if n
    ]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for h in hs:
            h.remove()
    return found[0] if found else None


def _grads_finite(model):
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def _rerun(trainer, inputs, backends=None, hooks=False):
    """Loss + backward on the stashed batch (weights as before the update); which module first makes
    the gradient non-finite (backward order), and is it finite with these SDPA backends?"""
    from torch.nn.attention import sdpa_kernel

    model = trainer.model_wrapped
    model.zero_grad(set_to_none=True)
    origins, handles = [], []
    if hooks:

        def hook(mod, gin, gout, name=None):
            fin = lambda ts: all(t is None or bool(torch.isfinite(t).all()) for t in ts)  # noqa: E731
            if not fin(gin) and fin(gout):
                origins.append(name)

        handles = [
            m.register_full_backward_hook(lambda mod, gi, go, n=n: hook(mod, gi, go, n))
            for n, m in trainer.model.named_modules()
            if n
        ]
    try:
        ctx = sdpa_kernel(backends) if backends else torch.enable_grad()
        with ctx:
            loss = trainer.compute_loss(model, dict(inputs))
            loss.backward()
        return {"loss": float(loss), "grads_finite": _grads_finite(trainer.model), "origins": origins[:4]}
    except Exception as err:  # noqa: BLE001
        return {"error": f"{type(err).__name__}: {err}"[:200]}
    finally:
        for h in handles:
            h.remove()


def diagnose_grads(trainer, step):
    from torch.nn.attention import SDPBackend

    inp = state["inputs"]
    bad = [
        n
        for n, p in trainer.model.named_parameters()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    cm, pm = inp["completion_mask"], inp["prompt_mask"]
    rec = {
        "where": "gradients before optimizer step",
        "step": step,
        "n_bad_params": len(bad),
        "bad_params": bad[:4],
        "batch": {
            "rows": int(cm.shape[0]),
            "prompt_len_min_max": [int(pm.sum(1).min()), int(pm.sum(1).max()), int(pm.shape[1])],
            "completion_len_min_max": [int(cm.sum(1).min()), int(cm.sum(1).max()), int(cm.shape[1])],
            "rows_with_empty_completion": int((cm.sum(1) == 0).sum()),
            "advantages_finite": bool(torch.isfinite(inp["advantages"]).all()),
            "advantages_abs_max": float(inp["advantages"].abs().max()),
        },
        "sdpa_flags": {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        },
        "rerun_default": _rerun(trainer, inp, hooks=True),
        "rerun_math": _rerun(trainer, inp, [SDPBackend.MATH]),
        "rerun_efficient": _rerun(trainer, inp, [SDPBackend.EFFICIENT_ATTENTION]),
        "rerun_cudnn": _rerun(trainer, inp, [SDPBackend.CUDNN_ATTENTION]),
    }
    return rec


class Watch(T.TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state_, control, **kw):
        if state["grad_diagnosis"] is None and not _grads_finite(self.trainer.model):
            rec = diagnose_grads(self.trainer, state_.global_step + 1)
            state["grad_diagnosis"] = rec
            state["first_bad"] = state["first_bad"] or rec
            print("NONFINITE_GRADS", json.dumps(rec), flush=True)
            raise RuntimeError(f"non-finite gradients at step {state_.global_step + 1}")

    def on_step_end(self, args, state_, control, **kw):
        bad = [n for n, p in self.trainer.model.named_parameters() if not torch.isfinite(p).all()]
        h = state_.log_history[-1] if state_.log_history else {}
        rec = {
            "step": state_.global_step,
            "max_abs_param": max(float(p.detach().abs().max()) for p in self.trainer.model.parameters()),
            "max_abs_logit": state["max_abs_logit"],
            "grad_norm": h.get("grad_norm"),
            "entropy": h.get("entropy"),
            "reward": h.get("reward"),
        }
        if bad and state["first_bad"] is None:
            state["first_bad"] = {"where": "weights after optimizer step", "params": bad[:5], **rec}
            print("NONFINITE", json.dumps(state["first_bad"]), flush=True)
            raise RuntimeError(f"non-finite weights after step {state_.global_step}: {bad[:3]}")
        if state_.global_step % 25 == 0:
            print("WATCH", json.dumps(rec), flush=True)


_init = T.CreditGRPOTrainer.__init__
_gen = T.CreditGRPOTrainer._generate_single_turn
_loss = T.CreditGRPOTrainer.compute_loss


def compute_loss(self, model, inputs, *a, **k):
    if self.model.training:
        state["inputs"] = inputs  # the rollout batch of this micro-step, for the gradient diagnosis
    return _loss(self, model, inputs, *a, **k)


def init(self, *a, **k):
    _init(self, *a, **k)
    self.add_callback(Watch(self))


def gen(self, prompt_ids, *a, **k):
    dev = self.accelerator.device
    ids = pad(
        [torch.tensor(x) for x in prompt_ids], padding_value=self._tokenizer.pad_token_id, padding_side="left"
    )
    mask = pad(
        [torch.ones(len(x), dtype=torch.long) for x in prompt_ids], padding_value=0, padding_side="left"
    )
    with torch.no_grad():
        logits = self.model_wrapped(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        state["checks"] += 1
        finite = torch.isfinite(logits)
        state["max_abs_logit"] = max(state["max_abs_logit"], float(logits[finite].abs().max()))
        if not finite.all():
            where = _first_nonfinite_module(self.model_wrapped, ids.to(dev), mask.to(dev))
            rec = {
                "where": "logits before generation",
                "mode": "train" if self.model.training else "eval",
                "step": self.state.global_step,
                "first_nonfinite_module": where,
                "rows_bad": int((~finite).any(-1).any(-1).sum()),
                "weights_finite": all(bool(torch.isfinite(p).all()) for p in self.model.parameters()),
                "dtype_logits": str(logits.dtype),
            }
            state["first_bad"] = state["first_bad"] or rec
            print("NONFINITE", json.dumps(rec), flush=True)
            raise RuntimeError(f"non-finite logits before generation: {rec}")
    return _gen(self, prompt_ids, *a, **k)


T.CreditGRPOTrainer.__init__ = init
T.CreditGRPOTrainer._generate_single_turn = gen
T.CreditGRPOTrainer.compute_loss = compute_loss

if __name__ == "__main__":
    t0 = time.time()
    try:
        # a folder of its own (gpu_check.sh runs three of these side by side) and no resuming of an
        # earlier run's checkpoints on a warm machine
        home = tempfile.mkdtemp(prefix="crs-long-run-")
        s = train(compose(["tracking=none", f"paths.output_dir={home}", "resume=never", *sys.argv[1:]]))
        keys = (
            "steps",
            "eval_accuracy_start",
            "eval_accuracy_end",
            "reward_first10",
            "reward_last10",
            "train_time_s",
        )
        print("RESULT FINISHED", json.dumps({k: s.get(k) for k in keys}), flush=True)
    except BaseException as err:  # noqa: BLE001 - a diagnosis script: report (a timeout's SIGTERM too), do not hide
        status = "KILLED" if type(err).__name__ in ("JobKilled", "KeyboardInterrupt") else "FAILED"
        print(f"RESULT {status}", f"{type(err).__name__}: {err}"[:600], flush=True)
    print(
        "FIRST_NONFINITE",
        json.dumps(state["first_bad"]),
        "max_abs_logit",
        state["max_abs_logit"],
        "checks",
        state["checks"],
        "wall_s",
        round(time.time() - t0, 1),
        flush=True,
    )
