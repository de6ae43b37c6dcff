"""Worker for tests/test_multiprocess.py: the credit loss's gradient on this process's rows, under DDP.

    python -m torch.distributed.run --nproc_per_node 2 tests/helpers/mp_grads.py MODEL_DIR BATCH.pt OUT.pt

Every process builds the same ``CreditGRPOTrainer`` (CPU, gloo), takes its contiguous slice of the saved
batch (what TRL's sampler gives each process), runs crs's ``compute_loss`` through the DDP-wrapped
model and backpropagates; DDP averages the gradients, and rank 0 writes them.
"""

from __future__ import annotations

import copy
import json
import os
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from crs.methods.chain import CreditChain
from crs.testing import cpu_grpo_config
from crs.trainers.grpo import CreditGRPOTrainer


def main(model_dir: str, batch_path: str, out_path: str) -> None:
    payload = torch.load(batch_path, weights_only=False)
    inputs, chain_cfg, args_kw = payload["inputs"], payload["chain"], payload["args"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tr = CreditGRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
        args=cpu_grpo_config(out_path + ".trl", **args_kw),
        train_dataset=Dataset.from_dict({"prompt": ["Q: 1+1\nA:"] * 8}),
        processing_class=tok,
        credit=CreditChain(chain_cfg),
        schedule=lambda p: 1.0,
    )
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    acc = tr.accelerator
    rank, world = acc.process_index, acc.num_processes
    B = inputs["completion_ids"].shape[0] // world
    local = {
        k: (v[rank * B : (rank + 1) * B] if torch.is_tensor(v) and v.dim() >= 1 else v)
        for k, v in inputs.items()
    }
    ddp = acc.prepare_model(tr.model)
    loss = tr.compute_loss(ddp, local)
    acc.backward(loss)
    grads = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
    if acc.is_main_process:
        torch.save({"grads": grads, "world": world}, out_path)
        print(json.dumps({"world": world, "rows_per_process": B}))
    acc.wait_for_everyone()
    # leave without interpreter shutdown: tearing down gloo/DDP threads there can abort a process
    # ("terminate called without an active exception", seen under load) after the work is saved
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
