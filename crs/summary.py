"""The end-of-run numbers: :func:`summarize` reads the trainer's per-step logs (no hard-coded values),
:func:`save_partial` keeps samples and a partial summary of a run cut short (signal, NaN, crash)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def summarize(log_history: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Numbers a researcher reads first, from the trainer's per-step logs (no hard-coded values)."""
    # every optimizer step logs "loss"; rollout metrics (reward, accuracy) only on steps that generated
    train = [h for h in log_history if "loss" in h and "step" in h]
    evals = [h for h in log_history if "eval_accuracy" in h]
    out: dict[str, Any] = {"steps": max((h["step"] for h in train), default=0), "wall_time_s": wall}

    def window(key: str, first: bool) -> float | None:
        vals = [h[key] for h in train if h.get(key) is not None]
        if not vals:
            return None
        k = max(1, len(vals) // 10)
        part = vals[:k] if first else vals[-k:]
        return sum(part) / len(part)

    for key, name in (("accuracy", "train_accuracy"), ("reward", "reward")):
        out[f"{name}_first10"] = window(key, True)
        out[f"{name}_last10"] = window(key, False)
    acc = [(h["step"], h["accuracy"]) for h in train if h.get("accuracy") is not None]
    if acc:
        best = max(acc, key=lambda x: x[1])
        out["train_accuracy_best"], out["train_accuracy_best_step"] = best[1], best[0]
    ent = [h["entropy/all"] for h in train if h.get("entropy/all") is not None]
    if ent:
        out["entropy_first"], out["entropy_last"] = ent[0], ent[-1]
    if evals:
        start = [e for e in evals if e.get("step") == 0]
        out["eval_accuracy_start"] = start[0]["eval_accuracy"] if start else None
        out["eval_accuracy_end"] = evals[-1]["eval_accuracy"]
        out["eval_accuracy_best"] = max(e["eval_accuracy"] for e in evals)
    first, last = out.get("reward_first10"), out.get("reward_last10")
    if first is not None and last is not None:
        out["verdict"] = (
            f"mean reward rose {first:.3f} → {last:.3f}"
            if last > first
            else f"mean reward did NOT rise ({first:.3f} → {last:.3f})"
        )
    return out


def _heatmap_histories(log_history: list[dict[str, Any]], bins: int) -> dict[str, dict[int, list[float]]]:
    out: dict[str, dict[int, list[float]]] = {"entropy": {}, "kl": {}}
    for h in log_history:
        for fam in out:
            vals = [h.get(f"diag/{fam}_bin_{i}") for i in range(bins)]
            if all(v is not None for v in vals):
                out[fam][h["step"]] = vals
    return out


def save_partial(trainer, tracker, output_dir: Path, start_eval, t0: float, err: BaseException) -> None:
    """A run cut short (signal, NaN, crash) still leaves its samples and a partial summary, locally and in
    MLflow; best effort, never masks the original error."""
    try:
        history = ([start_eval] if start_eval else []) + list(trainer.state.log_history)
        summary = summarize(history, time.time() - t0)
        summary.update(
            {
                "incomplete": True,
                "stopped_at_step": trainer.state.global_step,
                "reason": f"{type(err).__name__}: {err}",
                "mlflow_run_id": tracker.run_id,
                "output_dir": str(output_dir),
            }
        )
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if trainer.samples:
            (output_dir / "samples.json").write_text(json.dumps(trainer.samples, indent=2, default=str))
        tracker.log_dict(summary, "summary.json")
        if trainer.samples:
            tracker.log_dict(trainer.samples, "samples/rollouts.json")
    except BaseException:
        pass
