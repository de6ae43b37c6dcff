"""The one rollout-time hook the trainer calls: segment, score, produce per-token tensors, mark decisive tokens.

``CreditGRPOTrainer`` calls :meth:`StepHook.__call__` once per rollout, right after TRL has generated
and scored the completions (where the reward runs). It returns per-row ``[B]`` and per-token ``[B,T]``
tensors that the trainer stores in the batch as ``crs_<name>``; TRL shuffles and splits them with the
rest of the batch, and the credit steps read them in the loss as ``batch.features[<name>]``.

Work done here, only when needed:

- step methods in the chain (a ``produce`` hook: PURE, CAPO, OPRL, InT): segment (:mod:`crs.steps.segment`),
  score with the configured scorer (:mod:`crs.steps.scorers`), run each method's ``produce``;
  logs ``steps/*`` (steps per completion, mean score; for learned scorers, online step precision/recall
  against the rule verifier when the task has one) and the scorer's cost (``judge/*``, ``prm/*``, ``implicit/*``);
- a task with known decisive tokens (:mod:`crs.benchmarks.bifurcation`): the ``decisive`` ``[B,T]`` mask
  for the localization metrics (:mod:`crs.steps.localization`), for every method.

Groups must be whole and contiguous (TRL's layout). On several processes a group can span processes, so
:func:`call_step_hook` gathers the rollout, runs the hook once on the main process (one scorer, one
implicit PRM) and broadcasts the tensors, each process keeping its own rows. InT stays one-process: its
SFT updates the policy in the hook, which DDP would not see on the other processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from crs.errors import ConfigError


class StepHook:
    """Built once per run from the method config, the benchmark and the policy's tokenizer.

    Args:
        chain: the run's :class:`~crs.credit.CreditChain`.
        steps_cfg: ``method.steps`` (:class:`crs.steps.settings.StepsConfig` fields).
        benchmark: the built :class:`~crs.benchmarks.Benchmark`.
        tokenizer: the policy's tokenizer.
        policy_path: the policy checkpoint (PRM/judge builds start from it).
        cache_dir: where built PRMs/judges are cached.
    """

    def __init__(
        self,
        chain,
        steps_cfg: Mapping[str, Any],
        benchmark,
        tokenizer,
        policy_path: str | None,
        cache_dir: str | None,
    ):
        self.chain = chain
        self.tokenizer = tokenizer
        self.benchmark = benchmark
        self.methods = [m.name for m, _ in chain.hooked("produce")]
        self.decisive_fn = getattr(benchmark, "decisive", None)
        # a structured completion's parts (slate/ranking), only when a method reads part_* tensors
        wants_parts = any(f.startswith("part_") for f in chain.token_features)
        self.parts_fn = getattr(benchmark, "parts", None) if wants_parts else None
        self.scorer = None
        self.sep_ids = frozenset()
        self.rule = None
        # multi-turn environments: steps are turns
        self.turns = (getattr(benchmark, "info", None) or {}).get("environment_factory") is not None
        if self.methods and self.turns:
            from crs.steps.choose import build_scorer

            self.scorer = build_scorer(steps_cfg, benchmark.name, cache_dir, policy_path, None)
        elif self.methods:
            from crs.steps.choose import build_scorer
            from crs.steps.rule import PROCESS_VERIFIERS
            from crs.steps.scorers import RuleScorer
            from crs.steps.segment import separator_token_ids

            seps = list(steps_cfg.get("separators") or [])
            if not seps:
                raise ConfigError("method.steps.separators must name at least one separator")
            self.sep_ids = separator_token_ids(tokenizer, seps)
            task = (getattr(benchmark, "info", None) or {}).get("config")
            self.scorer = build_scorer(steps_cfg, benchmark.name, cache_dir, policy_path, task)
            if self.scorer.name != "rule" and benchmark.name in PROCESS_VERIFIERS:
                self.rule = RuleScorer(benchmark.name)

    @property
    def active(self) -> bool:
        return bool(self.methods) or self.decisive_fn is not None or self.parts_fn is not None

    def decisive_mask(self, completion_ids: Tensor, completion_mask: Tensor, rows) -> Tensor:
        from crs.steps.segment import char_to_token_mask

        B, T = completion_ids.shape
        out = torch.zeros(B, T)
        lengths = completion_mask.long().sum(-1).tolist()
        for b in range(B):
            ids = completion_ids[b, : lengths[b]].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            spans = self.decisive_fn(text, rows[b])
            if spans:
                out[b, : lengths[b]] = torch.tensor(char_to_token_mask(self.tokenizer, ids, spans))
        return out

    def part_tensors(self, completion_ids: Tensor, completion_mask: Tensor, rows, group_size: int):
        """``part_<name>`` ``[B,T]`` masks, ``part_reward_<name>`` and group-centred ``part_adv_<name>`` ``[B]``
        (reward − group mean, Dr. GRPO: no std) of a benchmark's ``parts`` (whole groups, contiguous)."""
        from crs.credit.primitives import group_stats
        from crs.steps.segment import char_to_token_mask

        B, T = completion_ids.shape
        lengths = completion_mask.long().sum(-1).tolist()
        masks: dict[str, Tensor] = {}
        rewards: dict[str, list[float]] = {}
        for b in range(B):
            ids = completion_ids[b, : lengths[b]].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for name, (spans, reward) in self.parts_fn(text, rows[b]).items():
                m = masks.setdefault(f"part_{name}", torch.zeros(B, T))
                if spans and ids:
                    m[b, : lengths[b]] = torch.tensor(char_to_token_mask(self.tokenizer, ids, spans))
                if reward is not None:
                    rewards.setdefault(name, [0.0] * B)[b] = float(reward)
        out = dict(masks)
        for name, values in rewards.items():
            r = torch.tensor(values)
            out[f"part_reward_{name}"] = r
            out[f"part_adv_{name}"] = r - group_stats(r, group_size)[0]
        return out

    def __call__(
        self, trainer, inputs, out: dict[str, Any], success: Tensor, group_size: int, rho: float, mode: str
    ) -> dict[str, Tensor]:
        """Per-token/per-row tensors for this rollout (local rows, CPU)."""
        feats: dict[str, Tensor] = {}
        cid, cm = out["completion_ids"].cpu(), out["completion_mask"].cpu()
        metrics = trainer._metrics[mode] if trainer is not None else None
        if self.decisive_fn is not None:
            feats["decisive"] = self.decisive_mask(cid, cm, inputs)
        if self.parts_fn is not None:
            feats.update(self.part_tensors(cid, cm, inputs, group_size))
        if not self.methods or mode != "train":
            return feats
        from crs.steps.scorers import RolloutView
        from crs.steps.segment import segment_batch

        if self.turns:  # environments: a step is a turn (OPRL/iStar's unit), tool results excluded
            from crs.steps.segment import segment_turns

            steps = segment_turns(cm, cm * out["tool_mask"].cpu())  # TRL sets tool_mask on tool rollouts
        else:
            steps = segment_batch(cid, cm, self.sep_ids)
        view = RolloutView.decoded(
            self.tokenizer,
            cid,
            steps,
            prompt_ids=out["prompt_ids"].cpu(),
            prompt_mask=out["prompt_mask"].cpu(),
            completion_mask=cm,
            rows=inputs,
            success=success.bool().cpu(),
            group_size=group_size,
            benchmark=self.benchmark.name,
            trainer=trainer,
            extra={"old_logps": out.get("old_per_token_logps")},
        )
        scores = self.scorer.score(view).float().cpu()
        outcome = out["advantages"].cpu()
        for method, args in self.chain.hooked("produce", rho):
            feats.update(method.produce(view, scores, self.scorer.kind, args, outcome))
        valid = steps.valid
        if metrics is not None:
            metrics["steps/per_completion"].append(float(valid.sum(-1).float().mean()))
            if valid.any():
                metrics["steps/score_mean"].append(float(scores[valid].mean()))
            for k, v in self.scorer.metrics.items():
                metrics[k].append(float(v))
            if self.rule is not None and self.scorer.kind == "prob" and valid.any():
                truth = self.rule.score(view)[valid] < 0.5  # wrong steps are the positive class
                pred = scores[valid] < 0.5
                tp = float((truth & pred).sum())
                if pred.any():
                    metrics["steps/precision_wrong"].append(tp / float(pred.sum()))
                if truth.any():
                    metrics["steps/recall_wrong"].append(tp / float(truth.sum()))
        return feats


def validate_steps(cfg, chain) -> None:
    """Config-time checks of ``method.steps`` (one clear error line before any model loads)."""
    from crs.benchmarks import is_multi_turn
    from crs.steps.rule import PROCESS_VERIFIERS
    from crs.steps.scorers import VOTES

    s = cfg.method.steps
    if s.scorer not in ("rule", "prm", "judge", "implicit"):
        raise ConfigError(f"method.steps.scorer must be one of rule, prm, judge, implicit (got {s.scorer!r})")
    if s.judge.vote not in VOTES:
        raise ConfigError(f"method.steps.judge.vote must be one of {', '.join(VOTES)} (got {s.judge.vote!r})")
    if s.judge.critiques < 1:
        raise ConfigError(f"method.steps.judge.critiques must be >= 1 (got {s.judge.critiques})")
    if s.implicit.traj_agg not in ("mean", "sum"):
        raise ConfigError(f"method.steps.implicit.traj_agg must be mean or sum (got {s.implicit.traj_agg!r})")
    if s.implicit.beta <= 0 or s.implicit.lr <= 0:
        raise ConfigError("method.steps.implicit.beta and .lr must be > 0")
    if not chain.hooked("produce") or is_multi_turn(cfg.benchmark.name):
        return  # on environments a step is a turn: no separators, the method's own check decides
    if not list(s.separators):
        raise ConfigError("method.steps.separators must name at least one separator")
    bench = cfg.benchmark.name
    needs_rule = s.scorer == "rule" or (s.scorer in ("prm", "judge") and not s[s.scorer].path)
    if needs_rule and bench not in PROCESS_VERIFIERS:
        raise ConfigError(
            f"method.steps.scorer={s.scorer} needs a process verifier (rule scores, or labels to build a "
            f"{s.scorer}) for benchmark {bench!r}; known: {', '.join(sorted(PROCESS_VERIFIERS))}; "
            f"give method.steps.{s.scorer}.path for other tasks"
        )


_GATHER_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "tool_mask", "advantages")


def call_step_hook(
    hook: StepHook, trainer, inputs, out: Mapping[str, Any], success: Tensor, group_size: int, rho, mode
) -> dict[str, Tensor]:
    """Run ``hook`` on the whole rollout and return this process's rows.

    ``success`` is the gathered ``[N_global]`` outcome (TRL gathers rewards). On one process this is a plain
    call. On several: gather the local tensors (prompts left-padded, completions right-padded to the widest
    process) and the rows, call the hook on the main process only, broadcast its tensors, keep rows
    ``[rank·B, (rank+1)·B)`` and the local width ``T``.
    """
    acc = trainer.accelerator
    local_b, local_t = out["completion_ids"].shape
    if acc.num_processes == 1:
        return hook(trainer, inputs, out, success, group_size, rho, mode)
    from accelerate.utils import broadcast_object_list, gather_object

    pad = getattr(hook.tokenizer, "pad_token_id", None) or 0
    full: dict[str, Any] = {}
    for k in _GATHER_KEYS + ("old_per_token_logps",):
        t = out.get(k)
        if t is None:
            continue
        if t.dim() == 2:
            t = acc.pad_across_processes(
                t, dim=1, pad_index=pad if k.endswith("_ids") else 0, pad_first=k.startswith("prompt")
            )
        full[k] = acc.gather(t.contiguous())
    rows = gather_object(list(inputs))
    feats = None
    if acc.is_main_process:
        feats = {k: v.cpu() for k, v in hook(trainer, rows, full, success, group_size, rho, mode).items()}
    box = [feats]
    broadcast_object_list(box)
    sl = slice(acc.process_index * local_b, (acc.process_index + 1) * local_b)
    return {k: (v[sl, :local_t] if v.dim() == 2 else v[sl]) for k, v in box[0].items()}
