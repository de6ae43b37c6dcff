"""The one ``DPOTrainer`` subclass: TRL's DPO loss plus a credit chain's preference regulariser (T-REG).

Wiring only; TRL's loss code is called, never copied (trl pinned to 1.16, ``tests/test_trl_contract.py``):

``PreferenceCollator.torch_call``
    TRL's collator, plus ``token_rewards`` ``[2N,L]``: each response's ``r̂`` laid out like
    ``completion_mask`` (zeros on the prompt), cut with the same ``max_length`` slice and right-padded with 0.
``_set_signature_columns_if_needed``
    Keeps ``chosen_token_rewards``/``rejected_token_rewards`` through ``remove_unused_columns``.
``__init__``
    After TRL tokenized the pairs (and precomputed the reference log-probs), a method that reads the
    ``token_reward`` feature gets ``r̂`` added by a dataset pass with the still-untrained model as evaluator
    (:func:`crs.prefs.rewards.add_token_rewards`): ``π_ref`` rates its own tokens, as in the paper.
``compute_loss``
    Calls TRL's loss unchanged. A forward hook on the policy keeps the per-token log-probs TRL's forward
    produced (one forward, no copy of the loss), the chain's steps see them as a
    :class:`~crs.credit.CreditBatch` (rows ``[chosen; rejected]``, ``logps`` with gradient, features
    ``token_reward``, ``implicit_reward`` = ``β(log π − log π_ref)`` per row, ``beta``), and whatever they
    return as ``features["pref_reg"]`` is added to the loss. ``ρ`` of the schedule drives their knobs.
``evaluate``
    Accuracy on the benchmark's held-out prompts with the verifier (``eval_accuracy`` = pass@1 of
    ``num_generations_eval`` samples), the number every crs run reports; DPO's own eval loss needs held-out
    pairs, which crs does not build.

With ``method=dpo`` the chain adds nothing and the gradients equal plain ``DPOTrainer``'s
(``tests/test_dpo.py``)::

    crs train trainer=dpo method=dpo
    crs train trainer=dpo method=t_reg method.credit.t_reg.alpha=0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from crs.credit import CreditBatch
from crs.methods.chain import CreditChain

REWARD_COLUMNS = ("chosen_token_rewards", "rejected_token_rewards")


class PreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator + ``token_rewards`` ``[2N, L]`` aligned with ``completion_mask``."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if REWARD_COLUMNS[0] not in examples[0]:
            return out
        rows = [
            [0.0] * len(e["prompt_ids"]) + list(e[col]) for col in REWARD_COLUMNS for e in examples
        ]  # chosen rows first, then rejected: TRL's order
        if self.max_length is not None:
            sl = (
                slice(None, self.max_length)
                if self.truncation_mode == "keep_start"
                else slice(-self.max_length, None)
            )
            rows = [r[sl] for r in rows]
        out["token_rewards"] = pad(
            [torch.tensor(r, dtype=torch.float32) for r in rows],
            padding_value=0.0,
            padding_side="right",
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        return out


def _rewards_templates(credit: CreditChain) -> tuple[str, str] | None:
    """The evaluator's better/worse prompt templates, when a step reads the ``token_reward`` feature."""
    for p, args in credit.args_at(1.0):
        if "token_reward" in p.method.token_features:
            return str(args["better_template"]), str(args["worse_template"])
    return None


class CreditDPOTrainer(DPOTrainer):
    """``DPOTrainer`` + a :class:`~crs.methods.chain.CreditChain` + a schedule ``progress -> ρ``.

    Args:
        credit: the method's chain (``dpo`` alone = TRL's DPO).
        schedule: a :class:`~crs.schedules.Schedule` or any ``progress ∈ [0,1] -> ρ`` callable.
        eval_set: ``(prompts, answers, verify)`` of the held-out split, or ``None`` (no ``eval_accuracy``).
        eval_k / eval_temperature / eval_max_new_tokens: sampling of the evaluation.
        reward_batch_size: sequences per evaluator forward when ``r̂`` is computed.
        *args, **kwargs: passed to ``DPOTrainer``.
    """

    def __init__(
        self,
        *args: Any,
        credit: CreditChain,
        schedule: Any,
        eval_set: tuple[list[str], list[str], Any] | None = None,
        eval_k: int = 4,
        eval_temperature: float = 1.0,
        eval_max_new_tokens: int = 48,
        reward_batch_size: int = 32,
        **kwargs: Any,
    ):
        cargs: DPOConfig = kwargs["args"]
        tok = kwargs["processing_class"]
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = PreferenceCollator(
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                max_length=cargs.max_length,
                truncation_mode=cargs.truncation_mode,
                pad_to_multiple_of=cargs.pad_to_multiple_of,
            )
        super().__init__(*args, **kwargs)
        self.credit = credit
        self.schedule = schedule
        self.eval_set = eval_set
        self.eval_k, self.eval_temperature, self.eval_max_new_tokens = (
            eval_k,
            eval_temperature,
            eval_max_new_tokens,
        )
        self.samples: list[dict[str, Any]] = []  # crs run layout (train.py): no rollouts to keep
        self.sample_steps: set[int] = set()
        self.checks = None
        templates = _rewards_templates(credit)
        if templates is not None:
            from crs.prefs.rewards import add_token_rewards

            self.train_dataset = add_token_rewards(
                self.train_dataset, self.model, tok, *templates, batch_size=reward_batch_size
            )

    # ------------------------------------------------------------------------------------- columns
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            self._signature_columns = [*self._signature_columns, *REWARD_COLUMNS]

    # ---------------------------------------------------------------------------------------- clock
    def rho(self) -> float:
        """``ρ`` at the current optimizer step (steps counted from 1, like GRPO's rollouts)."""
        r, total = self.state.global_step + 1, max(1, self.state.max_steps or self.args.max_steps)
        at_step = getattr(self.schedule, "at_step", None)
        if at_step is not None:
            return float(at_step(r, total))
        return float(self.schedule(min(1.0, (r - 1) / total)))

    # ----------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        token_rewards = inputs.pop("token_rewards", None)
        if self.credit.is_identity or not self.credit.has_advantage_phase:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        seen: list[torch.Tensor] = []
        refs: list[torch.Tensor] = []

        def keep(into):
            return lambda module, args, output: (
                into.append(output.log_probs) if hasattr(output, "log_probs") else None
            )

        hooks = [model.register_forward_hook(keep(seen))]
        if self.ref_model is not None:
            hooks.append(self.ref_model.register_forward_hook(keep(refs)))
        try:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            for h in hooks:
                h.remove()
        loss = result[0] if return_outputs else result
        mask = inputs["completion_mask"][:, 1:].float()
        width = mask.size(1)
        logps = seen[0][:, -width:] * mask  # the policy forward is TRL's first call of `model`
        if self.precompute_ref_logps:
            ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps)
        else:  # the reference forward: ref_model, or `model` again with the adapter disabled (PEFT)
            ref_tok = (refs[0] if refs else seen[1])[:, -width:]
            ref = (ref_tok * mask).sum(-1)
        rows = mask.size(0)
        beta = torch.full((rows,), float(self.beta), device=logps.device)
        rewards = token_rewards[:, 1:].to(logps) if token_rewards is not None else torch.zeros_like(mask)
        features = {"token_reward": rewards, "implicit_reward": beta * (logps.sum(-1) - ref), "beta": beta}
        batch = CreditBatch(
            advantages=torch.zeros(rows, device=logps.device), mask=mask, logps=logps, features=features
        )
        rho = self.rho()
        out = self.credit.advantage_phase(batch, rho)
        extra = out.features.get("pref_reg")
        if extra is not None:
            loss = loss + extra
        self._log_credit(rho, out, features, mask)
        return (loss, result[1]) if return_outputs else loss

    def _log_credit(self, rho: float, out: CreditBatch, given: dict[str, torch.Tensor], mask) -> None:
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["schedule/rho"].append(rho)
        for knob, value in self.credit.knobs(rho).items():
            metrics[f"credit/{knob}"].append(float(value))
        for name, value in out.features.items():
            if name not in given and torch.is_tensor(value):
                metrics[f"credit/{name}"].append(value.detach().float().mean().item())
        r, (mc, mr) = given["token_reward"], mask.chunk(2)
        rc, rr = r.chunk(2)
        metrics["credit/token_reward/chosen_mean"].append(((rc * mc).sum() / mc.sum().clamp(min=1)).item())
        metrics["credit/token_reward/rejected_mean"].append(((rr * mr).sum() / mr.sum().clamp(min=1)).item())
        metrics["credit/token_reward/positive_frac"].append(
            (((r > 0).float() * mask).sum() / mask.sum().clamp(min=1)).item()
        )

    # ----------------------------------------------------------------------------------------- eval
    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Held-out accuracy with the verifier (not DPO's pair loss); logged like GRPO runs' evaluation."""
        if self.eval_set is None:
            return {}
        from crs.evaluate import evaluate_model

        prompts, answers, verify = self.eval_set
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        m = evaluate_model(
            model,
            self.processing_class,
            prompts,
            answers,
            verify,
            k=self.eval_k,
            temperature=self.eval_temperature,
            max_new_tokens=self.eval_max_new_tokens,
            seed=self.args.seed,
            greedy=False,
        )
        out = {
            f"{metric_key_prefix}_accuracy": m["pass@1"],
            f"{metric_key_prefix}_pass@k": m["pass@k"],
            f"{metric_key_prefix}_completions/mean_length": m["mean_completion_tokens"],
            f"{metric_key_prefix}_completions/clipped_ratio": m["frac_truncated"],
        }
        self.log(dict(out))  # in eval mode: TRL's log merges the (empty) eval metrics, not the train ones
        model.train(was_training)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, out)
        return out


# ------------------------------------------------------------------------------------------ assembly
def dpo_config(cfg: Any, output_dir: Path, n_params: int | None = None) -> DPOConfig:
    """The DPOConfig of a run (``cfg.trainer``; ``beta`` is DPO's β; the reference log-probs are precomputed)."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from crs.trainers.args import checkpoint_every, training_kwargs

    t = cfg.trainer
    kwargs = dict(
        **training_kwargs(cfg, output_dir, n_params, checkpoint_every(cfg)),
        beta=t.beta,
        loss_type=["sigmoid"],
        max_length=None,  # responses are capped at sampling time; a cut would bias the pair toward shorter
        precompute_ref_log_probs=True,  # the reference is fixed (like r̂): one pass, no reference copy kept
        dataset_num_proc=None,
    )
    known = {f.name for f in fields(DPOConfig)}
    kwargs.update({k: v for k, v in OmegaConf.to_container(t.extra, resolve=True).items() if k in known})
    return DPOConfig(**kwargs)


def pair_args(credit: CreditChain) -> dict[str, Any]:
    """The arguments of the chain's step that says where the pairs come from (one error line if none does)."""
    found = next((a for p, a in credit.args_at(1.0) if "data_file" in a and "samples" in a), None)
    if found is None:
        from crs.errors import ConfigError

        raise ConfigError("trainer.kind=dpo needs a preference method (method=dpo or method=t_reg)")
    return found


def dpo_model_path(cfg: Any, credit: CreditChain) -> tuple[str, dict[str, Any] | None]:
    """``model.name_or_path``, or the embedded model's contrastive warm-start variant (crs/prefs/warmstart.py);
    checks first, before any model loads, that the chain has a preference step."""
    import json

    pair_args(credit)
    if cfg.model.name_or_path:
        return str(cfg.model.name_or_path), None
    from omegaconf import OmegaConf

    from crs.prefs.warmstart import ensure_contrastive_model
    from crs.progress import console

    mcfg = OmegaConf.to_container(cfg.model.embedded, resolve=True)
    console.print("crs: the embedded model's contrastive warm start (built once, cached)")
    path = ensure_contrastive_model(
        mcfg, OmegaConf.to_container(cfg.benchmark, resolve=True), Path(cfg.paths.cache_dir)
    )
    return str(path), json.loads((path / "crs_pretrain.json").read_text())


def build_dpo_trainer(
    cfg: Any,
    model,
    tokenizer,
    bench,
    model_path: str,
    output_dir: Path,
    credit: CreditChain,
    schedule: Any,
    tracker: Any = None,
):
    """The run's :class:`CreditDPOTrainer`, its pairs built (or loaded) and ``r̂`` computed; returns
    ``(trainer, args, eval_prompts)``."""
    import json

    from crs.prefs.data import preference_dataset

    t = cfg.trainer
    args = dpo_config(cfg, output_dir, n_params=sum(p.numel() for p in model.parameters()))
    pairs, report = preference_dataset(
        pair_args(credit),
        bench,
        model,
        tokenizer,
        model_path,
        Path(cfg.paths.cache_dir),
        temperature=t.temperature,
        max_new_tokens=t.max_completion_length,
    )
    if tracker is not None:
        tracker.log_dict(report, "data/preference_pairs.json")
        tracker.log_dict(json.loads(args.to_json_string()), "config/dpo_config.json")
        tracker.log_metrics({"data/pairs": float(len(pairs))}, step=0)
    n_eval = min(t.eval_prompts, len(bench.eval))
    eval_ds = bench.eval.select(range(n_eval))
    trainer = CreditDPOTrainer(
        model=model,
        args=args,
        train_dataset=pairs,
        processing_class=tokenizer,
        credit=credit,
        schedule=schedule,
        eval_set=(list(eval_ds["prompt"]), [str(a) for a in eval_ds["answer"]], bench.verify),
        eval_k=t.num_generations_eval,
        eval_temperature=t.temperature,
        eval_max_new_tokens=t.max_completion_length,
    )
    return trainer, args, eval_ds
