"""Terminal UX: a rich progress bar while training and a summary table at the end.

On a terminal the bar shows step, reward, accuracy, ρ, entropy and ETA; in a log file (SLURM, CI) it
prints one plain line every ~5% of training instead of redrawing.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from transformers import TrainerCallback

console = Console(stderr=False, highlight=False)


def fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _rl_stats(s: Mapping[str, Any], show_rho: bool = True) -> str:
    rho = f"  ρ {fmt(s.get('schedule/rho'), 2)}" if show_rho else ""
    return f"reward {fmt(s.get('reward'))}  acc {fmt(s.get('accuracy'))}{rho}  H {fmt(s.get('entropy/all'))}"


class RichProgressCallback(TrainerCallback):
    """Progress bar over optimizer steps, fed by the trainer's per-step logs."""

    def __init__(self, description: str = "train", stats=None, show_rho: bool = True):
        self.description = description
        # last logged values -> the text shown beside the bar (default: the RL numbers; ρ only when a
        # schedule drives a knob of the method — plain GRPO has none to show)
        self.stats = stats or (lambda s: _rl_stats(s, show_rho))
        self.progress: Progress | None = None
        self.task = None
        self.last: dict[str, float] = {}
        self.interactive = console.is_terminal
        self.every = 1

    def on_train_begin(self, args, state, control, **kwargs):
        total = state.max_steps
        self.every = max(1, total // 20)
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=total, stats="")

    def _stats(self) -> str:
        return self.stats(self.last)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        is_train = "loss" in logs  # every optimizer step; rollout metrics only when it generated
        if is_train:
            self.last.update({k: v for k, v in logs.items() if isinstance(v, int | float)})
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, stats=self._stats())
        elif is_train and (state.global_step % self.every == 0 or state.global_step == state.max_steps):
            print(
                f"[{self.description}] step {state.global_step}/{state.max_steps}  {self._stats()}",
                flush=True,
            )
        if "eval_accuracy" in logs and self.progress is None:
            print(
                f"[{self.description}] eval @ step {state.global_step}: accuracy {fmt(logs['eval_accuracy'])}",
                flush=True,
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, stats=self._stats())
            self.progress.stop()
            self.progress = None


def summary_table(summary: Mapping[str, Any], title: str) -> Table:
    """The end-of-run table: what was learned, how long it took, where the run lives."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    # fold, not the default ellipsis: a long store path (``sqlite:////home/…/mlflow.db``) is one word,
    # and at 80 columns it was cut to ``sqlite:////home/…`` — the one row a user copies from
    table.add_column("value", justify="right", overflow="fold")
    rows = [
        (
            "eval accuracy (start → end)",
            f"{fmt(summary.get('eval_accuracy_start'))} → {fmt(summary.get('eval_accuracy_end'))}",
        ),
        (
            "train accuracy (first 10% → last 10%)",
            f"{fmt(summary.get('train_accuracy_first10'))} → {fmt(summary.get('train_accuracy_last10'))}",
        ),
        (
            "mean reward (first 10% → last 10%)",
            f"{fmt(summary.get('reward_first10'))} → {fmt(summary.get('reward_last10'))}",
        ),
        (
            "best train accuracy (step)",
            f"{fmt(summary.get('train_accuracy_best'))} ({summary.get('train_accuracy_best_step', '–')})",
        ),
        (
            "entropy, all tokens (first → last step)",
            f"{fmt(summary.get('entropy_first'))} → {fmt(summary.get('entropy_last'))}",
        ),
        ("steps", str(summary.get("steps", "–"))),
        ("wall time", f"{summary.get('wall_time_s', 0):.0f} s"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    verdict = summary.get("verdict")
    if verdict:
        table.add_row("verdict", verdict)
    if summary.get("mlflow_run_id"):
        table.add_row("MLflow run", str(summary["mlflow_run_id"]))
        table.add_row("open with", f"crs ui  (store {summary.get('mlflow_uri')})")
    return table


def print_line(msg: str) -> None:
    console.print(msg)


def error_line(msg: str) -> None:
    """One line on stderr, no traceback."""
    print(f"crs: error: {msg}", file=sys.stderr, flush=True)
