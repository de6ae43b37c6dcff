"""Resume the same run: checkpoints every N steps, published atomically, the last K kept.

HF ``Trainer`` saves what it knows (model, optimizer, LR scheduler, RNG states, ``trainer_state.json``
with the global step and the log history) into ``<home>/checkpoints/checkpoint-<step>/`` every
``runs.checkpoint_every`` optimizer steps (``save_strategy="steps"``). crs adds what it does not:

- **atomic publish**: a checkpoint counts only once ``crs_checkpoint.json`` exists in it; the marker
  is written last, to a temporary name then ``os.replace``-d, so a job killed while saving leaves a
  folder that resume ignores (and prunes);
- **keep the last K** complete checkpoints (``runs.keep``); incomplete ones are deleted;
- **crs state**: the MLflow run id, the run key, the rollout samples so far and the start-of-run
  evaluation, restored on resume;
- **the same MLflow run**: ``resume=auto`` looks up the most recent run with the same *run key* (a hash
  of the resolved config without paths, tracking and run-control settings) in the experiment; if it is
  not FINISHED and no live process holds it, the job reopens it (status back to RUNNING) and calls
  ``trainer.train(resume_from_checkpoint=...)``. Metrics of the steps between that checkpoint and the
  crash are recomputed from the restored state but not logged again (each metric step exactly once).
  ρ is a function of the restored global step, so it continues where it was.

``resume=never`` always starts a new run; ``resume=<path>`` continues from a checkpoint folder (or a
run folder: its latest complete checkpoint). In a sweep relaunched with ``resume=auto``, jobs whose
run already FINISHED are skipped, so only the unfinished ones run again.

    crs train trainer.max_steps=300 runs.checkpoint_every=25   # kill -9 it at any step, then:
    crs train trainer.max_steps=300 runs.checkpoint_every=25   # resumes the same MLflow run
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crs.errors import ConfigError

MARKER = "crs_checkpoint.json"
PREFIX = "checkpoint-"
# config keys that do not change what a run computes (where it writes, how it is tracked / resumed)
VOLATILE_KEYS = ("paths", "tracking", "resume", "runs", "hydra")
VOLATILE_TRAINER_KEYS = ("num_threads",)


def run_key(cfg: DictConfig) -> str:
    """A short hash identifying "the same run": the resolved config without volatile keys."""
    data = OmegaConf.to_container(cfg, resolve=False)
    data = {k: v for k, v in data.items() if k not in VOLATILE_KEYS}
    trainer = dict(data.get("trainer") or {})
    for k in VOLATILE_TRAINER_KEYS:
        trainer.pop(k, None)
    data["trainer"] = trainer
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoints_dir(home: Path | str) -> Path:
    return Path(home) / "checkpoints"


def _step_of(path: Path) -> int:
    try:
        return int(path.name[len(PREFIX) :])
    except ValueError:
        return -1


def complete_checkpoints(home: Path | str) -> list[Path]:
    """Checkpoint folders with a marker, oldest first."""
    root = checkpoints_dir(home)
    if not root.exists():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / MARKER).exists() and _step_of(p) >= 0]
    return sorted(found, key=_step_of)


def latest_checkpoint(home: Path | str) -> Path | None:
    found = complete_checkpoints(home)
    return found[-1] if found else None


def read_marker(checkpoint: Path | str) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / MARKER).read_text())


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prune(home: Path | str, keep: int, *, incomplete_too: bool = True) -> None:
    """Keep the last ``keep`` complete checkpoints; drop incomplete folders (a save cut short)."""
    root = checkpoints_dir(home)
    if not root.exists():
        return
    complete = complete_checkpoints(home)
    for old in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    if incomplete_too:
        newest = _step_of(complete[-1]) if complete else -1
        for p in root.glob(f"{PREFIX}*"):
            if p.is_dir() and not (p / MARKER).exists() and _step_of(p) <= newest:
                shutil.rmtree(p, ignore_errors=True)


@dataclass
class ResumePlan:
    """What this job does: a new run, or continue ``run_id`` from ``checkpoint`` in ``home``."""

    home: Path
    run_id: str | None = None
    checkpoint: Path | None = None
    marker: dict[str, Any] = field(default_factory=dict)
    skip: dict[str, Any] | None = None  # the FINISHED run a relaunched sweep job skips
    note: str = ""
    # a RUNNING run of this job whose owner is dead and that this job does not continue: closed KILLED
    # (with the reason and a pointer to the new run) once the new run exists, so no ghost stays RUNNING
    dead: dict[str, str] | None = None

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None


def plan_resume(cfg: DictConfig, tracker, output_dir: Path, key: str, multirun: bool) -> ResumePlan:
    """Decide from ``cfg.resume`` (``auto``, ``never`` or a path) what this job continues."""
    mode = str(cfg.get("resume", "auto"))
    if mode == "never":
        return ResumePlan(home=output_dir)
    if mode != "auto":
        path = Path(mode).expanduser()
        ckpt = path if (path / MARKER).exists() else latest_checkpoint(path)
        if ckpt is None:
            raise ConfigError(f"resume={mode}: no complete checkpoint there (a folder with {MARKER})")
        marker = read_marker(ckpt)
        run_id = (
            marker.get("run_id") if tracker.run_id is None and tracker.exists(marker.get("run_id")) else None
        )
        return ResumePlan(
            home=Path(marker.get("home", ckpt.parent.parent)), run_id=run_id, checkpoint=ckpt, marker=marker
        )
    previous = tracker.find_runs({"crs.run_key": key})
    if not previous:
        return ResumePlan(home=output_dir)
    run = previous[0]  # most recent
    status, tags = run.info.status, run.data.tags
    if status == "FINISHED":
        if multirun:
            return ResumePlan(
                home=output_dir, skip={"run_id": run.info.run_id, "run_name": run.info.run_name}
            )
        return ResumePlan(
            home=output_dir,
            note=f"the same config already FINISHED as run {run.info.run_id}; starting a new run",
        )
    home = tags.get("crs.home")
    from crs.runs.lock import RunLock

    def dead(reason: str) -> dict[str, str] | None:
        return {"run_id": run.info.run_id, "reason": reason} if status == "RUNNING" else None

    if not home or not Path(home).exists():
        return ResumePlan(
            home=output_dir,
            note=f"run {run.info.run_id} ({status}) left no reachable folder; starting a new run",
            dead=dead("its process is gone and its folder is unreachable"),
        )
    if RunLock.held(home):
        return ResumePlan(home=output_dir, note=f"run {run.info.run_id} is still running; starting a new run")
    ckpt = latest_checkpoint(home)
    if ckpt is None:
        return ResumePlan(
            home=output_dir,
            note=f"run {run.info.run_id} ({status}) has no checkpoint; starting a new run"
            + ("; it is closed KILLED (its process is gone)" if status == "RUNNING" else ""),
            dead=dead("its process is gone (no lock holder) and it left no checkpoint to resume"),
        )
    return ResumePlan(home=Path(home), run_id=run.info.run_id, checkpoint=ckpt, marker=read_marker(ckpt))


def checkpoint_callback(trainer, plan: ResumePlan, key: str, keep: int, tracker, extra: dict[str, Any]):
    """``on_save``: write the marker (crs state) into the folder HF just wrote, then prune."""
    from transformers import TrainerCallback

    class CrsCheckpoint(TrainerCallback):
        steps_this_attempt = 0  # optimizer steps trained by this process (a resume trains only the rest)

        def on_step_end(self, args, state, control, **kwargs):
            self.steps_this_attempt += 1

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            folder = checkpoints_dir(plan.home) / f"{PREFIX}{state.global_step}"
            if not folder.exists():
                return
            marker = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "run_id": tracker.run_id,
                "run_key": key,
                "home": str(plan.home),
                "time": time.time(),
                "samples": list(getattr(trainer, "samples", [])),
                "sample_steps_left": sorted(getattr(trainer, "sample_steps", [])),
                "steps_this_attempt": self.steps_this_attempt,
                **extra,
            }
            write_json_atomic(folder / MARKER, marker)
            prune(plan.home, keep)

    return CrsCheckpoint()


def restore_crs_state(trainer, marker: dict[str, Any]) -> None:
    """Put back what HF's checkpoint does not hold (rollout samples, sample steps still due)."""
    trainer.samples = list(marker.get("samples", []))
    if "sample_steps_left" in marker:
        trainer.sample_steps = set(marker["sample_steps_left"])
