"""``crs train`` on several processes: one MLflow run, one run folder, one console.

Under ``torchrun``, ``accelerate launch`` (or any launcher that sets ``RANK``/``WORLD_SIZE`` and a rendezvous
address) every process runs the same ``crs train``; TRL and accelerate split each rollout and average the
gradients. Some things must happen exactly once per job, on process 0: the MLflow run (start, params,
metrics, status), the run folder (its lock, heartbeat, checkpoint markers, ``summary.json``), the resume
decision and the console. The other processes get the null tracker, process 0's folder and resume plan
(broadcast, so every rank reads the same checkpoint and writes its ``rng_state_<rank>.pth`` beside rank
0's) and a quiet console. Without this, two processes meant two MLflow runs and two folders per job.

SLURM jobs with several tasks (``hydra.launcher.tasks_per_node=2``) get the same variables from submitit's
:class:`~submitit.helpers.TorchDistributedEnvironment` (:func:`adopt_slurm_tasks`): the tasks of one job
are its processes. With GPUs give them ``gpus_per_node`` (every task sees every GPU and takes the one of its
local rank), not ``gpus_per_task``.

    torchrun --nproc_per_node 2 -m crs.cli train method=forking_tokens       # one run, two processes
    accelerate launch --num_processes 2 -m crs.cli train
    crs train -m hydra/launcher=slurm hydra.launcher.tasks_per_node=2 seed=0,1
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place in the job (``rank`` 0 of ``world`` 1 without a distributed launcher)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Processes:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self, use_cpu: bool) -> None:
        """Join the process group now (accelerate's shared state, the one TRL's Trainer reuses), so the
        job's folder and plan can be broadcast before any model loads. ``use_cpu`` must be what the
        trainer will use (gloo on CPU, NCCL on GPUs)."""
        if self.world > 1:
            from accelerate import PartialState

            PartialState(cpu=use_cpu)

    def share(self, obj: T) -> T:
        """Process 0's ``obj`` on every process (picklable objects; identity with one process)."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        box: list[Any] = [obj if self.main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]


def adopt_slurm_tasks() -> None:
    """Inside a submitit SLURM job of several tasks (and no launcher of its own): export ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` (the port derived from the job id, so
    every task agrees) for torch's ``env://`` rendezvous. Before any config check reads ``WORLD_SIZE``."""
    if "WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def drop_own_folder(own: Path, shared: Path) -> None:
    """A non-main process writes into process 0's folder; remove the one Hydra made for it, if that
    holds nothing but Hydra's own files (its config copy and job log)."""
    own, shared = Path(own), Path(shared)
    if own.resolve() == shared.resolve() or not own.is_dir():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in own.iterdir()):
        shutil.rmtree(own, ignore_errors=True)
