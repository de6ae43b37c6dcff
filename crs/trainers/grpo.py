"""The one ``GRPOTrainer`` subclass: plugs a credit chain and a temporal schedule into TRL's loss.

TRL 1.16 has no advantage hook (trl#4525, trl#7291), so crs overrides six *private* methods — pinned
to ``trl>=1.16,<1.17`` and guarded by ``tests/test_trl_contract.py``, which fails loudly if an upgrade
changes them:

``_calculate_rewards``
    Keeps the gathered reward matrix and the completion lengths (the dict TRL returns only carries
    normalised advantages); a method's ``verifier_cut`` hook (TP-Schedule's ``reward_on: suffix``) makes
    the verifier score only the trained tail (training rollouts only: evaluation never cuts).
``_generate_and_score_completions``
    Fixes ``ρ`` for this rollout on the authors' clock (rollouts counted from 1; ``schedule.at_step``),
    adds per-row rollout features (group success rate, reward, length, ADORA's criterion, ``ρ``, ...)
    computed on the *gathered* batch, where groups are contiguous, then sliced per process — TRL
    shuffles rows before the loss, so group statistics cannot be computed later — and runs the chain's
    mask phase (TP window, DAPO zero-std filter) into TRL's loss-only ``tool_mask``, multiplying any
    mask already there (multi-turn tool outputs). With several optimizer steps per rollout (GSPO's
    mini-batches) every step sees the same ``ρ``, mask and reward cut.
``compute_loss``
    Copies the batch dict (TRL reuses the buffered rollout across iterations), sets the exact global
    token-mean divisor for the token-level aggregations (``token_mean``/``dapo``/``opmd``: trained
    tokens of *this optimizer step's* micro-batches summed over processes, verl's ``token-mean``), then
    calls TRL's loss unchanged.
``_generate_single_turn``
    Only with ``generation="static"``: completions come from crs's static-cache / CUDA-graph decoder
    (:mod:`crs.rollout`) instead of ``model.generate``; every other option is TRL's own path. A method
    with a ``rollouts`` hook (R³L's retries) generates the training rollout itself through ``rollouts.generate``,
    whose every generation call takes that same path.
``_generate``
    Only with a ``rollouts`` hook on an environment benchmark: after TRL's episodes, ``rollouts.episodes``
    may replace rows (R³L: retries replayed up to a pivot turn and played on through ``_tool_call_loop``).
``_get_per_token_logps_and_entropies``
    Inside TRL's loss, right after the policy forward and before TRL reads the advantages: runs the
    chain's advantage phase with the (detached) entropies and writes ``[B]``/``[B,T]`` advantages. With
    several processes the phase runs on the micro-batch gathered from all of them (batch top-k,
    quantiles and selected-token normalisers pool globally) and each process keeps its rows.

With ``method=grpo`` (empty chain) nothing is changed and the loss equals plain ``GRPOTrainer``'s to
floating-point tolerance (``tests/test_trainer.py``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from crs.credit import CreditBatch, fold_token_weights, rollout_features, tp_prefix_cut
from crs.diagnostics import binned_sums, k3_kl
from crs.envs.turns import turn_hook
from crs.methods.chain import CreditChain
from crs.rollout import build_decoder
from crs.steps.hook import call_step_hook

# TRL loss types whose normaliser is ``num_items_in_batch`` (a global token count)
TOKEN_MEAN_LOSSES = ("dapo", "cispo", "vespo")


@dataclass
class _Pending:
    inputs: dict[str, Any]
    batch: CreditBatch
    rho: float
    mode: str


def _loss_mask(inputs: dict[str, Any]) -> torch.Tensor:
    """TRL's loss mask of a batch dict: ``completion_mask · tool_mask``."""
    m = inputs["completion_mask"].float()
    return m * inputs["tool_mask"].float() if "tool_mask" in inputs else m


class CreditGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` + a :class:`~crs.credit.CreditChain` + a schedule ``progress -> ρ``.

    Args:
        credit: the method's chain (empty = GRPO).
        schedule: a :class:`~crs.schedules.Schedule` (``at_step(rollout, total) -> ρ``), or any
            ``progress ∈ [0,1] -> ρ`` callable.
        opmd_tau: R³L's OPMD loss when set: TRL's ``cispo`` loss with the ratio fixed at 1 (old log-probs
            dropped) is ``−A·log π``; advantages are scaled by ``1/(1+τ)``.
        filter_zero_std_groups: DAPO dynamic-sampling filter (zero-std groups leave the objective).
        diagnostics_every: log percentile-bin entropy/KL every N optimizer steps (0 = off).
        diagnostics_bins: number of trajectory-percentile bins.
        diagnostics_kl: measure post-update KL per bin (one extra no-grad forward per diagnostic step).
        sample_steps: optimizer steps whose rollouts are kept in :attr:`samples`.
        sample_size: completions kept per sampled step.
        generation: rollout engine (crs/rollout): ``static`` = crs's decoder; anything else = TRL's path.
        step_hook: :class:`crs.steps.hook.StepHook` run once per rollout (step scorers, per-token tensors,
            decisive-token masks), or ``None``.
        rollouts: the object a method's ``rollouts`` hook built (it generates the training rollouts
            itself: ``generate``, ``episodes``, ``features``; R³L's retries), or ``None``.
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
        opmd_tau: float | None = None,
        rollouts: Any = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.opmd_tau = opmd_tau
        self._crs_rho = 0.0
        self._crs_warned: set[str] = set()
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
        self.rollouts = rollouts
        self.checks = None  # non-finite checks (crs.runs.guard.install_guards), called at the seams below
        self._crs_rows: list[dict[str, Any]] | None = None
        self._crs_env_rows: list[dict[str, Any]] | None = None
        self._crs_rollout: dict[str, Any] = {}
        self._crs_pending: _Pending | None = None
        self._crs_kl_batch: dict[str, torch.Tensor] | None = None
        self.add_callback(_PostStepDiagnostics(self))
        self.decoder = build_decoder(generation)

    # ------------------------------------------------------------------------------------------ clock
    def _micro_steps_per_rollout(self) -> int:
        return self.args.steps_per_generation * self.num_iterations

    def _micro_step(self) -> int:
        """Micro-steps (``training_step`` calls) of the whole run before the current one.

        TRL's counter ``_step`` starts at 0 in every trainer, a resumed one included. Its first rollout
        is the one made with no buffered batch (``_prepare_inputs``), at an optimizer-step boundary, so
        the micro-steps before it are ``global_step·GA`` (HF's own resume arithmetic); fresh run: 0.
        """
        if getattr(self, "_buffered_inputs", None) is None or not hasattr(self, "_crs_micro_base"):
            self._crs_micro_base = self.state.global_step * self.args.gradient_accumulation_steps - self._step
        return self._crs_micro_base + self._step

    def rollout_index(self) -> int:
        """1-based index of the rollout in use at the current micro-step (the authors' clock).

        RLVR-Schedule / verl count *training iterations* — one rollout each, however many mini-batch
        updates it feeds — from 1. TRL generates when ``_step % (steps_per_generation·num_iterations)
        == 0`` (``_prepare_inputs``; ``_step`` counts micro-steps), so the k-th generation of a run
        gets k whatever ``gradient_accumulation_steps`` is; after a resume the count goes on from the
        restored ``global_step`` (a rollout TRL regenerates mid-way keeps the index of the one it
        replaces). Counting from ``global_step·GA`` alone repeats indices when GA does not divide
        ``steps_per_generation·num_iterations`` (GA=2, S=1: 1,1,3,3,... instead of 1,2,3,4).
        """
        return self._micro_step() // self._micro_steps_per_rollout() + 1

    def total_rollouts(self) -> int:
        ga = self.args.gradient_accumulation_steps
        return max(1, math.ceil(self.state.max_steps * ga / self._micro_steps_per_rollout()))

    def rho(self) -> float:
        """``ρ`` of the rollout made at the current step (fixed for all of its optimizer steps)."""
        r, total = self.rollout_index(), self.total_rollouts()
        at_step = getattr(self.schedule, "at_step", None)
        if at_step is not None:
            return float(at_step(r, total))
        return float(self.schedule(min(1.0, (r - 1) / total)))

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
        rows, self._crs_rows = self._crs_rows, None
        if rows is not None and images is None and not multimodal_fields:
            # a method that generates its own training rollouts (R³L: first attempts, reflection, retries)
            def gen(ids):
                return self._crs_generate(ids, None, multimodal_fields, 1)

            return self.rollouts.generate(self, prompt_ids, rows, gen, self._crs_rho)
        return self._crs_generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)

    def _crs_generate(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
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

    def _generate(self, prompts):
        out = super()._generate(prompts)
        rows, self._crs_env_rows = self._crs_env_rows, None
        if rows is None:
            return out
        return self.rollouts.episodes(self, prompts, out, rows, self._crs_rho)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        lengths = torch.tensor([len(ids) for ids in completion_ids_list], dtype=torch.long)
        eos = set(self.eos_token_ids) if self.eos_token_ids is not None else set()
        truncated = torch.tensor([len(ids) == 0 or ids[-1] not in eos for ids in completion_ids_list])
        # ρ of this rollout (set by _generate_and_score_completions); evaluation never cuts
        withhold = self.credit.verifier_cut(self._crs_rho) if self._mode() == "train" else None
        if withhold is not None:
            # a method's verifier_cut hook: the verifier sees only the trained tail
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
        mode = self._mode()
        if mode == "train":
            self._crs_rho = self.rho()  # once per rollout, before the rewards are computed
        rho = self._crs_rho
        if self.rollouts is not None and mode == "train":
            if self.environment_factories is None:
                self._crs_rows = list(inputs)  # read (once) by _generate_single_turn
            else:
                self._crs_env_rows = list(inputs)  # read (once) by _generate
        out = super()._generate_and_score_completions(inputs)
        rollout = self._crs_rollout
        local_b = out["completion_ids"].shape[0]
        device = out["completion_ids"].device
        out["crs_rho"] = torch.full((local_b,), rho, dtype=torch.float32, device=device)
        feats: dict[str, torch.Tensor] = {}
        if self._needs_features() and rollout:
            rpf = rollout["rewards_per_func"]  # (N_global, n_funcs), gathered by TRL
            rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
            success = torch.nan_to_num(rpf[:, 0], nan=0.0) > 0.5  # the first reward function is the verifier
            lengths = self.accelerator.gather(rollout["lengths"].to(device))
            truncated = self.accelerator.gather(rollout["truncated"].to(device))
            group = self.num_generations if mode == "train" else self.num_generations_eval
            all_feats = rollout_features(rewards, success, lengths, truncated, group, self.credit.features)
            rank = self.accelerator.process_index
            sl = slice(rank * local_b, (rank + 1) * local_b)
            for name, value in all_feats.items():
                feats[name] = value[sl].to(device)
                out[f"crs_{name}"] = feats[name]
            if self.step_hook is not None:  # step scorers + per-token tensors (crs/steps/hook.py)
                step_feats = call_step_hook(self.step_hook, self, inputs, out, success, group, rho, mode)
                out.update({f"crs_{k}": v.to(device) for k, v in step_feats.items()})
            if self.rollouts is not None and mode == "train":  # the rollouts' own tensors (R³L: pivot masks)
                for k, v in self.rollouts.features(self, out, success[sl], rho).items():
                    feats[k] = out[f"crs_{k}"] = v.to(device)
        if self.environments is not None:  # multi-turn environment rollout: turn structure + turn credit
            out.update(turn_hook(self, inputs, out))
        self._rollout_mask(out, feats, rho)
        due = {s for s in self.sample_steps if s <= self.state.global_step}
        if mode == "train" and due and self.accelerator.is_main_process:
            # the first rollout at or after each sample step (rollouts are rarer than steps when
            # steps_per_generation > 1, e.g. GSPO's 4 mini-batches)
            self.sample_steps -= due
            self._keep_samples(inputs, out, rollout)
        if self.checks is not None:
            self.checks.advantages(out.get("advantages"))
        return out

    def _rollout_mask(self, out: dict[str, Any], feats: dict[str, torch.Tensor], rho: float) -> None:
        """The chain's mask phase at rollout time, into TRL's loss-only ``tool_mask`` (composed by product)."""
        if not (self.credit.has_mask_phase or self.filter_zero_std_groups):
            return
        completion_mask = out["completion_mask"].float()
        mask = completion_mask * out["tool_mask"].float() if "tool_mask" in out else completion_mask
        if self.filter_zero_std_groups:
            mask = mask * (feats["group_std"] > 0).float().unsqueeze(1)
        if self.credit.has_mask_phase:
            mask = self.credit.mask_phase(
                CreditBatch(advantages=out["advantages"], mask=mask, features=feats), rho
            )
        # TRL builds attention from completion_mask and the loss from completion_mask·tool_mask
        out["tool_mask"] = mask

    def _keep_samples(self, inputs, out, rollout) -> None:
        n = min(self.sample_size, len(inputs))
        rpf = rollout.get("rewards_per_func")
        comps = rollout.get("completions") or []
        for i in range(n):
            prompt = inputs[i].get("prompt")
            comp = comps[i] if i < len(comps) else None
            self.samples.append(
                {
                    # the optimizer step this rollout feeds (metric steps count from 1)
                    "step": self.state.global_step + 1,
                    "rho": self._crs_rho,
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
        rho = float(inputs["crs_rho"][0]) if "crs_rho" in inputs else self._crs_rho  # fixed at rollout time
        mask = _loss_mask(inputs)
        features = {k[4:]: v for k, v in inputs.items() if k.startswith("crs_") and k != "crs_rho"}
        if self.loss_type in TOKEN_MEAN_LOSSES:
            inputs["num_items_in_batch"] = self._token_mean_items(mode, mask)
        if self.opmd_tau is not None:
            # OPMD (R³L opmd_policy_loss.py): −A·log π with the current log π, no importance ratio
            inputs.pop("old_per_token_logps", None)
        batch = CreditBatch(advantages=inputs["advantages"], mask=mask, features=features)
        self._crs_pending = _Pending(inputs, batch, rho, mode)
        clip = inputs.get("crs_clip_scale")  # a method's per-token clip scale c: [1 − c·ε_low, 1 + c·ε_high]
        eps = (self.epsilon_low, self.epsilon_high)
        if clip is not None:
            self.epsilon_low, self.epsilon_high = (
                eps[0] * clip,
                eps[1] * clip,
            )  # TRL's torch.clamp takes tensors
        try:
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.checks is not None:
                self.checks.loss(out)
            return out
        finally:
            self._crs_pending = None
            self.epsilon_low, self.epsilon_high = eps

    def _token_mean_items(self, mode: str, mask: torch.Tensor) -> torch.Tensor:
        """``num_items_in_batch`` that makes TRL's token-level normaliser verl's ``token-mean`` exactly.

        TRL divides each micro-batch's ``Σ ℓ·m`` by ``num_items / P · GA / S`` (train) or ``num_items / P``
        (eval) and DDP averages over the P processes. verl divides by the number of trained tokens in the
        whole mini-batch (``agg_loss(..., batch_num_tokens)``, core_algos.py:1170-1175). So ``num_items`` =
        trained tokens of this optimizer step's GA micro-batches, summed over processes, × S / GA. The
        micro-batches are the buffered rollout's chunks; their masks are final at rollout time.
        """
        if mode != "train":
            return self.accelerator.gather(mask.sum().detach().reshape(1)).sum()
        ga = self.current_gradient_accumulation_steps
        S = self.args.steps_per_generation
        every = self._micro_steps_per_rollout()
        first = (self._step // ga) * ga
        buf = self._buffered_inputs
        if buf is not None and first // every == (first + ga - 1) // every:
            local = sum(_loss_mask(buf[(first + j) % S]).sum() for j in range(ga))
        else:
            # an optimizer step spanning several rollouts (GA > steps_per_generation), or a batch that is
            # not the buffered rollout (direct calls): extrapolate this micro-batch
            if "token_mean_estimate" not in self._crs_warned and buf is not None:
                self._crs_warned.add("token_mean_estimate")
                warnings.warn(
                    "crs: an optimizer step spans several rollouts (gradient_accumulation_steps > "
                    "steps_per_generation); the token-mean divisor is extrapolated from each micro-batch",
                    stacklevel=2,
                )
            local = mask.sum() * ga
        total = self.accelerator.gather(local.detach().float().reshape(1)).sum()
        return total * S / ga

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
            multi = self.accelerator.num_processes > 1
            full = self._gather_batch(batch) if multi else batch  # batch-level criteria pool over processes
            out = self.credit.advantage_phase(full, rho)
            if self.checks is not None:
                self.checks.credit(out)
            weights = out.token_weights
            if weights is not None:
                adv = fold_token_weights(out.advantages, weights, full.mask, self.loss_type, out.renormalize)
            else:
                adv = out.token_advantages() if out.advantages.dim() == 2 else out.advantages
            credit_tokens = out.token_advantages() * (weights if weights is not None else 1.0)
            if multi:
                adv, weights, credit_tokens = (
                    self._local_rows(t, batch.mask) for t in (adv, weights, credit_tokens)
                )
            inputs["advantages"] = adv
        else:
            credit_tokens = batch.token_advantages()
        if self.opmd_tau is not None:
            inputs["advantages"] = inputs["advantages"] / (1.0 + self.opmd_tau)
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

    def _gather_batch(self, batch: CreditBatch) -> CreditBatch:
        """The micro-batch of every process as one batch (rows in process order, ``T`` padded)."""
        acc = self.accelerator

        def g(t):
            if t is None:
                return None
            x = t.float() if t.dtype == torch.bool else t
            if x.dim() == 2:
                x = acc.pad_across_processes(x, dim=1, pad_index=0)
            y = acc.gather(x.contiguous())
            return y.bool() if t.dtype == torch.bool else y

        return batch.replace(
            advantages=g(batch.advantages),
            mask=g(batch.mask),
            token_weights=g(batch.token_weights),
            features={k: g(v) for k, v in sorted(batch.features.items())},
            entropies=g(batch.entropies),
            logps=g(batch.logps),
        )

    def _local_rows(self, t: torch.Tensor | None, local_mask: torch.Tensor) -> torch.Tensor | None:
        if t is None:
            return None
        b, T = local_mask.shape
        rank = self.accelerator.process_index
        t = t[rank * b : (rank + 1) * b]
        return t[:, :T] if t.dim() == 2 else t

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
        if (
            b.get("decisive") is not None
        ):  # credit localization: share of the policy change on decisive tokens
            self._log_share("loc/kl_share", kl, b["decisive"], m)


class _PostStepDiagnostics(TrainerCallback):
    """Runs after each optimizer step (before TRL logs it): the post-update KL measurement."""

    def __init__(self, trainer: CreditGRPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.measure_update_kl()
