"""Worker for tests/test_multiprocess.py: the step hook on this process's rows of a rollout, under gloo.

    python -m torch.distributed.run --nproc_per_node 2 tests/helpers/mp_steps.py MODEL_DIR ROLLOUT.pt OUT_PREFIX

Each process gets its contiguous rows of the saved rollout, trimmed to its own widths (what TRL gives a
process: prompts left-padded and completions right-padded to the local batch only), calls
``crs.steps.hook.call_step_hook`` through a real ``Accelerator`` and saves the tensors it gets back.
"""

from __future__ import annotations

import os
import sys

import torch
from accelerate import Accelerator
from transformers import AutoTokenizer

from crs.benchmarks import build_benchmark
from crs.cli import compose
from crs.methods.chain import CreditChain
from crs.steps.hook import StepHook, call_step_hook


class _Trainer:  # the two attributes call_step_hook reads; the hook itself gets it only for metrics
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self._metrics = {"train": __import__("collections").defaultdict(list)}


def local_rows(payload: dict, rank: int, world: int) -> tuple[list, dict]:
    out, rows = payload["out"], payload["rows"]
    b = len(rows) // world
    sl = slice(rank * b, (rank + 1) * b)
    local = {k: v[sl] for k, v in out.items()}
    pw = int(local["prompt_mask"].sum(1).max())  # left padding: keep the last pw columns
    cw = int(local["completion_mask"].sum(1).max())
    local["prompt_ids"], local["prompt_mask"] = local["prompt_ids"][:, -pw:], local["prompt_mask"][:, -pw:]
    for k in ("completion_ids", "completion_mask"):
        local[k] = local[k][:, :cw]
    return rows[sl], local


def main(model_dir: str, rollout_path: str, out_prefix: str) -> None:
    payload = torch.load(rollout_path, weights_only=False)
    acc = Accelerator(cpu=True)
    cfg = compose(payload["overrides"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    hook = StepHook(
        CreditChain(cfg.method.credit), cfg.method.steps, build_benchmark(cfg.benchmark, 0), tok, None, None
    )
    rows, local = local_rows(payload, acc.process_index, acc.num_processes)
    feats = call_step_hook(
        hook, _Trainer(acc), rows, local, payload["success"], payload["group"], 1.0, "train"
    )
    torch.save(feats, f"{out_prefix}.{acc.process_index}.pt")
    acc.wait_for_everyone()
    # leave without interpreter shutdown: tearing down gloo's threads there can abort the process
    # ("terminate called without an active exception", seen once in CI) after the work is done and saved
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
