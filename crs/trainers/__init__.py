"""The TRL trainers crs wraps, one subclass each, behind one seam: ``trainer.kind``.

Each kind is one ``crs/trainers/<kind>.py`` holding one subclass of a TRL trainer that only *wires*
crs's credit chain, schedule and rollout hooks into it; everything that touches TRL's private methods
stays inside those subclasses and ``tests/test_trl_contract.py`` (trl is pinned to the tested minor).
A method declares the kinds it supports (``Method.trainers``), so a wrong pair fails in one line before
any model loads::

    crs train trainer.kind=grpo method=tp_schedule
    crs train trainer=dpo method=t_reg              # conf/trainer/dpo.yaml sets kind: dpo

Listed here as data (module paths, imported when a run builds its trainer) so that the config check
never imports TRL.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainerKind:
    """One crs trainer: the TRL class it subclasses and where the subclass lives."""

    name: str
    trl_class: str
    module: str
    subclass: str
    help: str
    # what a run on this trainer needs from ``method.credit`` ("" = nothing: an empty chain is plain TRL);
    # checked with the config, before the tracker opens a run
    needs_method: str = ""


TRAINERS: dict[str, TrainerKind] = {
    "grpo": TrainerKind(
        "grpo",
        "trl.GRPOTrainer",
        "crs.trainers.grpo",
        "CreditGRPOTrainer",
        "Group-relative policy optimisation on verifiable rewards (every current crs method).",
    ),
    "dpo": TrainerKind(
        "dpo",
        "trl.DPOTrainer",
        "crs.trainers.dpo",
        "CreditDPOTrainer",
        "Direct preference optimisation on (chosen, rejected) pairs (method=dpo, method=t_reg; crs/prefs).",
        needs_method="a preference method (method=dpo or method=t_reg): its arguments say where the pairs come from",
    ),
    "gkd": TrainerKind(
        "gkd",
        "trl.experimental.gkd.GKDTrainer",
        "crs.trainers.gkd",
        "CreditGKDTrainer",
        "Forward-KL distillation on teacher samples (lmbda=0, seq_kd, beta=0): sparse-to-dense stage 2a.",
        needs_method="to run as stage 2a of `crs pipeline sparse_to_dense` (crs/pipeline), which gives it a "
        "teacher; crs train does not run it",
    ),
}


def trainer_class(kind: str):
    """The crs subclass for ``trainer.kind`` (imports TRL)."""
    import importlib

    k = TRAINERS[kind]
    return getattr(importlib.import_module(k.module), k.subclass)
