"""Metric layout for the MLflow UI: what the trainer logs → the chart a researcher looks at.

MLflow draws one chart per metric key, in sections named by the key's part before the last ``/``,
sorted alphabetically, with un-prefixed keys ("Model metrics") at the very bottom. The trainer logs
~100 keys with TRL's and crs's own names (``reward``, ``adv/mean``, ``diag/kl_bin_3``, ``epoch`` …),
which buries the handful that matter. So the tracking layer renames keys *at logging time* (the
trainer's ``log_history``, progress bar and ``summary.json`` keep the original names) by rules,
prefix → section, first match wins:

==================  ==========================================================================
section             what goes there
==================  ==========================================================================
``1 main``          train reward and accuracy, eval accuracy, entropy (all tokens), KL (to the
                    reference, and of each policy update), success rate
``2 schedule``      ρ and the knob it drives (``credit/<step>/<knob>`` of a driven knob) — only
                    for methods that have one; a method without one logs no schedule charts
``3 credit``        ``credit/*``, ``adv/*``, entropy of selected/unselected tokens, credit
                    localization (``loc/*``), step scores, interventions and implicit-PRM statistics
                    (``steps/*``, ``int/*``, ``implicit/*``, R³L's ``r3l/*``) of step-level methods
``4 rollouts``      reward spread, per-reward-function means, completion lengths, tokens,
                    multi-turn environment counts (``env/*``; ``env/success`` is in ``1 main``),
                    orchestration-trace costs and spawns (``orch/*``)
``5 optimizer``     loss, grad norm, learning rate, clip ratios, TRL's entropy of trained tokens
``6 eval``          the other evaluation metrics (``eval_reward``, ``eval_completions/*`` …) and a
                    pipeline's held-out scores and KL(π_S‖π_T) (``s2d/*``, crs/pipeline)
``7 diagnostics``   ``diag/*`` scalars (KL(rollout‖updated) …)
``8 per-bin``       ``diag/*_bin_<i>`` (trajectory-percentile bins; the heatmaps under ``plots/``
                    show them better)
``9 trl``           TRL bookkeeping: ``epoch``, ``total_flos``, ``train_runtime``, ``step_time`` …
``other``           any key no rule knows: ``foo/bar`` → ``other/foo.bar`` (add a rule here)
==================  ==========================================================================

Dropped: evaluation copies of training-only quantities (``eval_schedule/*``, ``eval_credit/*``,
``eval_adv/*``, ``eval_clip_ratio/*``, ``eval_diag/*``, ``eval_entropy/*``, ``eval_loss``: no update
happens during evaluation). End-of-run summaries (``final/*``) are not charts of one point: they
become tags ``final.<name>`` the runs table can show as columns. Values are rounded to 6 significant
digits (``0.16500000000000006`` → ``0.165``).

``crs compare`` reads both layouts (:func:`ui_key` maps a trainer name to its MLflow key).

    python -c "from crs.metric_layout import ui_key; print(ui_key('reward'), ui_key('diag/kl_bin_3'))"
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping

# first match wins; a pattern is a regular expression on the trainer's key, the target a format
# string of the section and the chart name ({0} = the whole key, {1}... = groups)
RULES: list[tuple[str, str | None]] = [
    # evaluation copies of training-only quantities: nothing is trained during evaluation
    (r"eval_(schedule|credit|adv|clip_ratio|diag|entropy)/.*", None),
    (r"eval_loss", None),
    # 1 main: the handful a comparison starts from
    (r"(reward|accuracy|eval_accuracy)", "1 main/{1}"),
    (r"entropy/all", "1 main/entropy"),
    (r"kl", "1 main/kl_to_reference"),  # TRL, when beta > 0
    (r"diag/kl", "1 main/kl_policy_update"),  # crs: KL(rollout policy ‖ updated policy)
    (r"(eval_)?(success_rate|success)", "1 main/{0}"),
    (r"env/success", "1 main/success"),  # multi-turn environments (crs/envs)
    # 2 schedule: rho and the knob it drives (credit/<step>/<knob> when <step>/<knob> is driven: see ui_key)
    (r"schedule/(.+)", "2 schedule/{1}"),
    # 3 credit
    (r"credit/(.+)", "3 credit/{1}"),
    (r"adv/(.+)", "3 credit/adv_{1}"),
    (r"entropy/(.+)", "3 credit/entropy_{1}"),
    (r"loc/(.+)", "3 credit/loc.{1}"),  # credit localization of step-level methods (crs/steps)
    (r"(steps|int|implicit|r3l)/(.+)", "3 credit/{1}.{2}"),  # step scores, InT, implicit PRM, R³L retries
    # 9 TRL bookkeeping (before the eval_ catch-all: eval_runtime is bookkeeping)
    (
        r"(epoch|total_flos|step_time|train_runtime|train_loss|train_samples_per_second|train_steps_per_second"
        r"|eval_runtime|eval_samples_per_second|eval_steps_per_second|eval_num_tokens)",
        "9 trl/{0}",
    ),
    # 4 rollouts
    (r"(reward_std|frac_reward_zero_std|num_tokens)", "4 rollouts/{0}"),
    (r"rewards/(.+)", "4 rollouts/rewards.{1}"),
    (r"completions/(.+)", "4 rollouts/length.{1}"),
    (r"env/(.+)", "4 rollouts/env.{1}"),
    (r"s2d/(teacher_logp)", "3 credit/s2d.{1}"),  # OPD's teacher log-prob of the student's tokens
    (r"s2d/(.+)", "6 eval/s2d.{1}"),  # sparse-to-dense held-out scores and KL(π_S‖π_T) (crs/pipeline)
    (r"orch/(.+)", "4 rollouts/orch.{1}"),  # orchestration traces (crs/envs/orchestra.py): costs, spawns
    # 5 optimizer
    (r"(loss|grad_norm|learning_rate)", "5 optimizer/{0}"),
    (r"clip_ratio/(.+)", "5 optimizer/clip_ratio.{1}"),
    (r"entropy", "5 optimizer/entropy_trained_tokens"),
    # 6 eval: the rest of the evaluation metrics
    (r"eval_(.+)", "6 eval/{1}"),
    # 7/8 diagnostics
    (r"diag/(.+_bin_\d+)", "8 per-bin/{1}"),
    (r"diag/(.+)", "7 diagnostics/{1}"),
]
_COMPILED = [(re.compile(p + r"\Z"), t) for p, t in RULES]
KNOB_SECTION = "2 schedule/"
SUMMARY_PREFIX = "final/"
SUMMARY_TAG = "final."
# characters MLflow accepts in a metric key
_BAD = re.compile(r"[^0-9A-Za-z_\-. :/]")


def ui_key(name: str, knobs: Collection[str] = ()) -> str | None:
    """The MLflow key a trainer metric is logged under (``None``: not logged).

    Args:
        name: the trainer's metric name.
        knobs: the run's driven knobs (``<step>/<knob>``, :meth:`crs.credit.CreditChain.knobs`);
            ``credit/<step>/<knob>`` of a driven knob goes to ``2 schedule``, other per-step credit
            statistics (``credit/gigpo/…``) to ``3 credit``.
    """
    if name.startswith("credit/") and name[len("credit/") :] in knobs:
        return "2 schedule/" + name[len("credit/") :].replace("/", ".")
    for pattern, target in _COMPILED:
        m = pattern.match(name)
        if m:
            if target is None:
                return None
            groups = [g.replace("/", ".") if g else "" for g in m.groups()]
            return target.format(name.replace("/", "."), *groups)
    if "/" in name:
        return "other/" + name.replace("/", ".")
    return "other/" + name


def round_sig(value: float, digits: int = 6) -> float:
    """``value`` rounded to ``digits`` significant digits (float noise off what the UI displays)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def summary_tag(value: float) -> str:
    """A summary number as a tag value: 4 significant digits, no float noise, integers as integers."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{round_sig(float(value), 4):.4g}"


class MetricLayout:
    """Applies :data:`RULES` to one logging call.

    Args:
        knobs: the run's driven knobs (``<step>/<knob>``, the ``drives`` tag); without any, ρ
            charts are dropped (they would show a schedule that changes nothing).
    """

    def __init__(self, knobs: Collection[str] = ()):
        self.knobs = set(knobs)

    def split(self, metrics: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
        """Trainer metrics → (MLflow metrics by UI key, tags for end-of-run summaries)."""
        out: dict[str, float] = {}
        tags: dict[str, str] = {}
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if k.startswith(SUMMARY_PREFIX):
                if not math.isfinite(v):
                    continue
                tags[SUMMARY_TAG + k[len(SUMMARY_PREFIX) :]] = summary_tag(v)
                continue
            key = ui_key(k, self.knobs)
            if key is None or (not self.knobs and key.startswith(KNOB_SECTION)):
                continue
            # NaN/inf are logged, not dropped: the step that diverged must show it (crs/runs/guard.py)
            out[_BAD.sub("_", key)] = round_sig(float(v)) if math.isfinite(v) else float(v)
        return out, tags
