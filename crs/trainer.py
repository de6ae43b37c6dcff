"""The one ``GRPOTrainer`` subclass: plugs a credit chain and a temporal schedule into TRL's loss.

TRL 1.16 has no advantage hook (trl#4525, trl#7291), so crs overrides four *private* methods — pinned
to ``trl>=1.16,<1.17`` and guarded by ``tests/test_trl_contract.py``, which fails loudly if an upgrade
changes them:

``_calculate_rewards``
    Keeps the gathered reward matrix and the completion lengths (the dict TRL returns only carries
    normalised advantages); for TP-Schedule's ``reward_on: suffix`` it scores only the trained tail.
``_generate_and_score_completions``
    Adds per-row rollout features (group success rate, reward, length, ADORA's criterion, ...) computed
    on the *gathered* batch, where groups are contiguous, then sliced per process — TRL shuffles rows
    before the loss, so group statistics cannot be computed later.
``compute_loss``
    Copies the batch dict (TRL reuses the buffered rollout across iterations), evaluates the schedule
    *now* (``ρ = schedule(global_step / max_steps)``), runs the chain's mask phase into TRL's loss-only
    ``tool_mask`` and rescales ``num_items_in_batch`` for ``dapo``; then calls TRL's loss unchanged.
``_generate_single_turn``
    Only with ``generation="static"``: completions come from crs's static-cache / CUDA-graph decoder
    (:mod:`crs.rollout`) instead of ``model.generate``; every other option is TRL's own path.
``_get_per_token_logps_and_entropies``
    Inside TRL's loss, right after the policy forward and before TRL reads the advantages: runs the
    chain's advantage phase with the (detached) entropies and writes ``[B]``/``[B,T]`` advantages.

With ``method=grpo`` (empty chain) nothing is changed and the loss equals plain ``GRPOTrainer``'s to
floating-point tolerance (``tests/test_trainer.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from crs.credit import CreditBatch, CreditChain, fold_token_weights, rollout_features, tp_prefix_cut
from crs.diagnostics import binned_sums, k3_kl
from crs.rollout import build_decoder


@dataclass
class _Pending:
    inputs: dict[str, Any]
    batch: CreditBatch
    rho: float
    mode: str


class CreditGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` + a :class:`~crs.credit.CreditChain` + a schedule ``progress -> ρ``.

    Args:
        credit: the method's chain (empty = GRPO).
        schedule: ``progress ∈ [0,1] -> ρ``.
        filter_zero_std_groups: DAPO dynamic-sampling filter (zero-std groups leave the objective).
        diagnostics_every: log percentile-bin entropy/KL every N optimizer steps (0 = off).
        diagnostics_bins: number of trajectory-percentile bins.
        diagnostics_kl: measure post-update KL per bin (one extra no-grad forward per diagnostic step).
        sample_steps: optimizer steps whose rollouts are kept in :attr:`samples`.
        sample_size: completions kept per sampled step.
        generation: rollout engine (crs/rollout): ``static`` = crs's decoder; anything else = TRL's path.
        step_hook: :class:`crs.steps.hook.StepHook` run once per rollout (step scorers, per-token tensors,
            decisive-token masks), or ``None``.
        *args, **kwargs: passed to ``GRPOTrainer``.
    """

    def __init__(
        self,
        *args: Any,
        credit: CreditChain,
        schedule: Callable[[float], float],
        filter_zero_std_groups: bool = False,
        diagnostics_every: int = 0,
        diagnostics_bins: int = 10,
        diagnostics_kl: bool = True,
        sample_steps: Iterable[int] = (),
        sample_size: int = 8,
        generation: str = "hf",
        step_hook: Any = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.credit = credit
        self.schedule = schedule
        self.filter_zero_std_groups = filter_zero_std_groups
        self.diagnostics_every = diagnostics_every
        self.diagnostics_bins = diagnostics_bins
        self.diagnostics_kl = diagnostics_kl
        self.sample_steps = set(sample_steps)
        self.sample_size = sample_size
        self.samples: list[dict[str, Any]] = []
        self.step_hook = step_hook if step_hook is not None and step_hook.active else None
        self._crs_rollout: dict[str, Any] = {}
        self._crs_pending: _Pending | None = None
        self._crs_kl_batch: dict[str, torch.Tensor] | None = None
        self.add_callback(_PostStepDiagnostics(self))
        self.decoder = build_decoder(generation)

    # ------------------------------------------------------------------------------------------ clock
    def progress(self) -> float:
        """Fraction of training done: completed optimizer steps / max_steps."""
        return self.state.global_step / max(1, self.state.max_steps)

    def rho(self) -> float:
        return float(self.schedule(self.progress()))

    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    def _diagnostic_step(self) -> bool:
        return (
            self.diagnostics_every > 0
            and self._mode() == "train"
            and self.state.global_step % self.diagnostics_every == 0
        )

    # ---------------------------------------------------------------------------------------- rollout
    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        if (
            self.decoder is None
            or self.use_vllm
            or self.use_transformers_continuous_batching
            or images is not None
            or multimodal_fields
        ):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        return self.decoder.generate_for(self, prompt_ids), None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        lengths = torch.tensor([len(ids) for ids in completion_ids_list], dtype=torch.long)
        eos = set(self.eos_token_ids) if self.eos_token_ids is not None else set()
        truncated = torch.tensor([len(ids) == 0 or ids[-1] not in eos for ids in completion_ids_list])
        withhold = self.credit.suffix_reward_withhold(self.rho())
        if withhold is not None:
            # TP-Schedule reward_on=suffix: the verifier sees only the trained tail (the released code)
            cuts = tp_prefix_cut(lengths, withhold).tolist()
            texts = [
                self._tokenizer.decode(ids[c:], skip_special_tokens=True)
                for ids, c in zip(completion_ids_list, cuts)
            ]
            if completions and isinstance(completions[0], list):
                completions = [[{**c[0], "content": t}] for c, t in zip(completions, texts)]
            else:
                completions = texts
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._crs_rollout = {
            "rewards_per_func": rewards_per_func,
            "lengths": lengths,
            "truncated": truncated,
            "completions": completions,
        }
        return rewards_per_func

    def _needs_features(self) -> bool:
        return not self.credit.is_identity or self.filter_zero_std_groups or self.step_hook is not None

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = self._mode()
        rollout = self._crs_rollout
        local_b = out["completion_ids"].shape[0]
        device = out["completion_ids"].device
        if self._needs_features() and rollout:
            rpf = rollout["rewards_per_func"]  # (N_global, n_funcs), gathered by TRL
            rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
            success = torch.nan_to_num(rpf[:, 0], nan=0.0) > 0.5  # the first reward function is the verifier
            lengths = self.accelerator.gather(rollout["lengths"].to(device))
            truncated = self.accelerator.gather(rollout["truncated"].to(device))
            group = self.num_generations if mode == "train" else self.num_generations_eval
            feats = rollout_features(rewards, success, lengths, truncated, group, self.credit.features)
            rank = self.accelerator.process_index
            sl = slice(rank * local_b, (rank + 1) * local_b)
            for name, value in feats.items():
                out[f"crs_{name}"] = value[sl].to(device)
            if self.step_hook is not None:  # step scorers + per-token tensors (crs/steps/hook.py)
                step_feats = self.step_hook(self, inputs, out, success[sl], group, self.rho(), mode)
                out.update({f"crs_{k}": v.to(device) for k, v in step_feats.items()})
        if self.environments is not None:  # multi-turn environment rollout: turn structure + turn credit
            from crs.envs.turns import turn_hook

            out.update(turn_hook(self, inputs, out))
        due = {s for s in self.sample_steps if s <= self.state.global_step}
        if mode == "train" and due and self.accelerator.is_main_process:
            # the first rollout at or after each sample step (rollouts are rarer than steps when
            # steps_per_generation > 1, e.g. GSPO's 4 mini-batches)
            self.sample_steps -= due
            self._keep_samples(inputs, out, rollout)
        return out

    def _keep_samples(self, inputs, out, rollout) -> None:
        n = min(self.sample_size, len(inputs))
        rpf = rollout.get("rewards_per_func")
        comps = rollout.get("completions") or []
        for i in range(n):
            prompt = inputs[i].get("prompt")
            comp = comps[i] if i < len(comps) else None
            self.samples.append(
                {
                    "step": self.state.global_step,
                    "rho": self.rho(),
                    "prompt": prompt if isinstance(prompt, str) else str(prompt),
                    "completion": comp if isinstance(comp, str) else (comp[0]["content"] if comp else None),
                    "rewards": {
                        name: (None if rpf is None else float(rpf[i, j]))
                        for j, name in enumerate(self.reward_func_names)
                    },
                    "advantage_grpo": float(out["advantages"][i]),
                    "length": int(rollout["lengths"][i]) if rollout else None,
                    "answer": inputs[i].get("answer"),
                }
            )

    # ------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)  # never mutate TRL's buffered rollout: it is reused across iterations
        mode = self._mode()
        rho = self.rho()  # the schedule is evaluated at loss time, not rollout time
        completion_mask = inputs["completion_mask"].float()
        mask = completion_mask * inputs["tool_mask"] if "tool_mask" in inputs else completion_mask
        features = {k[4:]: v for k, v in inputs.items() if k.startswith("crs_")}
        batch = CreditBatch(
            advantages=inputs["advantages"],
            mask=mask,
            features=features,
        )
        new_mask = None
        if self.filter_zero_std_groups:
            new_mask = mask * (features["group_std"] > 0).float().unsqueeze(1)
        if self.credit.has_mask_phase:
            new_mask = self.credit.mask_phase(
                batch.replace(mask=new_mask if new_mask is not None else mask), rho
            )
        if new_mask is not None:
            # loss-only mask: TRL builds attention from completion_mask, the loss from completion_mask·tool_mask
            inputs["tool_mask"] = new_mask
            if self.loss_type in ("dapo", "cispo", "vespo"):
                # TRL divides by the generation batch's token count; recount trained tokens (this micro-batch,
                # extrapolated to the generation batch: exact for gradient_accumulation_steps = 1)
                local = new_mask.sum().detach()
                inputs["num_items_in_batch"] = (
                    self.accelerator.gather(local).sum() * self.args.steps_per_generation
                )
            batch = batch.replace(mask=new_mask)
        self._crs_pending = _Pending(inputs, batch, rho, mode)
        clip = inputs.get("crs_turn_clip")  # A²TGPO: per-token clip ranges [1 − c·ε_low, 1 + c·ε_high]
        eps = (self.epsilon_low, self.epsilon_high)
        if clip is not None:
            self.epsilon_low, self.epsilon_high = eps[0] * clip, eps[1] * clip  # TRL's torch.clamp takes tensors
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._crs_pending = None
            self.epsilon_low, self.epsilon_high = eps

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        pending = self._crs_pending
        if pending is not None and kwargs.get("compute_entropy") and entropies is not None:
            self._crs_pending = None  # once per loss call
            self._advantage_phase(pending, logps.detach(), entropies.detach(), args, kwargs)
        return logps, entropies, aux

    def _advantage_phase(self, pending: _Pending, logps, entropies, fwd_args, fwd_kwargs) -> None:
        inputs, rho, mode = pending.inputs, pending.rho, pending.mode
        batch = pending.batch.replace(entropies=entropies, logps=logps)
        weights = None
        if self.credit.has_advantage_phase:
            out = self.credit.advantage_phase(batch, rho)
            weights = out.token_weights
            if weights is not None:
                inputs["advantages"] = fold_token_weights(
                    out.advantages, weights, batch.mask, self.loss_type, out.renormalize
                )
            else:
                inputs["advantages"] = out.token_advantages() if out.advantages.dim() == 2 else out.advantages
            credit_tokens = out.token_advantages() * (weights if weights is not None else 1.0)
        else:
            credit_tokens = batch.token_advantages()
        self._log_credit(mode, rho, batch, weights, credit_tokens, entropies, inputs)
        if self._diagnostic_step():
            self._log_percentile_entropy(entropies, inputs["completion_mask"].float())
            if self.diagnostics_kl:
                old = inputs.get("old_per_token_logps")
                self._crs_kl_batch = {
                    "input_ids": fwd_args[1] if len(fwd_args) > 1 else fwd_kwargs["input_ids"],
                    "attention_mask": fwd_args[2] if len(fwd_args) > 2 else fwd_kwargs["attention_mask"],
                    "logits_to_keep": fwd_args[3] if len(fwd_args) > 3 else fwd_kwargs["logits_to_keep"],
                    "old_logps": (old if old is not None else logps).detach(),
                    "completion_mask": inputs["completion_mask"].float(),
                    "decisive": batch.features.get("decisive"),
                }

    # ------------------------------------------------------------------------------------------- logs
    def _global_mean(self, x: torch.Tensor, m: torch.Tensor) -> float:
        totals = self.accelerator.reduce(
            torch.stack([(x * m).sum().float(), m.sum().float()]), reduction="sum"
        )
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _log_credit(self, mode, rho, batch, weights, credit_tokens, entropies, inputs) -> None:
        metrics = self._metrics[mode]
        completion_mask = inputs["completion_mask"].float()
        trained = batch.mask * (weights if weights is not None else 1.0)
        sel = (trained > 0).float()
        metrics["schedule/rho"].append(rho)
        for knob, value in self.credit.knobs(rho).items():
            metrics[f"credit/{knob}"].append(float(value))
        counts = self.accelerator.reduce(torch.stack([sel.sum(), completion_mask.sum()]), reduction="sum")
        metrics["credit/trained_frac"].append((counts[0] / counts[1].clamp(min=1.0)).item())
        mean = self._global_mean(credit_tokens, sel)
        metrics["adv/mean"].append(mean)
        metrics["adv/std"].append(max(self._global_mean((credit_tokens - mean) ** 2, sel), 0.0) ** 0.5)
        metrics["adv/abs_mean"].append(self._global_mean(credit_tokens.abs(), sel))
        metrics["entropy/all"].append(self._global_mean(entropies, completion_mask))
        metrics["entropy/selected"].append(self._global_mean(entropies, sel))
        unsel = completion_mask * (1.0 - sel)
        if float(self.accelerator.reduce(unsel.sum(), reduction="sum")) > 0:
            metrics["entropy/unselected"].append(self._global_mean(entropies, unsel))
        decisive = batch.features.get("decisive")
        if decisive is not None:  # credit localization (crs/steps/localization.py)
            from crs.steps.localization import loss_weights

            w = loss_weights(batch.mask, None, self.loss_type)  # credit_tokens already carry method weights
            self._log_share("loc/adv_share", credit_tokens * w, decisive, completion_mask, mode)
            self._log_share("loc/decisive_frac", completion_mask, decisive, completion_mask, mode)

    def _log_share(self, name, values, decisive, mask, mode: str = "train") -> None:
        from crs.steps.localization import share

        totals = self.accelerator.reduce(torch.stack(share(values, decisive, mask)), reduction="sum")
        if totals[1] > 0:
            self._metrics[mode][name].append((totals[0] / totals[1]).item())

    def _log_binned(self, name: str, values: torch.Tensor, completion_mask: torch.Tensor) -> None:
        sums, counts = binned_sums(values, completion_mask, self.diagnostics_bins)
        totals = self.accelerator.reduce(torch.stack([sums, counts]), reduction="sum")
        for i in range(self.diagnostics_bins):
            if totals[1, i] > 0:
                self._metrics["train"][f"diag/{name}_bin_{i}"].append((totals[0, i] / totals[1, i]).item())

    def _log_percentile_entropy(self, entropies, completion_mask) -> None:
        self._log_binned("entropy", entropies, completion_mask)

    @torch.no_grad()
    def measure_update_kl(self) -> None:
        """KL(rollout ‖ updated) per percentile bin on the last diagnosed micro-batch (after the step)."""
        b, self._crs_kl_batch = self._crs_kl_batch, None
        if b is None:
            return
        new, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            self, self.model, b["input_ids"], b["attention_mask"], b["logits_to_keep"]
        )
        kl = k3_kl(new, b["old_logps"])
        m = b["completion_mask"]
        self._metrics["train"]["diag/kl"].append(self._global_mean(kl, m))
        self._log_binned("kl", kl, m)
        if b.get("decisive") is not None:  # credit localization: share of the policy change on decisive tokens
            self._log_share("loc/kl_share", kl, b["decisive"], m)


class _PostStepDiagnostics(TrainerCallback):
    """Runs after each optimizer step (before TRL logs it): the post-update KL measurement."""

    def __init__(self, trainer: CreditGRPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.measure_update_kl()
