"""A default ``crs train`` run under a finiteness watch: where do non-finite values first appear?

Used for issue 12's end-of-run crash (``probability tensor contains either inf, nan or element < 0``
in the final evaluation after 300 bf16 steps on an H200). Before every generation (training and
evaluation) it runs one forward on the prompts and, if any logit is non-finite, names the first
module whose output is non-finite and raises a Python error *before* ``torch.multinomial`` can
trigger a device-side assert (which kills the CUDA context, and with it any diagnosis). After every
optimizer step it checks the weights. Every 25 steps (and at the end) it prints one JSON line.

    python scripts/gpu_long_run.py tracking=none trainer.precision=bf16      # any crs train overrides
"""

from __future__ import annotations

import json
import sys
import time

import torch
from trl.trainer.utils import pad

import crs.trainer as T
from crs.cli import compose
from crs.train import train

state = {"max_abs_logit": 0.0, "first_bad": None, "checks": 0}


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


class Watch(T.TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

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

if __name__ == "__main__":
    t0 = time.time()
    try:
        s = train(compose(["tracking=none", "paths.output_dir=/tmp/crs-long-run", *sys.argv[1:]]))
        keys = (
            "steps",
            "eval_accuracy_start",
            "eval_accuracy_end",
            "reward_first10",
            "reward_last10",
            "train_time_s",
        )
        print("RESULT FINISHED", json.dumps({k: s.get(k) for k in keys}), flush=True)
    except Exception as err:  # noqa: BLE001 - this is a diagnosis script: report, do not hide
        print("RESULT FAILED", f"{type(err).__name__}: {err}"[:600], flush=True)
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
