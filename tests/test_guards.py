"""The non-finite guards of crs/runs/guard.py on planted values: +inf, -inf and NaN each stop with a
:class:`NonFiniteError` that names the quantity and the (1-based) optimizer step; finite values pass.

Unit level, on stand-in trainers (a ``state.global_step`` and a ``model``): the end-to-end path (a run
ending FAILED with the tag) is tests/test_trust.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from crs.runs.guard import FiniteChecks, NonFiniteError, _GradParamGuard, install_guards, logit_guard

BAD = [float("inf"), float("-inf"), float("nan")]
BAD_IDS = ["+inf", "-inf", "nan"]


def _trainer(global_step: int = 4, model: torch.nn.Module | None = None):
    model = model if model is not None else torch.nn.Linear(3, 2)
    model.train()
    callbacks = []
    return SimpleNamespace(
        state=SimpleNamespace(global_step=global_step),
        model=model,
        callbacks=callbacks,
        add_callback=callbacks.append,
    )


def _planted(value: float, shape=(2, 5), at=(1, 3)) -> torch.Tensor:
    t = torch.randn(shape)
    t[at] = value
    return t


def _raises(quantity: str, step: int):
    return pytest.raises(NonFiniteError, match=f"^non-finite {quantity}( \\(.*\\))? at step {step}$")


# --------------------------------------------------------------------------------- FiniteChecks


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_rollout_advantages(bad):
    checks = FiniteChecks(_trainer(global_step=4))
    checks.advantages(torch.randn(8))
    checks.advantages(torch.empty(0))  # nothing to check
    checks.advantages(None)  # not a tensor: ignored
    with _raises("advantages", 5) as info:
        checks.advantages(_planted(bad, shape=(8,), at=(6,)))
    assert info.value.quantity == "advantages" and info.value.step == 5


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("name", ["advantages", "token_weights"])
def test_credit_advantages_and_token_weights(name, bad):
    checks = FiniteChecks(_trainer(global_step=0))
    good = SimpleNamespace(advantages=torch.randn(2, 5), token_weights=torch.rand(2, 5))
    checks.credit(good)
    checks.credit(SimpleNamespace(advantages=torch.randn(2, 5), token_weights=None))  # no weights: fine
    broken = SimpleNamespace(advantages=torch.randn(2, 5), token_weights=torch.rand(2, 5))
    setattr(broken, name, _planted(bad))
    with _raises(f"credit {name}", 1) as info:
        checks.credit(broken)
    assert info.value.quantity == f"credit {name}" and info.value.step == 1


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_loss(bad):
    trainer = _trainer(global_step=9)
    checks = FiniteChecks(trainer)
    checks.loss(torch.tensor(0.25))
    checks.loss((torch.tensor(-1.5), {"logits": None}))  # (loss, outputs) as compute_loss may return
    with _raises("loss", 10) as info:
        checks.loss(torch.tensor(bad))
    assert info.value.quantity == "loss" and info.value.step == 10
    v = info.value.value
    assert v != v if bad != bad else v == bad  # the value is reported (NaN as NaN, ±inf with its sign)
    with _raises("loss", 10):
        checks.loss((torch.tensor(bad), None))
    # evaluation forwards (model not training) are not the training loss: not checked
    trainer.model.eval()
    checks.loss(torch.tensor(bad))


def test_the_step_follows_the_trainer():
    trainer = _trainer(global_step=0)
    checks = FiniteChecks(trainer)
    trainer.state.global_step = 41
    with _raises("advantages", 42):
        checks.advantages(torch.tensor([1.0, float("inf")]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_low_precision_tensors(dtype, bad):
    checks = FiniteChecks(_trainer(global_step=2))
    checks.advantages(torch.randn(4, 6).to(dtype))
    with _raises("advantages", 3):
        checks.advantages(_planted(bad, shape=(4, 6), at=(3, 5)).to(dtype))


# ---------------------------------------------------------------------------------- logit guard


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_logit_guard(bad):
    head = torch.nn.Linear(4, 8)
    head.register_forward_hook(logit_guard(lambda: 3))
    head(torch.randn(2, 4))  # finite: passes
    with torch.no_grad():
        head.bias[5] = bad
    with _raises("logits", 3) as info:
        head(torch.randn(2, 4))
    assert info.value.quantity == "logits" and info.value.step == 3


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_logit_guard_on_tuple_outputs(bad):
    hook = logit_guard(lambda: 6)
    hook(None, (), (torch.randn(2, 3), None))
    with _raises("logits", 6):
        hook(None, (), (_planted(bad, shape=(2, 3), at=(0, 2)), None))


class _Tiny(torch.nn.Module):
    """A model with an output head, as install_guards looks for it."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 5)

    def get_output_embeddings(self):
        return self.head

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_install_guards_hooks_the_output_head(bad):
    trainer = _trainer(global_step=11, model=_Tiny())
    install_guards(trainer)
    assert isinstance(trainer.checks, FiniteChecks)
    assert [type(c) for c in trainer.callbacks] == [_GradParamGuard]
    trainer.model(torch.randn(2, 3))
    with torch.no_grad():
        trainer.model.head.weight[1, 2] = bad
    with _raises("logits", 12):
        trainer.model(torch.ones(2, 3))


# -------------------------------------------------------------------- gradients and parameters


def _guard(global_step: int = 6):
    model = _Tiny()
    trainer = _trainer(global_step=global_step, model=model)
    model(torch.randn(3, 3)).sum().backward()
    return model, _GradParamGuard(trainer), SimpleNamespace(global_step=global_step)


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_grad_norm(bad):
    model, guard, state = _guard(global_step=6)
    guard.on_pre_optimizer_step(None, state, None)  # finite grads pass
    model.body.weight.grad[0, 1] = bad
    with _raises("grad_norm", 7) as info:
        guard.on_pre_optimizer_step(None, state, None)
    assert info.value.quantity == "grad_norm" and info.value.step == 7


def test_grad_norm_ignores_frozen_and_gradless_parameters():
    model, guard, state = _guard()
    model.body.bias.requires_grad_(False)
    model.body.bias.grad = torch.full_like(model.body.bias, float("nan"))  # frozen: not trained
    model.head.bias.grad = None  # no gradient this step
    guard.on_pre_optimizer_step(None, state, None)


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_parameters(bad):
    model, guard, state = _guard(global_step=0)
    guard.on_optimizer_step(None, state, None)  # finite weights pass
    with torch.no_grad():
        model.head.weight[2, 0] = bad
    with _raises("parameters", 1) as info:
        guard.on_optimizer_step(None, state, None)
    assert info.value.quantity == "parameters" and info.value.step == 1
