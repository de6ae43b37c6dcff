"""The ρ clock: the k-th rollout of a run is rollout k (1-based), whatever the gradient accumulation.

Golden clock: the authors count one rollout per training iteration from 1. RLVR-Schedule
(``Jinghaoleven/RLVR-Schedule`` @ f4272ef, ``verl/trainer/ppo/ray_trainer.py``) evaluates
``self._prefix_curriculum(self.global_steps)`` (:1632, :1730) with ``global_steps`` set from the
checkpoint (:1090), ``+= 1`` before the first batch ("we start from step 1", :1485) and ``+= 1`` after
each generated and trained batch (:1848). In TRL 1.16 a rollout is generated in
``GRPOTrainer._prepare_inputs`` (trl/trainer/grpo_trainer.py:1538-1546) when
``self._step % (steps_per_generation·num_iterations) == 0`` or nothing is buffered (a resumed trainer),
``self._step`` being incremented once per micro-step in ``training_step`` (:1513). So the sequence of
indices seen at the generations of a run must be 1, 2, ..., ``total_rollouts()``.

The grid drives the real ``CreditGRPOTrainer.rollout_index``/``total_rollouts`` through a transcription
of HF ``Trainer``'s loop (GA micro-steps per optimizer step, ``global_step += 1`` after them) and of
TRL's ``_prepare_inputs`` counter; two cases run the real trainer (``trainer.train()`` on the tiny
model), one of them resumed from a checkpoint. The old clock, ``global_step·GA // (S·N_it) + 1``, gives
1, 1, 3, 3, ... for GA=2, S=1 and fails these tests.

    pytest tests/test_clock.py
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from crs.methods.chain import CreditChain
from crs.testing import cpu_grpo_config
from crs.trainers.grpo import CreditGRPOTrainer


class Recorder:
    """A schedule that records the ``(rollout, total)`` it is asked for (``Schedule.at_step``'s API)."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def at_step(self, rollout: int, total: int) -> float:
        self.calls.append((rollout, total))
        return 0.0

    def __call__(self, progress: float) -> float:  # pragma: no cover - at_step is used
        return 0.0


def _bare(ga: int, spg: int, nit: int, max_steps: int, global_step: int = 0) -> CreditGRPOTrainer:
    """A ``CreditGRPOTrainer`` holding only what the clock reads, as a freshly built trainer has it."""
    tr = CreditGRPOTrainer.__new__(CreditGRPOTrainer)
    tr.args = SimpleNamespace(gradient_accumulation_steps=ga, steps_per_generation=spg)
    tr.num_iterations = nit
    tr.state = SimpleNamespace(global_step=global_step, max_steps=max_steps)
    tr._step = 0  # GRPOTrainer.__init__ (grpo_trainer.py:948)
    tr._buffered_inputs = None  # :951
    return tr


def _simulate(ga, spg, nit, max_steps, resume_at=None):
    """Rollout indices seen at each generation: HF's optimizer loop around TRL's ``_prepare_inputs``.

    ``resume_at``: a new trainer (``_step`` = 0, nothing buffered) restored at that global step, as
    ``trainer.train(resume_from_checkpoint=...)`` builds it. Returns (indices, total_rollouts).
    """
    every = spg * nit
    tr = _bare(ga, spg, nit, max_steps)
    seen = []
    for g in range(max_steps):
        if resume_at is not None and g == resume_at:
            tr = _bare(ga, spg, nit, max_steps, global_step=g)
        for _ in range(ga):
            if tr._step % every == 0 or tr._buffered_inputs is None:  # grpo_trainer.py:1539
                seen.append(tr.rollout_index())
                tr._buffered_inputs = [None] * spg
            tr._step += 1  # training_step, :1513
        tr.state.global_step += 1
    return seen, tr.total_rollouts()


GRID = [(ga, spg, nit) for ga in (1, 2, 4, 8) for spg in (1, 2, 4) for nit in (1, 2)]


@pytest.mark.parametrize("ga, spg, nit", GRID)
def test_rollout_indices_count_generations(ga, spg, nit):
    max_steps = 12
    seen, total = _simulate(ga, spg, nit, max_steps)
    assert total == math.ceil(max_steps * ga / (spg * nit))
    assert seen == list(range(1, total + 1)), (ga, spg, nit, seen)


@pytest.mark.parametrize("ga, spg, nit", GRID)
@pytest.mark.parametrize("resume_at", [1, 3, 5])
def test_rollout_indices_after_a_resume(ga, spg, nit, resume_at):
    """A resumed run goes on counting where the uninterrupted one was (verl restores ``global_steps``)."""
    max_steps = 12
    fresh, total = _simulate(ga, spg, nit, max_steps)
    seen, total_resumed = _simulate(ga, spg, nit, max_steps, resume_at=resume_at)
    assert total_resumed == total
    every, first_micro = spg * nit, resume_at * ga
    before = [r for r in fresh if (r - 1) * every < first_micro]  # rollouts started before the resume
    after = seen[len(before) :]
    # the first rollout after the resume is the one the uninterrupted run was using at that micro-step
    # (TRL regenerates it when the resume falls inside it), then one more per generation, within total
    assert seen[: len(before)] == before
    assert after[0] == first_micro // every + 1
    assert after == list(range(after[0], after[0] + len(after)))
    assert after[-1] <= total
    if first_micro % every == 0:  # resumed on a rollout boundary: exactly the uninterrupted sequence
        assert seen == fresh


# ------------------------------------------------------------------------------- the real trainer


def varied_reward(completion_ids, **kwargs):
    return [float(sum(ids) % 7) / 7.0 for ids in completion_ids]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tok


def _train(model_and_tok, out, ga, spg, max_steps, resume=None, **kw):
    model, tok = model_and_tok
    sched = Recorder()
    args = cpu_grpo_config(
        out,
        max_steps=max_steps,
        per_device_train_batch_size=4,
        num_generations=4,
        gradient_accumulation_steps=ga,
        steps_per_generation=spg,
        max_completion_length=4,
        **kw,
    )
    data = Dataset.from_dict({"prompt": [f"Q: {a}+{a % 5}\nA:" for a in range(64)]})  # one epoch
    tr = CreditGRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=[varied_reward],
        args=args,
        train_dataset=data,
        processing_class=tok,
        credit=CreditChain({}),
        schedule=sched,
    )
    tr.train(resume_from_checkpoint=resume)
    return sched.calls


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("ga, spg", [(2, 1), (2, 3)])
def test_real_trainer_counts_each_generation_once(model_and_tok, tmp_path, ga, spg):
    calls = _train(model_and_tok, tmp_path, ga, spg, max_steps=3)
    total = math.ceil(3 * ga / spg)
    assert calls == [(r, total) for r in range(1, total + 1)]


@pytest.mark.filterwarnings("ignore")
def test_real_trainer_resumed_from_a_checkpoint_goes_on_counting(model_and_tok, tmp_path):
    # GA = 2, S = 1: a rollout per micro-step, 6 in 3 optimizer steps; resume after step 1 (2 rollouts)
    save = {"save_strategy": "steps", "save_steps": 1}
    full = _train(model_and_tok, tmp_path / "a", 2, 1, max_steps=3, **save)
    assert [r for r, _ in full] == [1, 2, 3, 4, 5, 6]
    resumed = _train(
        model_and_tok, tmp_path / "b", 2, 1, max_steps=3, resume=str(tmp_path / "a" / "checkpoint-1"), **save
    )
    assert resumed == [(r, 6) for r in (3, 4, 5, 6)]
