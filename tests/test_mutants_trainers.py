"""The token_mean divisor (``CreditGRPOTrainer._token_mean_items``) on the cases tests/test_token_mean.py
leaves out: an optimizer step spanning two rollouts (extrapolated, warned once), a batch that is not the
buffered rollout (direct calls: extrapolated, silent) and the boundary micro-step where the next rollout
starts. Called on a plain namespace standing in for the trainer (only the attributes the method reads), so
no model is built. Values by hand: TRL divides by ``num_items / GA · S``, so ``num_items = local · S / GA``.

    python -m pytest tests/test_mutants_trainers.py -q
    make mutation MODULE=crs/trainers/grpo.py
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from crs.trainers.grpo import CreditGRPOTrainer

SPAN = "crs: an optimizer step spans several rollouts"


def _mask(trained: int, rows: int = 2, T: int = 4) -> torch.Tensor:
    flat = torch.zeros(rows * T)
    flat[:trained] = 1.0
    return flat.view(rows, T)


def _fake(ga: int, S: int, step: int, buffered: list[int] | None, iterations: int = 1):
    buf = None if buffered is None else [{"completion_mask": _mask(n).long()} for n in buffered]
    return SimpleNamespace(
        current_gradient_accumulation_steps=ga,
        args=SimpleNamespace(steps_per_generation=S),
        _micro_steps_per_rollout=lambda: S * iterations,
        _step=step,
        _buffered_inputs=buf,
        _crs_warned=set(),
        accelerator=SimpleNamespace(gather=lambda t: t),
    )


def _items(fake, mask, mode="train"):
    return float(CreditGRPOTrainer._token_mean_items(fake, mode, mask))


def test_a_step_spanning_two_rollouts_extrapolates_and_warns_once():
    fake = _fake(ga=4, S=2, step=0, buffered=[1, 2])  # 4 micro-batches, rollouts of 2: spans two
    with pytest.warns(UserWarning, match=SPAN) as rec:
        assert _items(fake, _mask(5)) == 5 * 4 * 2 / 4  # local = 5·GA, × S / GA
    assert len(rec) == 1  # (stacklevel is not pinned: mutmut's trampoline adds a frame)
    assert str(rec[0].message) == (
        "crs: an optimizer step spans several rollouts (gradient_accumulation_steps > steps_per_generation); "
        "the token-mean divisor is extrapolated from each micro-batch"
    )
    assert fake._crs_warned == {"token_mean_estimate"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _items(fake, _mask(3)) == 3 * 4 * 2 / 4  # no second warning


def test_a_batch_that_is_not_the_buffered_rollout_is_extrapolated_silently():
    fake = _fake(ga=2, S=4, step=0, buffered=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _items(fake, _mask(5)) == 5 * 2 * 4 / 2
    assert fake._crs_warned == set()


def test_the_micro_step_where_the_next_rollout_starts_is_not_read_from_the_buffer():
    # S = 3, GA = 2: the step of micro-steps 2, 3 takes chunk 2 of this rollout and chunk 0 of the next
    fake = _fake(ga=2, S=3, step=2, buffered=[1, 2, 3])
    with pytest.warns(UserWarning, match=SPAN):
        assert _items(fake, _mask(3)) == 3 * 2 * 3 / 2  # extrapolated, not (3 + 1)·3/2
    # micro-step 0 of the same rollout: chunks 0 and 1 of the buffer, 1 + 2 tokens
    assert _items(_fake(ga=2, S=3, step=0, buffered=[1, 2, 3]), _mask(8)) == 3 * 3 / 2


def test_eval_divides_by_the_micro_batch_tokens():
    assert _items(_fake(ga=4, S=8, step=5, buffered=[1] * 8), _mask(6), mode="eval") == 6.0
