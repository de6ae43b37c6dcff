"""benchmark=slate_rank: the spec's golden cases for both rewards (docs/methods/wave3.md §1.8 F1-F3, F10),
the format checker, the parts F-GRPO reads, determinism, and the embedded model's cache keys.

Mutations these tests kill (planted, seen failing, reverted; docs/f_grpo.md):
- IDCG over ``min(k, len(ranking))`` instead of ``min(k, |Rel|)``: a one-item ranking of two relevant gives 1.0 → test_ndcg_golden_f2_f3;
- no format penalty on a broken completion → test_format_penalty_f10;
- ``slate_cap`` not applied (a 12-id slate buys recall 1) → test_slate_cap_and_duplicates;
- ``"task_name"`` added to the arithmetic cache key too → test_arithmetic_cache_key_unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest

from crs.benchmarks import build_benchmark
from crs.benchmarks.slate_rank import (
    SlateRankConfig,
    completion_text,
    eval_problems,
    ndcg,
    parse,
    parts,
    recall,
    score,
    sft_dataset,
    verify,
)
from crs.errors import ConfigError

CFG = SlateRankConfig()


def test_recall_golden_f1():
    assert recall(["A", "C", "D"], ["A", "B"]) == 0.5


def test_ndcg_golden_f2_f3():
    assert ndcg(["C", "A"], ["A", "B"], k=5) == pytest.approx(0.386853, abs=1e-6)
    assert ndcg(["A", "B"], ["A", "B"], k=5) == 1.0
    assert ndcg(["C", "A"], ["A", "B"], k=1) == 0.0
    assert ndcg(["A"], ["A", "B"], k=5) == pytest.approx(1 / 1.630930, abs=1e-6)  # IDCG counts all of Rel


def test_format_penalty_f10():
    # missing </R>: the ranking scores 0, both phases lose the penalty; the slate still counts
    assert score(" <S> a b </S> <R> a b", "a b", CFG) == (0.0, -1.0, False)
    assert score(" a b", "a b", CFG) == (-1.0, -1.0, False)
    assert score(" <S> a b </S> <R> a b </R>", "a b", CFG) == (1.0, 1.0, True)
    assert score(" <S> a b </S> <R> a b </R> extra", "a b", CFG)[2] is False  # trailing text


def test_slate_cap_and_duplicates():
    everything = " ".join("abcdefgh")
    r_slate, _, ok = score(f" <S> {everything} </S> <R> a </R>", "g h", CFG)
    assert ok and r_slate == 0.0  # only the first slate_cap = 6 ids count
    r_slate, r_rank, _ = score(" <S> a a a b </S> <R> a a b </R>", "a b", CFG)
    assert (r_slate, r_rank) == (1.0, 1.0)  # duplicates dropped, not double-counted


def test_ranked_ids_outside_the_slate_drop_or_penalize():
    text = " <S> a b </S> <R> z c a </R>"  # z unknown, c outside the slate
    assert score(text, "a", CFG)[1] == 1.0  # drop: a moves to rank 1
    pen = SlateRankConfig(rank_outside_slate="penalize")
    assert score(text, "a", pen)[1] == pytest.approx(1 / 1.584962500721156, abs=1e-9)  # c: zero-gain rank 1


def test_parse_spans_and_parts():
    text = completion_text(["a", "c", "d"], ["c", "a"])  # " <S> a c d </S> <R> c a </R>"
    got = parse(text)
    assert got["ok"] and [i for i, _, _ in got["slate"]] == ["a", "c", "d"]
    assert [text[s:e] for _, s, e in got["rank"]] == ["c", "a"]
    p = parts(text, {"answer": "a b"})
    assert p["slate"][1] == 0.5 and p["rank"][1] == pytest.approx(0.386853, abs=1e-6)
    assert text[: p["slate_side"][0][0][1]].endswith("</S>") and p["slate_side"][1] is None
    assert parts(" junk", {"answer": "a"})["slate_side"][0] == [(0, 5)]  # no </S>: all of it


def test_gold_sft_targets_are_correct_and_noise_is_independent():
    clean = sft_dataset(200, 0, cfg=SlateRankConfig(slate_noise=0.0, rank_noise=0.0))
    assert all(verify(c, a) for c, a in zip(clean["completion"], clean["answer"]))
    noisy = sft_dataset(400, 0, cfg=CFG)
    kinds = {k: noisy["noisy"].count(k) for k in ("", "slate", "rank", "slate+rank")}
    assert all(v > 0 for v in kinds.values()), kinds
    for c, a, k in zip(noisy["completion"], noisy["answer"], noisy["noisy"]):
        r_slate, r_rank, ok = score(c, a, CFG)
        assert ok and (r_slate < 1.0) == ("slate" in k)


def test_deterministic_and_eval_split_held_out():
    a, b = (
        build_benchmark({"name": "slate_rank", "n_train": 300}, 0),
        build_benchmark({"name": "slate_rank", "n_train": 300}, 0),
    )
    assert a.train["prompt"] == b.train["prompt"]
    assert build_benchmark({"name": "slate_rank", "n_train": 300}, 1).train["prompt"] != a.train["prompt"]
    assert not set(a.train["prompt"]) & set(a.eval["prompt"])
    assert a.eval["prompt"] == [p.prompt for p in eval_problems(CFG)]
    answers = a.train["answer"][:4]
    gold = [completion_text(x.split(), x.split()) for x in answers]
    empty = [completion_text([], []) for _ in answers]
    assert [f.__name__ for f in a.reward_funcs] == ["slate_recall", "rank_ndcg"]
    assert [f(None, gold, answer=answers) for f in a.reward_funcs] == [[1.0] * 4, [1.0] * 4]
    assert [f(None, empty, answer=answers) for f in a.reward_funcs] == [[0.0] * 4, [0.0] * 4]


def test_bad_benchmark_values_are_one_config_error():
    with pytest.raises(ConfigError, match="slate_cap"):
        SlateRankConfig.from_mapping({"name": "slate_rank", "max_candidates": 5, "slate_cap": 4})
    with pytest.raises(ConfigError, match="not a slate_rank key"):
        SlateRankConfig.from_mapping({"name": "slate_rank", "n_itemz": 3})


def test_arithmetic_cache_key_unchanged():
    """The default model's key is the original formula (no task name), so the regression fixture matches."""
    from crs.benchmarks.arithmetic import ArithmeticConfig
    from crs.embedded import BUILDER_VERSION, EmbeddedModelConfig, cache_key

    original = {
        "builder": BUILDER_VERSION,
        "model": asdict(EmbeddedModelConfig()),
        "task": ArithmeticConfig().sft_key(),
    }
    want = hashlib.sha256(json.dumps(original, sort_keys=True).encode()).hexdigest()[:12]
    assert cache_key(None, {"name": "arithmetic"}) == want
    assert cache_key(None, {"name": "slate_rank"}) not in (want, cache_key(None, {"name": "bifurcation"}))
    assert cache_key(None, {"name": "slate_rank"}) != cache_key(
        None, {"name": "slate_rank", "slate_noise": 0.1}
    )
