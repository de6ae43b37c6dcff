"""Checkpoint selection/publishing and the non-finite guards, pinned exactly (docs/mutation.md).

Written to kill the surviving mutants of crs/runs/checkpoint.py (``prune``'s keep-K and incomplete
rules, the atomic marker, the run key's volatile keys) and crs/runs/guard.py (the collapse watch's
thresholds and streak, the error message).

    python -m pytest tests/test_mutants_runs.py -q
    make mutation MODULE=crs/runs/checkpoint.py
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from omegaconf import OmegaConf

from crs.runs.checkpoint import (
    MARKER,
    checkpoints_dir,
    complete_checkpoints,
    latest_checkpoint,
    prune,
    read_marker,
    run_key,
    write_json_atomic,
)
from crs.runs.guard import (
    CollapseWatch,
    FiniteChecks,
    NonFiniteError,
    _finite,
    _GradParamGuard,
    install_guards,
)


def _ckpt(home, step, complete=True):
    p = checkpoints_dir(home) / f"checkpoint-{step}"
    p.mkdir(parents=True)
    if complete:
        (p / MARKER).write_text(json.dumps({"step": step}))
    return p


def _names(home):
    return sorted(p.name for p in checkpoints_dir(home).iterdir())


def test_checkpoints_dir_is_home_slash_checkpoints(tmp_path):
    assert checkpoints_dir(str(tmp_path)) == tmp_path / "checkpoints"


def test_prune_keeps_the_last_k_complete(tmp_path):
    for s in (1, 3, 20, 5):
        _ckpt(tmp_path, s)
    prune(tmp_path, keep=2)
    assert _names(tmp_path) == ["checkpoint-20", "checkpoint-5"]
    prune(tmp_path, keep=2)  # idempotent
    assert len(complete_checkpoints(tmp_path)) == 2
    prune(tmp_path, keep=1)
    assert _names(tmp_path) == ["checkpoint-20"]


def test_prune_keep_more_than_there_are_removes_nothing(tmp_path):
    for s in (1, 2):
        _ckpt(tmp_path, s)
    prune(tmp_path, keep=5)
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-2"]


def test_prune_drops_incomplete_up_to_the_newest_complete(tmp_path):
    _ckpt(tmp_path, 4)
    _ckpt(tmp_path, 8)
    _ckpt(tmp_path, 6, complete=False)  # a save cut short: older than the newest complete
    _ckpt(tmp_path, 12, complete=False)  # being written right now: newer, kept
    prune(tmp_path, keep=5)
    assert _names(tmp_path) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]


def test_prune_drops_an_incomplete_one_at_the_newest_step(tmp_path):
    # `_step_of(p) <= newest`: a folder named like the newest complete step but without a marker
    _ckpt(tmp_path, 3)
    p = checkpoints_dir(tmp_path) / "checkpoint-03"  # int("03") == 3
    p.mkdir()
    prune(tmp_path, keep=1)
    assert _names(tmp_path) == ["checkpoint-3"]


def test_prune_without_incomplete_too_keeps_them(tmp_path):
    _ckpt(tmp_path, 4)
    _ckpt(tmp_path, 2, complete=False)
    prune(tmp_path, keep=1, incomplete_too=False)
    assert _names(tmp_path) == ["checkpoint-2", "checkpoint-4"]


def test_prune_with_no_complete_one_keeps_incomplete(tmp_path):
    _ckpt(tmp_path, 2, complete=False)
    _ckpt(tmp_path, 0, complete=False)
    _ckpt(tmp_path, 1, complete=False)
    (checkpoints_dir(tmp_path) / "checkpoint-best").mkdir()  # not a step (-1): at or below "no step"
    prune(tmp_path, keep=1)
    assert _names(tmp_path) == ["checkpoint-0", "checkpoint-1", "checkpoint-2"]
    prune(tmp_path / "nowhere", keep=1)  # no checkpoints folder: nothing to do


def test_prune_keeps_files_and_non_step_names(tmp_path):
    _ckpt(tmp_path, 5)
    (checkpoints_dir(tmp_path) / "checkpoint-best").mkdir()  # not a step: _step_of == -1 <= 5 but ...
    (checkpoints_dir(tmp_path) / "checkpoint-1").write_text("a file")
    prune(tmp_path, keep=1)
    # a non-step folder without a marker counts as incomplete (step -1) and goes; a plain file stays
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-5"]


def test_step_zero_is_a_checkpoint(tmp_path):
    zero = _ckpt(tmp_path, 0)
    assert complete_checkpoints(tmp_path) == [zero] and latest_checkpoint(tmp_path) == zero


def test_run_key_is_independent_of_key_order_and_keeps_interpolations_unresolved():
    a = run_key(OmegaConf.create({"seed": 0, "lr": 1.0, "trainer": {"x": 1, "y": 2}}))
    assert a == run_key(OmegaConf.create({"trainer": {"y": 2, "x": 1}, "lr": 1.0, "seed": 0}))
    # an interpolation into a volatile key counts by its text, so moving the output folder keeps the key
    ref = {"trainer": {"out": "${paths.out}"}, "paths": {"out": "a"}}
    moved = {"trainer": {"out": "${paths.out}"}, "paths": {"out": "b"}}
    assert run_key(OmegaConf.create(ref)) == run_key(OmegaConf.create(moved))


def test_write_json_atomic_then_read_marker(tmp_path):
    ck = _ckpt(tmp_path, 7, complete=False)
    write_json_atomic(ck / MARKER, {"step": 7, "path": tmp_path})
    assert read_marker(ck) == {"step": 7, "path": str(tmp_path)}
    assert read_marker(str(ck))["step"] == 7
    assert os.listdir(ck) == [MARKER]  # no temporary left behind
    assert latest_checkpoint(tmp_path) == ck
    write_json_atomic(ck / MARKER, {"step": 8})  # replaces
    assert read_marker(ck) == {"step": 8}


def test_run_key_ignores_volatile_keys_only():
    base = {"seed": 0, "trainer": {"lr": 1e-5, "num_threads": 2}, "paths": {"out": "a"}, "runs": {"keep": 1}}
    key = run_key(OmegaConf.create(base))
    assert len(key) == 16 and int(key, 16) >= 0
    for change in (
        {"paths": {"out": "b"}},
        {"tracking": {"uri": "x"}},
        {"resume": "never"},
        {"runs": {"keep": 3}},
        {"hydra": {"job": 1}},
        {"trainer": {"lr": 1e-5, "num_threads": 8}},
    ):
        assert run_key(OmegaConf.create({**base, **change})) == key, change
    assert run_key(OmegaConf.create({**base, "seed": 1})) != key
    assert run_key(OmegaConf.create({**base, "trainer": {"lr": 2e-5, "num_threads": 2}})) != key
    assert run_key(OmegaConf.create({"seed": 0})) == run_key(OmegaConf.create({"seed": 0, "trainer": {}}))


# -- guards ------------------------------------------------------------------------------------------


def test_nonfinite_error_message_and_fields():
    e = NonFiniteError("loss", 3, float("nan"))
    assert str(e) == "non-finite loss (nan) at step 3"
    assert (e.quantity, e.step) == ("loss", 3) and math.isnan(e.value)
    assert str(NonFiniteError("logits", 1)) == "non-finite logits at step 1"


def test_finite_of_empty_and_large_values():
    assert _finite(torch.empty(0))
    assert not _finite(torch.tensor([1.0, float("inf")]))
    assert _finite(torch.tensor([3e38, 3e38], dtype=torch.float32).half().float()) is False  # inf in half
    assert _finite(torch.ones(3, dtype=torch.bfloat16))


class _Tracker:
    def __init__(self):
        self.tags = {}

    def set_tags(self, tags):
        self.tags.update(tags)


class _Console:
    def __init__(self):
        self.lines = []

    def print(self, s):
        self.lines.append(s)


def _watch(patience=2, vocab=100, frac=0.9):
    return CollapseWatch(vocab, patience, _Tracker(), _Console(), frac=frac)


def test_collapse_watch_warns_after_patience_steps():
    w = _watch()
    top = math.log(100)
    assert w.update({"entropy/all": top, "reward": 0.0}, 1) is None
    msg = w.update({"entropy/all": top, "reward": 0.0}, 2)
    assert msg.startswith(
        "policy collapsed at step 2: token entropy 4.61 ≈ ln|V| = 4.61 and reward 0 for 2 steps"
    )
    assert w.tracker.tags == {"crs.warning": msg}
    assert w.console.lines == [f"[bold yellow]crs: warning:[/bold yellow] {msg}"]
    assert w.update({"entropy/all": top, "reward": 0.0}, 3) is None  # warns once


def test_collapse_watch_thresholds_are_inclusive():
    w = _watch(patience=1, frac=0.5)
    assert (
        w.update({"entropy": 0.5 * math.log(100), "reward": 0}, 1) is not None
    )  # ent == frac·max, reward == 0
    w = _watch(patience=1, frac=0.5)
    assert w.update({"entropy": 0.49 * math.log(100), "reward": 0}, 1) is None
    assert w.update({"entropy": math.log(100), "reward": 0.01}, 2) is None


def test_collapse_watch_streak_resets_and_needs_both_logs():
    w = _watch(patience=2)
    top = math.log(100)
    assert w.update({"entropy/all": top, "reward": 0}, 1) is None
    assert w.update({"entropy/all": 0.1, "reward": 0}, 2) is None  # reset
    assert w.update({"entropy/all": top, "reward": 0}, 3) is None
    assert w.update({"entropy/all": top}, 4) is None  # no reward logged: no change
    assert w.update({"reward": 0}, 5) is None
    assert w.update({"entropy/all": top, "reward": 0}, 6) is not None
    # entropy/all wins over entropy
    w = _watch(patience=1)
    assert w.update({"entropy/all": 0.0, "entropy": top, "reward": 0}, 1) is None


def test_collapse_watch_off_and_vocab_floor():
    assert _watch(patience=0).update({"entropy": 99.0, "reward": 0}, 1) is None
    assert CollapseWatch(1, 1, _Tracker()).max_entropy == math.log(2)
    assert CollapseWatch(1000, 1, _Tracker()).max_entropy == math.log(1000)
    assert CollapseWatch(1000, 1, _Tracker()).frac == 0.9


def test_collapse_watch_survives_a_failing_tracker_and_no_console():
    class Broken:
        def set_tags(self, tags):
            raise RuntimeError("store down")

    w = CollapseWatch(100, 1, Broken())
    assert w.update({"entropy": math.log(100), "reward": 0}, 1) is not None


class _State:
    global_step = 4


class _Model:
    training = True


class _Trainer:
    state = _State()
    model = _Model()


def test_finite_checks_name_the_step_and_the_loss_value():
    c = FiniteChecks(_Trainer())
    assert c.step() == 5
    with pytest.raises(NonFiniteError, match=r"^non-finite loss \(inf\) at step 5$"):
        c.loss((torch.tensor(float("inf")), None))
    with pytest.raises(NonFiniteError, match="^non-finite credit token_weights at step 5$"):
        c.credit(
            type("B", (), {"advantages": torch.ones(2), "token_weights": torch.tensor([float("nan")])})()
        )


def test_finite_accumulates_half_precision_in_float32():
    # 100 × 60000 overflows a float16 sum (max 65504) but every value is finite
    assert _finite(torch.full((100,), 60000.0, dtype=torch.float16))


def test_logit_guard_sees_every_row_of_a_plain_tensor():
    from crs.runs.guard import logit_guard

    hook = logit_guard(lambda: 2)
    logits = torch.zeros(3, 4)
    logits[2, 1] = float("nan")  # not in row 0
    with pytest.raises(NonFiniteError, match="^non-finite logits at step 2$"):
        hook(None, (), logits)


def test_credit_check_skips_a_batch_without_token_weights():
    c = FiniteChecks(_Trainer())
    c.credit(type("B", (), {"advantages": torch.ones(2)})())  # no token_weights attribute: fine


# -- guard wiring: install_guards, the grad_norm message, CollapseWatch's HF callback ------------------


class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)

    def get_output_embeddings(self):
        return self.head

    def forward(self, x):
        return self.head(self.body(x))


def _hf_like(model, global_step=8):
    from types import SimpleNamespace

    cbs = []
    return SimpleNamespace(
        state=SimpleNamespace(global_step=global_step), model=model, callbacks=cbs, add_callback=cbs.append
    )


def test_install_guards_wires_the_trainer_into_the_checks_and_the_callback():
    from types import SimpleNamespace

    model = _Head()
    trainer = _hf_like(model, global_step=8)
    install_guards(trainer)
    assert trainer.checks.trainer is trainer and trainer.checks.step() == 9
    (guard,) = trainer.callbacks
    assert guard.trainer is trainer
    model(torch.randn(2, 3)).sum().backward()
    model.head.weight.grad[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^non-finite grad_norm \(inf\) at step 3$"):
        guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=2), None)


def test_install_guards_on_a_model_without_an_output_head_adds_no_hook():
    trainer = _hf_like(torch.nn.Linear(3, 2))  # nn.Linear has no get_output_embeddings
    install_guards(trainer)
    assert not hasattr(trainer, "_crs_logit_hook")
    assert len(trainer.callbacks) == 1


def test_grad_norm_error_carries_the_norm_in_the_message_and_the_value():
    from types import SimpleNamespace

    model = _Head()
    model(torch.randn(2, 3)).sum().backward()
    model.body.bias.grad[1] = float("nan")
    guard = _GradParamGuard(_hf_like(model))
    with pytest.raises(NonFiniteError) as info:
        guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=0), None)
    assert str(info.value) == "non-finite grad_norm (nan) at step 1" and math.isnan(info.value.value)


def test_collapse_watch_callback_feeds_on_log_into_update_on_the_main_process_only():
    from types import SimpleNamespace

    from transformers import TrainerCallback

    top = {"entropy": math.log(100), "reward": 0.0}
    w = _watch(patience=1)
    cb = w.callback()
    assert isinstance(cb, TrainerCallback)
    cb.on_log(None, SimpleNamespace(is_world_process_zero=False, global_step=3), None, logs=dict(top))
    cb.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=4), None, logs=None)
    cb.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=4), None, logs={})
    assert not w.warned and w.console.lines == []
    cb.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=5), None, logs=dict(top))
    assert w.warned and w.tracker.tags["crs.warning"].startswith("policy collapsed at step 5: ")
