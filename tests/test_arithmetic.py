"""Tests for the embedded arithmetic benchmark: generation, splits, strict verifier, rewards, step scores."""

from __future__ import annotations

import re

import pytest

from crs.benchmarks import BENCHMARKS, Benchmark, build_benchmark
from crs.benchmarks.arithmetic import (
    ArithmeticConfig,
    Problem,
    correctness_reward,
    eval_problems,
    parse_prompt,
    sft_dataset,
    solution_text,
    step_scores,
    verify,
)

SMALL = {"name": "arithmetic", "n_train": 300, "n_eval": 100}


def _eval_left_to_right(prompt: str) -> int:
    terms, ops = parse_prompt(prompt)
    acc = terms[0]
    for o, t in zip(ops, terms[1:]):
        acc = {"+": acc + t, "-": acc - t, "*": acc * t}[o]
    return acc


# ---------------------------------------------------------------- generation and splits


def test_registered_and_conforms():
    b = build_benchmark(SMALL, seed=0)
    assert "arithmetic" in BENCHMARKS
    assert isinstance(b, Benchmark) and b.name == "arithmetic"
    assert len(b.train) == 300 and len(b.eval) == 100
    assert {"prompt", "answer"} <= set(b.train.column_names) and {"prompt", "answer"} <= set(
        b.eval.column_names
    )
    assert b.reward_funcs == [correctness_reward] and b.verify is verify
    assert b.train[0]["prompt"].startswith("Q: ") and b.train[0]["prompt"].endswith("\nA:")


def test_generation_is_deterministic_and_seeded():
    a, b, c = (build_benchmark(SMALL, seed=s) for s in (0, 0, 1))
    assert a.train["prompt"] == b.train["prompt"] and a.train["answer"] == b.train["answer"]
    assert a.train["prompt"] != c.train["prompt"]  # the run seed changes the train split...
    assert a.eval["prompt"] == c.eval["prompt"]  # ...but never the eval split
    other_eval = build_benchmark({**SMALL, "eval_seed": 99}, seed=0)
    assert other_eval.eval["prompt"] != a.eval["prompt"]


def test_no_global_rng_use():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    build_benchmark(SMALL, seed=0)
    assert random.random() == expected


def test_train_sft_and_eval_are_disjoint():
    for seed in (0, 1234):  # also when the run seed equals eval_seed
        b = build_benchmark(SMALL, seed=seed)
        ev = set(b.eval["prompt"])
        assert len(ev) == len(b.eval)  # eval prompts are unique
        assert not ev & set(b.train["prompt"])
        assert not ev & set(b.sft(500, seed)["prompt"])


def test_answers_are_left_to_right_chains():
    b = build_benchmark({**SMALL, "ops": "+-*", "allow_negative": True, "max_terms": 5}, seed=3)
    for p, a in zip(b.train["prompt"], b.train["answer"]):
        assert int(a) == _eval_left_to_right(p)


@pytest.mark.parametrize(
    "knobs",
    [
        {"min_terms": 2, "max_terms": 2, "max_operand": 9, "ops": "+"},
        {"min_terms": 3, "max_terms": 5, "max_operand": 20, "ops": "+-", "allow_negative": False},
        {
            "min_terms": 3,
            "max_terms": 4,
            "max_operand": 12,
            "ops": "+-*",
            "allow_negative": True,
            "max_value": 50,
        },
    ],
)
def test_difficulty_knobs_are_respected(knobs):
    cfg = ArithmeticConfig(**knobs)
    b = build_benchmark({"name": "arithmetic", "n_train": 200, "n_eval": 30, **knobs}, seed=0)
    n_terms = set()
    for row in b.train:
        terms, ops = parse_prompt(row["prompt"])
        n_terms.add(len(terms))
        assert cfg.min_terms <= len(terms) <= cfg.max_terms
        assert all(0 <= t <= cfg.max_operand for t in terms)
        assert set(ops) <= set(cfg.ops)
        acc = terms[0]
        for o, t in zip(ops, terms[1:]):
            acc = {"+": acc + t, "-": acc - t, "*": acc * t}[o]
            assert abs(acc) <= cfg.max_value
            assert cfg.allow_negative or acc >= 0
    assert n_terms == set(range(cfg.min_terms, cfg.max_terms + 1))


def test_accepts_omegaconf_and_rejects_bad_knobs():
    from omegaconf import OmegaConf

    b = build_benchmark(OmegaConf.create({**SMALL, "max_terms": 3, "unrelated_hydra_key": 1}), seed=0)
    assert max(len(parse_prompt(p)[0]) for p in b.train["prompt"]) == 3
    with pytest.raises(ValueError):
        build_benchmark({**SMALL, "min_terms": 4, "max_terms": 3}, seed=0)
    with pytest.raises(ValueError):
        build_benchmark({**SMALL, "ops": "+/"}, seed=0)
    with pytest.raises(ValueError):  # only 10*10 distinct 2-term '+' prompts exist
        eval_problems(ArithmeticConfig(min_terms=2, max_terms=2, max_operand=9, ops="+", n_eval=500))


# ---------------------------------------------------------------- verifier and reward


@pytest.mark.parametrize(
    "completion, answer, ok",
    [
        (" 7+5=12, 12-3=9, 9+8=17. Answer: 17", "17", True),
        (" 7+5=12, 12-3=9, 9+8=17. Answer: 17  \n", "17", True),  # trailing whitespace is stripped
        ("Answer: 17", "17", True),  # the final answer alone is enough for the outcome verifier
        (" 5-9=-4. Answer: -4", "-4", True),
        (" 7+5=12, 12-3=9, 9+8=17. Answer: 16", "17", False),  # wrong number
        (" 7+5=12, 12-3=9, 9+8=17.", "17", False),  # missing answer
        (" 9+8=17. Answer: 17 Answer: 17", "17", False),  # two answers
        (" Answer: 3. Answer: 17", "17", False),  # two answers, last one right
        (" 9+8=17. Answer: 17.", "17", False),  # trailing junk
        (" 9+8=17. Answer: 17\nQ: 1+1", "17", False),  # kept generating
        (" 9+8=17. Answer: 170", "17", False),
        (" 9+8=17. Answer: 017", "17", False),  # non-canonical number
        (" 9+8=17. Answer: +17", "17", False),
        (" 9+8=17. answer: 17", "17", False),  # wrong case
        (" 9+8=17. Answer:17", "17", False),  # exact pattern: one space
        (" 9+8=17. The answer is 17", "17", False),
        ("", "17", False),
    ],
)
def test_verify_is_strict(completion, answer, ok):
    assert verify(completion, answer) is ok


def test_reward_called_like_trl():
    logged: dict[str, float] = {}
    completions = [" 1+2=3. Answer: 3", " 1+2=4. Answer: 4", "nonsense", " 2+2=4. Answer: 4"]
    rewards = correctness_reward(
        prompts=["Q: 1+2\nA:"] * 3 + ["Q: 2+2\nA:"],
        completions=completions,
        completion_ids=[[0]] * 4,
        answer=["3", "3", "3", "4"],
        trainer_state=None,
        log_metric=lambda name, value: logged.__setitem__(name, value),
        log_extra=lambda *a, **k: None,
    )
    assert rewards == [1.0, 0.0, 0.0, 1.0]
    assert logged == {"accuracy": 0.5}
    assert correctness_reward.__name__ == "correctness"
    # conversational completions and no log_metric
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    assert correctness_reward(None, chat, answer=["3", "3", "3", "4"]) == rewards
    with pytest.raises(ValueError):  # misaligned columns must not be silently truncated
        correctness_reward(None, completions, answer=["3"])


# ---------------------------------------------------------------- step scores and SFT data


def test_step_scores_hand_written():
    row = {"prompt": "Q: 7+5-3+8\nA:"}
    good = " 7+5=12, 12-3=9, 9+8=17. Answer: 17"
    assert step_scores(good, row) == [(1, 7, 1.0), (9, 15, 1.0), (17, 23, 1.0)]
    assert good[1:7] == "7+5=12" and good[17:23] == "9+8=17"
    # arithmetic slip in step 2; step 3 chains from the wrong value correctly
    assert [s for *_, s in step_scores(" 7+5=12, 12-3=8, 8+8=16. Answer: 16", row)] == [1.0, 0.0, 1.0]
    # broken chaining: step 2 does not start from step 1's result
    assert [s for *_, s in step_scores(" 7+5=12, 11-3=8, 8+8=16. Answer: 16", row)] == [1.0, 0.0, 1.0]
    # wrong operand w.r.t. the prompt only matters when the row is given
    bad_operand = " 7+5=12, 12-4=8, 8+8=16. Answer: 16"
    assert [s for *_, s in step_scores(bad_operand)] == [1.0, 1.0, 1.0]
    assert [s for *_, s in step_scores(bad_operand, row)] == [1.0, 0.0, 1.0]
    # wrong first term, extra steps beyond the chain, negatives, nothing to parse
    assert [s for *_, s in step_scores(" 6+5=11, 11-3=8", row)] == [0.0, 1.0]
    assert [s for *_, s in step_scores(good.replace(". Answer", ", 17+1=18. Answer"), row)] == [1.0] * 3 + [
        0.0
    ]
    assert step_scores(" 5-9=-4, -4+3=-1. Answer: -1") == [(1, 7, 1.0), (9, 16, 1.0)]
    assert step_scores("no steps here. Answer: 3") == []


@pytest.mark.parametrize("seed", [0, 7])
def test_sft_dataset_error_rate(seed):
    clean = sft_dataset(200, seed, error_rate=0.0, cfg=SMALL)
    assert clean.column_names == ["prompt", "completion", "answer", "noisy"]
    assert clean["prompt"] == sft_dataset(200, seed, error_rate=0.0, cfg=SMALL)["prompt"]
    for r in clean:
        assert verify(r["completion"], r["answer"])
        assert all(s == 1.0 for *_, s in step_scores(r["completion"], r))
    noisy = sft_dataset(200, seed, error_rate=1.0, cfg=SMALL)
    for r in noisy:
        scores = [s for *_, s in step_scores(r["completion"], r)]
        assert scores.count(0.0) == 1  # exactly one perturbed step, the rest chain correctly
        assert not verify(r["completion"], r["answer"])  # the slip propagates to the final answer
    half = sft_dataset(1000, seed, error_rate=0.3, cfg=SMALL)
    frac = sum(half["noisy"]) / len(half)
    assert 0.25 < frac < 0.35
    assert sum(not verify(c, a) for c, a in zip(half["completion"], half["answer"])) == sum(half["noisy"])


def test_solution_text_format():
    p = Problem((7, 5, 3, 8), ("+", "-", "+"))
    assert p.prompt == "Q: 7+5-3+8\nA:"
    assert solution_text(p) == " 7+5=12, 12-3=9, 9+8=17. Answer: 17"
    assert solution_text(p, wrong_step=0, delta=1) == " 7+5=13, 13-3=10, 10+8=18. Answer: 18"
    assert re.fullmatch(r" (\d+[+\-*]\d+=-?\d+, )*\d+[+\-*]\d+=-?\d+\. Answer: -?\d+", solution_text(p))
