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

from crs.methods.chain import CreditChain
from crs.testing import cpu_grpo_config
from crs.trainers.grpo import CreditGRPOTrainer

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


def _torchrun(*args: str, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 <args>`` on a free local port (gloo, 1 thread
    per process), with the repo and tests/ importable."""
    path = f"{REPO}{os.pathsep}{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


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
    r = _torchrun(str(REPO / "tests" / "helpers" / "mp_grads.py"), tiny_model_dir, str(batch), str(out))
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


def _rollout(tok, group: int, n_groups: int):
    """A hand-made rollout on the bifurcation task: per group, right and wrong first steps of mixed lengths."""
    from crs.benchmarks import build_benchmark
    from crs.cli import compose

    bench = build_benchmark(compose(["benchmark=bifurcation_easy", "debug=fast"]).benchmark, 0)
    rows, texts, success = [], [], []
    for i in range(n_groups):
        row = dict(bench.train[i])
        a, op_b = row["prompt"].split("Q: ")[1].split("\n")[0], int(row["answer"])
        for j in range(group):
            wrong = j % 2 == 1
            res = op_b + (1 + j) if wrong else op_b
            texts.append(
                f" {a}={res}." + (f" Answer: {res}" if j % 3 else "")
            )  # some without the answer copy
            rows.append(row)
            success.append(not wrong)
    enc_p = tok([r["prompt"] for r in rows], padding=True, padding_side="left", return_tensors="pt")
    enc_c = tok(texts, padding=True, padding_side="right", return_tensors="pt", add_special_tokens=False)
    out = {
        "prompt_ids": enc_p["input_ids"],
        "prompt_mask": enc_p["attention_mask"],
        "completion_ids": enc_c["input_ids"],
        "completion_mask": enc_c["attention_mask"],
        "advantages": torch.linspace(-1, 1, len(rows)),
    }
    return rows, out, torch.tensor(success)


@pytest.mark.parametrize("method", ["pure", "capo"])
def test_step_hook_on_two_processes_equals_one(tiny_model_dir, tmp_path, method):
    """Groups of 4 over 2 processes of 6 rows: the middle group spans both processes. The gathered hook
    must give every process exactly its rows of the one-process result (PURE's leave-one-out baseline
    and CAPO's group normalisation need whole groups). Planted bug: each process runs the hook on its own
    rows only (the old behaviour) → the split group's tensors differ and the comparison below catches it."""
    from helpers.mp_steps import local_rows

    from crs.benchmarks import build_benchmark
    from crs.cli import compose
    from crs.methods.chain import CreditChain
    from crs.steps.hook import StepHook

    overrides = [f"method={method}", "benchmark=bifurcation_easy", "debug=fast", "method.steps.scorer=rule"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows, out, success = _rollout(tok, group=4, n_groups=3)
    cfg = compose(overrides)
    hook = StepHook(
        CreditChain(cfg.method.credit), cfg.method.steps, build_benchmark(cfg.benchmark, 0), tok, None, None
    )
    expected = hook(None, rows, out, success, 4, 1.0, "train")
    assert {f"{method}_adv", "decisive"} <= set(expected) or expected, expected.keys()

    path = tmp_path / "rollout.pt"
    torch.save({"out": out, "rows": rows, "success": success, "group": 4, "overrides": overrides}, path)
    r = _torchrun(
        str(REPO / "tests" / "helpers" / "mp_steps.py"), tiny_model_dir, str(path), str(tmp_path / "feats")
    )
    assert r.returncode == 0, r.stderr[-3000:]
    payload = {"out": out, "rows": rows}
    differs = False
    for rank in range(2):
        got = torch.load(tmp_path / f"feats.{rank}.pt")
        lrows, local = local_rows(payload, rank, 2)
        sl = slice(rank * 6, (rank + 1) * 6)
        T = local["completion_ids"].shape[1]
        assert set(got) == set(expected)
        for k, v in expected.items():
            want = v[sl, :T] if v.dim() == 2 else v[sl]
            torch.testing.assert_close(got[k].float(), want.float(), msg=f"{k} on rank {rank}")
        # the planted bug: the hook on this process's rows only
        try:
            alone = hook(None, lrows, local, success[sl], 4, 1.0, "train")
            differs |= any(not torch.allclose(alone[k].float(), got[k].float()) for k in got)
        except RuntimeError:  # 6 rows do not even reshape into groups of 4
            differs = True
    assert differs, "a per-process hook would have passed: the rollout does not split a group"


# ------------------------------------------------------------------------- the whole command, two processes
def _torchrun_train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    db = f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    return _torchrun(
        "-m",
        "crs.cli",
        "train",
        "debug=fast",
        "trainer.max_steps=2",
        db,
        *overrides,
        cwd=tmp_path,
        timeout=600,
    )


@pytest.mark.parametrize("method", ["grpo", "r3l"])
def test_crs_train_on_two_processes_is_one_run(tmp_path, method):
    """`torchrun --nproc_per_node 2 -m crs.cli train` (what accelerate launch and SLURM tasks do): one
    MLflow run, FINISHED, with the job's metrics, and one run folder holding the summary; the console
    summary printed once. R³L runs too (its retries need whole groups per process, which crs's batch check
    guarantees). Planted bug: every process starts its own tracker and folder (the old behaviour) → two
    runs and two folders, caught below."""
    from mlflow.tracking import MlflowClient

    r = _torchrun_train(tmp_path, f"method={method}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [(x.info.run_name, x.info.status) for x in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    names = set(run.data.metrics)
    assert "final.train_time_s" in run.data.tags, sorted(run.data.tags)  # the summary, written once
    assert any(k.endswith("main/accuracy") for k in names), sorted(names)
    if method == "r3l":
        assert any("r3l.retry_rate" in k for k in names), sorted(names)
    folders = [p.parent for p in (tmp_path / "outputs").rglob(".hydra")]
    assert len(folders) == 1, folders
    assert (folders[0] / "summary.json").is_file()
    assert r.stdout.count("wall time") == 1, r.stdout[-3000:]
