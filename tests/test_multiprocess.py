"""Two processes (gloo on CPU) train exactly like one process with the same global batch.

Credit methods that pool over the batch (batch top-k, selected-token normalisers) and the token-mean
divisor must pool over *all* processes, not each process's half: the gradient DDP averages over two
processes must equal the one-process gradient on the whole batch. Planted bug: pooling per process
(what a naive implementation does) gives a different selection and divisor, and the test checks the
comparison would catch it.

    pytest tests/test_multiprocess.py
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers.policy import policy_logps_and_entropies
from transformers import AutoModelForCausalLM, AutoTokenizer

from crs.credit import CreditChain
from crs.testing import cpu_grpo_config
from crs.trainer import CreditGRPOTrainer

REPO = Path(__file__).resolve().parents[1]

CHAINS = {
    # the 80/20 setting: batch top-k over every token of the (global) micro-batch, token-mean over selected
    "batch_topk": {
        "forking_tokens": {"keep_fraction": 0.2, "selection": "batch_topk", "normalize": "selected"}
    },
    # TP window + token-mean: the divisor is the global count of trained tokens
    "tp_token_mean": {"tp_schedule": {"withhold": 0.5}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(model_dir, tmp, chain, **args_kw):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tr = CreditGRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=[lambda completion_ids, **kw: [float(sum(ids) % 7) / 7.0 for ids in completion_ids]],
        args=cpu_grpo_config(tmp, **args_kw),
        train_dataset=Dataset.from_dict({"prompt": [f"Q: {a}+{a + 3}-2\nA:" for a in range(8)]}),
        processing_class=tok,
        credit=CreditChain(chain),
        schedule=lambda p: 1.0,
    )
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr


def _grads(tr, inputs):
    tr.model.zero_grad()
    tr.compute_loss(tr.model, inputs).backward()
    g = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
    tr.model.zero_grad()
    return g


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_two_processes_equal_one(tiny_model_dir, tmp_path, name):
    chain = CHAINS[name]
    args = {"loss_type": "dapo", "per_device_train_batch_size": 8, "num_generations": 4}
    one = _trainer(tiny_model_dir, tmp_path / "one", chain, **args)
    torch.manual_seed(0)
    inputs = one._prepare_inputs(next(iter(one.get_train_dataloader())))
    # ratio ≠ 1, so the loss is not ≈ 0 whatever the mask
    g = torch.Generator().manual_seed(3)
    logps, _ = policy_logps_and_entropies(one, inputs)
    inputs = {**inputs, "old_per_token_logps": logps + 0.3 * torch.randn(logps.shape, generator=g)}
    expected = _grads(one, inputs)
    assert expected.abs().sum() > 0

    batch = tmp_path / "batch.pt"
    out = tmp_path / "grads.pt"
    two_args = {**args, "per_device_train_batch_size": 4}
    torch.save({"inputs": inputs, "chain": chain, "args": two_args}, batch)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    r = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
            str(REPO / "tests" / "helpers" / "mp_grads.py"), tiny_model_dir, str(batch), str(out),
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(out)
    assert got["world"] == 2
    torch.testing.assert_close(got["grads"], expected, rtol=1e-4, atol=1e-7)

    # planted: each process pooling only its own half (a 1-process run on each half, averaged like DDP)
    halves = []
    for rank in range(2):
        half_tr = _trainer(tiny_model_dir, tmp_path / f"half{rank}", chain, **two_args)
        sl = slice(rank * 4, (rank + 1) * 4)
        half = {k: (v[sl] if torch.is_tensor(v) and v.dim() >= 1 else v) for k, v in inputs.items()}
        halves.append(_grads(half_tr, half))
    per_process = (halves[0] + halves[1]) / 2
    assert not torch.allclose(per_process, expected, rtol=1e-3, atol=1e-6), (
        "per-process pooling went unnoticed"
    )
