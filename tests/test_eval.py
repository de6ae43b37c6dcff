"""``crs eval``: the estimators on planted counts, the graders, the paper's benchmark formats in local
files, the embedded model end to end, a bad file as one line, and every paper recipe composing.

    pytest tests/test_eval.py            # the fast part (slow: tests/test_eval_slow.py)
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crs.eval.graders import ChoiceGrader, MathGrader
from crs.eval.metrics import ProblemResult, pass_at_k, summarize
from tests.conftest import run_crs

CONF = Path(__file__).resolve().parents[1] / "conf"
RECIPES = sorted(p.stem for p in (CONF / "experiment" / "paper").glob("*.yaml"))
PAPER = ["aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench", "gpqa_diamond"]


# ------------------------------------------------------------------------------------------------
# estimators


@pytest.mark.parametrize("n,c,k", [(8, 2, 4), (16, 1, 8), (10, 3, 1), (5, 0, 3), (6, 6, 2), (20, 17, 4)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_differs_from_the_plug_in_estimate():
    # n=8, c=2, k=4: unbiased 1 − C(6,4)/C(8,4) = 1 − 15/70; the plug-in 1 − (1 − c/n)^k is 0.684
    assert pass_at_k(8, 2, 4) == pytest.approx(55 / 70)
    assert abs(pass_at_k(8, 2, 4) - (1 - (1 - 2 / 8) ** 4)) > 0.1
    assert pass_at_k(1024, 3, 512) == pytest.approx(1 - math.comb(1021, 512) / math.comb(1024, 512))
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def _planted() -> list[ProblemResult]:
    # 4 problems × 4 samples: 2/4, 0/4 (one sample without an answer), 4/4, 1/4 (two without an answer)
    return [
        ProblemResult([True, True, False, False], [True] * 4, True, True, 0, 40),
        ProblemResult([False] * 4, [True, True, True, False], False, False, 1, 48),
        ProblemResult([True] * 4, [True] * 4, True, True, 0, 20),
        ProblemResult([True, False, False, False], [True, False, True, False], False, True, 2, 64),
    ]


def test_summary_on_planted_counts():
    s = summarize(_planted(), [1, 2, 4])
    v = s.values
    assert v["avg@4"] == pytest.approx((0.5 + 0 + 1 + 0.25) / 4)
    assert v["pass@1"] == pytest.approx(v["avg@4"])  # unbiased: pass@1 is the mean accuracy
    expect2 = sum(1 - math.comb(4 - c, 2) / math.comb(4, 2) for c in (2, 0, 4, 1)) / 4
    assert v["pass@2"] == pytest.approx(expect2)
    assert v["pass@4"] == pytest.approx(3 / 4)
    assert v["greedy"] == pytest.approx(2 / 4)
    # extraction failures are their own count, not folded into the wrong answers
    assert v["extract_fail"] == pytest.approx((0 + 0.25 + 0 + 0.5) / 4)
    assert v["extract_fail_greedy"] == pytest.approx(1 / 4)
    assert v["frac_truncated"] == pytest.approx(3 / 16)
    lo, hi = s.intervals["avg@4"]
    assert 0 <= lo <= v["avg@4"] <= hi <= 1


def test_graders_tell_missing_answers_from_wrong_ones():
    m = MathGrader()
    assert m.grade("so the result is \\boxed{\\frac{1}{2}}", "0.5") == (True, True)
    assert m.grade("the answer is \\boxed{3}", "4") == (True, False)
    assert m.grade("I do not know", "4") == (False, False)
    c = ChoiceGrader()
    assert c.grade("Thinking… so \\boxed{C}", "C") == (True, True)
    assert c.grade("The answer is (B).", "C") == (True, False)
    assert c.grade("Answer: \\boxed{\\text{D}}", "D") == (True, True)
    assert c.grade("no letter here at all", "A") == (False, False)


# ------------------------------------------------------------------------------------------------
# the paper's benchmark formats, as local files written here


def _math_rows(q: str, a: str, list_answer: bool = False) -> list[dict]:
    rows = [("What is 2+3?", "5"), ("Compute 10/4.", "\\frac{5}{2}"), ("What is 7*6?", "42")]
    return [{q: x, a: [y] if list_answer else y, "id": i} for i, (x, y) in enumerate(rows)]


def write_paper_files(folder: Path, drop: tuple[str, str] | None = None) -> Path:
    """One small file per paper benchmark with the hub's column names (and file types)."""
    formats = {
        "aime24": ("jsonl", _math_rows("problem", "answer")),
        "aime25": ("jsonl", _math_rows("problem", "answer")),
        "amc23": ("json", _math_rows("question", "answer")),
        "math500": ("jsonl", _math_rows("problem", "answer")),
        "minerva": ("parquet", _math_rows("question", "answer")),
        "olympiadbench": ("jsonl", _math_rows("question", "final_answer", list_answer=True)),
        "gpqa_diamond": (
            "csv",
            [
                {
                    "Question": "Which gas is most abundant in Earth's atmosphere?",
                    "Correct Answer": "Nitrogen",
                    "Incorrect Answer 1": "Oxygen",
                    "Incorrect Answer 2": "Argon",
                    "Incorrect Answer 3": "Carbon dioxide",
                },
                {
                    "Question": "What is the SI unit of force?",
                    "Correct Answer": "Newton",
                    "Incorrect Answer 1": "Joule",
                    "Incorrect Answer 2": "Watt",
                    "Incorrect Answer 3": "Pascal",
                },
            ],
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, (ext, rows) in formats.items():
        if drop and drop[0] == name:
            rows = [{k: v for k, v in r.items() if k != drop[1]} for r in rows]
        path = folder / f"{name}.{ext}"
        if ext == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif ext == "json":
            path.write_text(json.dumps(rows))
        elif ext == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            with open(path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    return folder


def _compose_eval(*overrides: str):
    from crs.cli import compose
    from crs.eval.settings import register_eval_configs

    register_eval_configs()
    return compose(list(overrides), config_name="eval")


def test_every_paper_benchmark_reads_its_hub_format(tmp_path):
    from crs.eval.problems import load_problems, member_configs

    data = write_paper_files(tmp_path / "data")
    ov = ["suite=paper", f"suite.data_dir={data}"]
    cfg = _compose_eval(*ov)
    benches = member_configs(cfg, None, lambda o: _compose_eval(*o), ov)
    assert [n for n, _ in benches] == PAPER
    for name, bench in benches:
        probs = load_problems(name, bench, None)
        if name == "gpqa_diamond":
            assert probs.grader.name == "choice" and len(probs.answers) == 2
            assert all(a in "ABCD" for a in probs.answers)
            text = probs.prompts[0][-1]["content"]
            # the correct answer sits under the reference letter
            assert f"{probs.answers[0]}) Nitrogen" in text
        else:
            assert probs.grader.name == "math-verify" and probs.answers == ["5", "\\frac{5}{2}", "42"]
            assert "\\boxed{}" in probs.prompts[0][-1]["content"]


@pytest.mark.parametrize("name,column", [("aime24", "answer"), ("gpqa_diamond", "Incorrect Answer 2")])
def test_a_missing_column_is_one_line_and_exit_2(tmp_path, name, column):
    data = write_paper_files(tmp_path / "data", drop=(name, column))
    r = run_crs(
        "eval", "suite=paper", f"suite.data_dir={data}", f"model.name_or_path={tmp_path}/none", cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("crs: error:") and repr(column) in lines[0], r.stderr


def test_suite_on_a_local_model_scores_and_caches(tmp_path, tiny_model_dir):
    from crs.eval.main import evaluate

    data = write_paper_files(tmp_path / "data")
    ov = [
        "suite=paper",
        f"suite.data_dir={data}",
        f"source={tiny_model_dir}",
        "+suite.set.chat=false",
        "eval.n=3",
        "eval.k=[1,2,3]",
        "eval.max_new_tokens=6",
        "eval.batch_size=4",
        "tracking=none",  # MLflow logging: test_crs_eval_on_the_embedded_model
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    results = evaluate(_compose_eval(*ov), None, lambda o: _compose_eval(*o), ov)
    assert [r.benchmark for r in results] == PAPER and not any(r.cached for r in results)
    for r in results:
        v = r.summary.values
        assert 0 <= v["avg@3"] <= v["pass@2"] <= v["pass@3"] <= 1 and 0 <= v["extract_fail"] <= 1
    again = evaluate(_compose_eval(*ov), None, lambda o: _compose_eval(*o), ov)
    assert all(r.cached for r in again)
    assert [r.summary.values for r in again] == [r.summary.values for r in results]
    # another sampling setting, benchmark or model is another cache entry
    from crs.eval.cache import cache_key, model_hash

    key = cache_key(model_hash(tiny_model_dir), {"path": "a"}, None, {"n": 3})
    assert key == cache_key(model_hash(tiny_model_dir), {"path": "a"}, None, {"n": 3})
    assert key != cache_key(model_hash(tiny_model_dir), {"path": "a"}, None, {"n": 4})
    assert key != cache_key(model_hash(tiny_model_dir), {"path": "b"}, None, {"n": 3})
    assert key != cache_key(model_hash(tmp_path / "data"), {"path": "a"}, None, {"n": 3})


def test_crs_eval_on_the_embedded_model(tmp_path):
    # the debug=fast embedded model (shared, cached build) on its own task, through the real command line
    tiny = [
        "model.embedded.hidden_size=64",
        "model.embedded.num_layers=2",
        "model.embedded.num_kv_heads=2",
        "model.embedded.intermediate_size=128",
        "model.embedded.n_sft=6400",
        "model.embedded.sft_steps=300",
        "model.embedded.error_rate=0.0",
        "model.embedded.eval_k=4",
    ]
    r = run_crs(
        "eval",
        "benchmark=arithmetic_easy",
        *tiny,
        "eval.n=4",
        "eval.k=[1,4]",
        "eval.n_problems=16",
        "eval.max_new_tokens=32",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "avg@4" in r.stdout and "pass@4" in r.stdout and "logged eval/<benchmark>/*" in r.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("crs-eval").experiment_id])
    m = run.data.metrics
    # the embedded model solves part of its easy task: avg@4 strictly inside (0, 1), pass@4 above it
    assert 0 < m["eval/arithmetic_easy/avg_at_4"] < 1
    assert m["eval/arithmetic_easy/pass_at_4"] >= m["eval/arithmetic_easy/avg_at_4"]
    assert m["eval/arithmetic_easy/avg_at_4_ci_low"] <= m["eval/arithmetic_easy/avg_at_4"]


@pytest.mark.parametrize("bad,needle", [("eval.k=[1,9]", "eval.k"), ("eval.engine=vllm", "eval.engine")])
def test_bad_eval_values_are_one_line(tmp_path, bad, needle):
    r = run_crs("eval", bad, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------
# the paper's recipes


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_paper_recipe_composes(recipe):
    from crs.cli import compose
    from crs.config import validate

    cfg = compose([f"experiment=paper/{recipe}"])
    validate(cfg)
    t = cfg.trainer
    if recipe != "common":
        assert cfg.model.name in ("qwen3-4b", "qwen3-8b") and cfg.benchmark.path.endswith(
            "DAPO-Math-17k-Processed"
        )
    # 256 prompts × 8 completions per optimizer step, lr 1e-6, 39 936 response tokens (docs/methods.md §1.4)
    assert t.per_device_train_batch_size * t.gradient_accumulation_steps == 2048 and t.num_generations == 8
    assert t.lr == 1e-6 and t.max_completion_length == 39936 and t.temperature == 1.2
    assert OmegaConf.select(cfg, "method.name")


def recipe_one_step(recipe: str, compose_cfg, tiny_model_dir: str, data: Path) -> dict:
    """One optimizer step of a paper recipe on CPU: its config with a tiny local model and a local
    DAPO-Math-format file (prompt / solution), only the sizes shrunk."""
    from crs.train import train

    cfg = compose_cfg(
        f"experiment=paper/{recipe}",
        f"model.name_or_path={tiny_model_dir}",
        "model.dtype=float32",
        f"benchmark.path={data}",
        "benchmark.chat=false",
        "trainer.max_steps=1",
        "trainer.per_device_train_batch_size=4",
        "trainer.gradient_accumulation_steps=1",
        "trainer.num_generations=2",
        "trainer.max_completion_length=8",
        "trainer.eval_on_start=false",
        "trainer.eval_prompts=2",
        "trainer.num_generations_eval=2",
        "trainer.gradient_checkpointing=false",
        "trainer.save_model=false",
        "tracking=none",
    )
    return train(cfg)


def dapo_file(folder: Path) -> Path:
    path = folder / "dapo_math17k.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"{i}+{i}=", "solution": str(2 * i)}) + "\n" for i in range(8))
    )
    return path
