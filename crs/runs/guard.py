"""NaN/inf surfaced: a non-finite quantity stops the run at the step it appears, named.

Checks, each one a cheap reduction synchronised once per call (no copies of large tensors):

``advantages``  after the rollout (TRL's group-normalised ones) and after the credit chain's
                advantage phase (a method's reshaped ones, e.g. focal with a bad exponent);
``logits``      a forward hook on the output layer: one ``sum`` per forward, in training *and* in
                generation — so a policy gone NaN stops with this line instead of the sampler's
                ``probability tensor contains either inf, nan or element < 0`` (or a CUDA device-side
                assert, which kills the process without a trace);
``loss``        every micro-step's loss;
``grad_norm``   the total gradient norm before the optimizer step (so NaN never reaches the weights);
``parameters``  after the optimizer step.

The first failure raises :class:`NonFiniteError`; ``crs train`` logs ``nonfinite/<quantity>`` at that
step, tags ``error`` with the quantity and the step, ends the run FAILED and keeps the last good
checkpoint. :class:`CollapseWatch` warns (console + tag ``crs.warning``) when the policy collapsed:
token entropy near its maximum ``ln |V|`` and reward 0 for ``runs.collapse_steps`` logged steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class NonFiniteError(RuntimeError):
    """A NaN/inf in ``quantity`` at optimizer step ``step`` (1-based, as logged)."""

    def __init__(self, quantity: str, step: int, value: float | None = None):
        self.quantity, self.step, self.value = quantity, step, value
        shown = "" if value is None else f" ({value})"
        super().__init__(f"non-finite {quantity}{shown} at step {step}")


def _finite(t: torch.Tensor) -> bool:
    if t.numel() == 0:
        return True
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return True  # inside a CUDA-graph capture (crs/rollout's static decoder) a host sync is illegal
    return bool(torch.isfinite(torch.sum(t.detach(), dtype=torch.float32)))


class FiniteChecks:
    """The non-finite checks a trainer calls at its own seams (rollout, credit, loss); raise
    :class:`NonFiniteError` naming the quantity and the optimizer step."""

    def __init__(self, trainer):
        self.trainer = trainer

    def step(self) -> int:
        return self.trainer.state.global_step + 1

    def advantages(self, adv) -> None:
        """TRL's rollout advantages."""
        if isinstance(adv, torch.Tensor) and not _finite(adv):
            raise NonFiniteError("advantages", self.step())

    def credit(self, batch) -> None:
        """The credit chain's output (advantages and token weights)."""
        for name in ("advantages", "token_weights"):
            t = getattr(batch, name, None)
            if isinstance(t, torch.Tensor) and not _finite(t):
                raise NonFiniteError(f"credit {name}", self.step())

    def loss(self, out) -> None:
        loss = out[0] if isinstance(out, tuple) else out
        if isinstance(loss, torch.Tensor) and self.trainer.model.training and not _finite(loss):
            raise NonFiniteError("loss", self.step(), float(loss.detach().float().sum()))


def install_guards(trainer) -> None:
    """Give a crs trainer its non-finite checks (:class:`FiniteChecks`, called by the trainer itself at
    rollout, credit and loss), a logit hook on the output head and the gradient/parameter callback."""

    def step() -> int:
        return trainer.state.global_step + 1

    trainer.checks = FiniteChecks(trainer)

    # logits (training and generation forwards) -----------------------------------------------------
    model = trainer.model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        trainer._crs_logit_hook = head.register_forward_hook(logit_guard(step))

    trainer.add_callback(_GradParamGuard(trainer))


def logit_guard(step):
    """A forward hook for the output layer: raise :class:`NonFiniteError` on NaN/inf logits."""

    def hook(module, inputs, output):
        t = output[0] if isinstance(output, tuple) else output
        if isinstance(t, torch.Tensor) and not _finite(t):
            raise NonFiniteError("logits", step())

    return hook


def _total_norm(tensors) -> torch.Tensor | None:
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return None
    norms = torch._foreach_norm([t.detach() for t in tensors])
    return torch.linalg.vector_norm(torch.stack([n.float().to(norms[0].device) for n in norms]))


def _make_grad_guard_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _GradParamGuard(_make_grad_guard_base()):
    """Gradients before the optimizer step, parameters after it."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        norm = _total_norm(p.grad for p in params)
        if norm is not None and not torch.isfinite(norm):
            raise NonFiniteError("grad_norm", state.global_step + 1, float(norm))

    def on_optimizer_step(self, args, state, control, **kwargs):
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        norm = _total_norm(params)
        if norm is not None and not torch.isfinite(norm):
            raise NonFiniteError("parameters", state.global_step + 1)


class CollapseWatch:
    """Warn once when entropy sits at ``ln |V|`` with zero reward for ``patience`` logged steps."""

    def __init__(self, vocab_size: int, patience: int, tracker, console=None, frac: float = 0.9):
        self.max_entropy = math.log(max(2, int(vocab_size)))
        self.patience = patience
        self.tracker = tracker
        self.console = console
        self.frac = frac
        self.streak = 0
        self.warned = False

    def update(self, logs: dict[str, Any], step: int) -> str | None:
        if self.patience <= 0 or self.warned:
            return None
        ent = logs.get("entropy/all", logs.get("entropy"))
        reward = logs.get("reward")
        if ent is None or reward is None:
            return None
        if ent >= self.frac * self.max_entropy and reward <= 0:
            self.streak += 1
        else:
            self.streak = 0
        if self.streak < self.patience:
            return None
        self.warned = True
        msg = (
            f"policy collapsed at step {step}: token entropy {ent:.2f} ≈ ln|V| = {self.max_entropy:.2f} and "
            f"reward 0 for {self.patience} steps (learning rate too high?)"
        )
        try:
            self.tracker.set_tags({"crs.warning": msg})
        except Exception:
            pass
        if self.console is not None:
            self.console.print(f"[bold yellow]crs: warning:[/bold yellow] {msg}")
        return msg

    def callback(self):
        from transformers import TrainerCallback

        watch = self

        class _Collapse(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and state.is_world_process_zero:
                    watch.update(logs, state.global_step)

        return _Collapse()
