"""Real-dataset and real-model loading paths, on small local files in the hub formats.

`benchmark=gsm8k` reads GSM8K's format (question / answer with '#### N'); math-verify scores the
completion's last \\boxed{}; `model.name_or_path` takes a local folder exactly as it would a hub id,
and `model.lora.enabled` trains a PEFT adapter.

    pytest tests/test_hf_benchmark.py
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from crs.benchmarks import build_benchmark
from crs.benchmarks.hf import math_reward, reference_answer
from crs.errors import ConfigError
from crs.metric_layout import ui_key
from crs.train import train

GSM8K_ROWS = [
    {
        "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7",
    },
    {
        "question": "A box holds 1,200 pens; 200 are sold. How many are left?",
        "answer": "1,200 - 200 = <<1200-200=1000>>1,000 pens are left.\n#### 1,000",
    },
    {"question": "What is 6 times 7?", "answer": "6 * 7 = <<6*7=42>>42\n#### 42"},
    {"question": "Half of 18 is?", "answer": "18 / 2 = <<18/2=9>>9\n#### 9"},
]


@pytest.fixture
def gsm8k_dir(tmp_path):
    for split in ("train", "test"):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for row in GSM8K_ROWS:
                f.write(json.dumps(row) + "\n")
    return tmp_path


def test_reference_answers():
    assert reference_answer(GSM8K_ROWS[1]["answer"], "gsm8k") == "1000"
    assert reference_answer("  \\frac{1}{2} ", "raw") == "\\frac{1}{2}"
    with pytest.raises(ValueError):
        reference_answer("no marker here", "gsm8k")


def test_math_verify_reward():
    seen = {}
    completions = [
        "So the total is \\boxed{7}.",
        "The answer is \\boxed{8}.",
        "I think it's \\boxed{0.5}",
        [{"role": "assistant", "content": "Therefore \\boxed{1000}"}],
    ]
    rewards = math_reward(
        prompts=["p"] * 4,
        completions=completions,
        answer=["7", "7", "\\frac{1}{2}", "1000"],
        log_metric=lambda name, value: seen.setdefault(name, value),
    )
    assert rewards == [1.0, 0.0, 1.0, 1.0]
    assert seen["accuracy"] == pytest.approx(0.75)


def test_local_gsm8k_files_load(gsm8k_dir):
    cfg = {
        "name": "hf",
        "path": str(gsm8k_dir / "{split}.jsonl"),
        "train_split": "train",
        "eval_split": "test",
        "question_field": "question",
        "answer_field": "answer",
        "answer_format": "gsm8k",
        "prompt_template": "{question}\nAnswer in \\boxed{{}}.",
        "chat": True,
        "n_train": None,
        "n_eval": 2,
    }
    b = build_benchmark(cfg, seed=0)
    assert len(b.train) == 4 and len(b.eval) == 2
    assert b.eval["answer"] == ["7", "1000"]
    assert b.train[0]["prompt"][-1]["role"] == "user" and "\\boxed{}" in b.train[0]["prompt"][-1]["content"]
    with pytest.raises(ConfigError, match="no such file"):
        build_benchmark({**cfg, "path": str(gsm8k_dir / "missing.jsonl")}, seed=0)
    with pytest.raises(ConfigError, match="column"):
        build_benchmark({**cfg, "question_field": "problem"}, seed=0)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_train_on_local_model_and_dataset(compose_cfg, tmp_path, tiny_model_dir, gsm8k_dir, lora):
    overrides = [
        "debug=fast",
        "benchmark=gsm8k",
        f"benchmark.path={gsm8k_dir}",
        "benchmark.chat=false",
        f"model.name_or_path={tiny_model_dir}",
        "model.name=tiny-local",
        "trainer.max_steps=2",
        "trainer.eval_prompts=2",
    ]
    if lora:
        overrides += [
            "model.lora.enabled=true",
            "model.lora.r=4",
            "model.lora.target_modules=[q_proj,v_proj]",
        ]
    summary = train(compose_cfg(*overrides))
    assert summary["steps"] == 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("crs").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "tiny-local"
    assert run.data.params["model.name_or_path"] == tiny_model_dir
    assert run.data.params["model.lora.enabled"] == str(lora)
    assert len(client.get_metric_history(run.info.run_id, ui_key("rewards/correctness/mean"))) == 2
