"""Exact cases for R³L (crs/methods/r3l/) written to kill its surviving mutants (docs/mutation.md):
the pivotal-credit masks on padding and tool tokens, the pivot turn past the last call, and the
single-turn retry helpers. Values by hand from the docstrings (the authors' rule, R3L_workflow.py
l.149-188, 272-279, as docs/methods/turns.md §9 describes it).

    python -m pytest tests/test_mutants_r3l.py -q
    make mutation MODULE=crs/methods/r3l/masks.py
"""

from __future__ import annotations

import torch

from crs.methods.r3l.episodes import pivot_turn, turn_start
from crs.methods.r3l.masks import pivot_suffix_mask, pivot_token_mask


def test_pivot_token_mask_keeps_padding_after_the_pivot_out():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    got = pivot_token_mask(mask, torch.tensor([1, 0]))
    assert got.tolist() == [[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]


def test_pivot_suffix_mask_zeroes_the_first_turns_and_never_trains_tool_tokens():
    # turns: 0 = positions 0-1, tool result at 2, turn 1 = 3-4, tool at 5, turn 2 = 6; padding at 7
    lm = torch.tensor([[1.0, 1, 0, 1, 1, 0, 1, 0]] * 4)
    got = pivot_suffix_mask(lm, torch.tensor([0, 1, 2, 3]))
    assert got.tolist() == [
        [1.0, 1, 0, 1, 1, 0, 1, 0],  # pivot 0: everything the loss mask trains
        [0.0, 0, 0, 1, 1, 0, 1, 0],
        [0.0, 0, 0, 0, 0, 0, 1, 0],
        [0.0, 0, 0, 0, 0, 0, 0, 0],  # pivot ≥ #turns: nothing
    ]


def test_pivot_turn_past_the_last_call_is_the_turn_after_it():
    assert pivot_turn(5, [0, 1, 2]) == 3
    assert pivot_turn(1, [4]) == 5
    assert pivot_turn(0, [2, 3]) == 2
    assert turn_start([1, 1, 0, 1], 0) == 0 and turn_start([0, 0, 1], 0) == 2


def test_retry_slots_and_their_assignment_inside_each_group():
    from crs.methods.r3l.single_turn import assign_retries, retry_slot_count

    assert [retry_slot_count(g, s) for g, s in ((4, 0.5), (8, 0.25), (3, 0.5), (5, 0.5))] == [2, 2, 2, 2]
    # G = 4, R = 2: only the first G − R = 2 slots of a group are first attempts that can be retried
    eligible = torch.tensor([True, False, True, True, False, True, False, False])
    assert assign_retries(eligible, 4, 2).tolist() == [-1, -1, 0, -1, -1, -1, 5, -1]
    # more eligible first attempts than retry slots: the first ones get them
    assert assign_retries(torch.tensor([True, True, False]), 3, 1).tolist() == [-1, -1, 0]


def test_step_start_and_pivot_rows():
    from crs.methods.r3l.single_turn import pivot_rows, step_start

    ends = torch.tensor([[1, 4, 6], [2, 5, -1]])
    assert step_start(ends, torch.tensor([2, 0])).tolist() == [5, 0]
    assert step_start(ends, torch.tensor([-1, 1])).tolist() == [0, 3]
    assert step_start(torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 0])).tolist() == [0, 0]
    # no steps at all (empty completions): every pivot starts at 0
    assert step_start(torch.zeros(2, 0, dtype=torch.long), torch.tensor([2, 0])).tolist() == [0, 0]
    # slot 2 retries row 0: both share row 0's pivot; the others are trained from 0
    got = pivot_rows(torch.tensor([-1, -1, 0, -1]), torch.tensor([3, 7, 9, 9]))
    assert got.tolist() == [3, 0, 3, 0]
    assert pivot_rows(torch.tensor([-1, -1]), torch.tensor([4, 4])).tolist() == [0, 0]


def test_splice_and_pad():
    from crs.methods.r3l.single_turn import _pad, splice

    assert splice([1, 2], [3, 4, 5], 4) == [1, 2, 3, 4] and splice([1], [2], 9) == [1, 2]
    ids, mask = _pad([[1, 2], [3]], 0, left=True)
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = _pad([[1, 2], [3]], 9, left=False)
    assert ids.tolist() == [[1, 2], [3, 9]] and mask.tolist() == [[1, 1], [1, 0]]
    ids, mask = _pad([[], []], 7, left=True)
    assert ids.tolist() == [[7], [7]] and mask.tolist() == [[0], [0]] and ids.dtype == torch.long
    assert mask.dtype == torch.long  # an attention mask
    ids, mask = _pad([], 0, left=True)  # no sequences at all
    assert ids.shape == (0, 1) and mask.shape == (0, 1)


def test_r3l_step_applies_the_pivotal_keep_mask():
    from crs.credit.method import CreditBatch
    from crs.methods.r3l import r3l

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    keep = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)  # wider: cropped
    b = CreditBatch(advantages=torch.ones(2), mask=mask, features={"r3l_keep": keep})
    out = r3l(b)
    assert out.mask.dtype == torch.float32 and out.mask.tolist() == [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    assert r3l(b, pivotal=False) is b
    plain = CreditBatch(advantages=torch.ones(2), mask=mask)
    assert r3l(plain) is plain


def test_r3l_check_lines():
    import pytest
    from omegaconf import OmegaConf

    from crs.errors import ConfigError
    from crs.methods.r3l import check

    def cfg(bench, scorer="rule", G=4, path=None):
        return OmegaConf.create(
            {
                "benchmark": {"name": bench},
                "trainer": {"num_generations": G},
                "method": {"steps": {"scorer": scorer, "prm": {"path": path}, "judge": {"path": None}}},
            }
        )

    a = {"retry_share": 0.5, "guidance": None}
    check(cfg("maze"), a)
    check(cfg("arithmetic"), a)
    check(cfg("slate_rank", "prm", path="/some/prm"), a)  # a trained scorer needs no process verifier
    check(cfg("arithmetic"), {**a, "guidance": "retry {step}: {text}"})
    bad = [
        (
            cfg("maze", "prm"),
            a,
            "method r3l on maze: turns are reflected on by the exact turn verifier; use "
            "method.steps.scorer=rule",
        ),
        (
            cfg("calc_tool"),
            {**a, "guidance": "x"},
            "method r3l on calc_tool: credit.r3l.guidance is single-turn only (set it to null)",
        ),
        (
            cfg("arithmetic", "oracle"),
            a,
            "method r3l: method.steps.scorer must name wrong steps: one of rule, prm, judge (got 'oracle')",
        ),
        (
            cfg("slate_rank"),
            a,
            "method r3l: method.steps.scorer=rule needs a process verifier for benchmark "
            "'slate_rank' (known: arithmetic, bifurcation); give method.steps.rule.path for other tasks",
        ),
        (
            cfg("slate_rank", "prm"),
            a,
            "method r3l: method.steps.scorer=prm needs a process verifier for benchmark "
            "'slate_rank' (known: arithmetic, bifurcation); give method.steps.prm.path for other tasks",
        ),
        (
            cfg("arithmetic"),
            {**a, "retry_share": 0.1},
            "method r3l: retry_share=0.1 gives 0 retry slots of "
            "trainer.num_generations=4; need at least one retry slot and one first attempt per group",
        ),
        (
            cfg("arithmetic", G=2),
            {**a, "retry_share": 0.9},
            "method r3l: retry_share=0.9 gives 2 retry slots of "
            "trainer.num_generations=2; need at least one retry slot and one first attempt per group",
        ),
        (cfg("arithmetic"), {**a, "guidance": 3}, "method r3l: credit.r3l.guidance must be a string or null"),
    ]
    for c, args, msg in bad:
        with pytest.raises(ConfigError) as info:
            check(c, args)
        assert str(info.value) == msg
    check(cfg("arithmetic", G=2), a)  # R = 1 of 2: the boundary


def test_r3l_check_on_an_environment_without_a_turn_verifier(monkeypatch):
    import pytest
    from omegaconf import OmegaConf

    import crs.benchmarks
    from crs.errors import ConfigError
    from crs.methods.r3l import check

    monkeypatch.setitem(crs.benchmarks.BUILTIN, "toy_env", ("crs.envs.maze", True))
    c = OmegaConf.create({"benchmark": {"name": "toy_env"}, "method": {"steps": {"scorer": "rule"}}})
    with pytest.raises(ConfigError) as info:
        check(c, {"retry_share": 0.5, "guidance": None})
    assert str(info.value) == "method r3l: no turn verifier for benchmark 'toy_env' (known: maze, calc_tool)"
