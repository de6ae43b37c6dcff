"""The stage runners of a pipeline: a ``crs train`` job (RL and OPD stages) and the GKD stage (FKL).

Each runner gets the stage's composed ``crs train`` config, the models it reads (by path), its folder
and the pipeline's parent run, and returns ``(mlflow run id, output model folder)``. Every output model is
scored on the benchmark's held-out split by :func:`heldout_eval` — the same prompts, samples and
temperature for every stage and arm — and logged as ``s2d/heldout_pass1``, ``s2d/heldout_passk`` and
``s2d/heldout_greedy`` on the stage's run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

UNLABELED_SEED_OFFSET = 100_003  # the distillation prompts come from another stream than the labeled set L


def unlabeled_prompts(bench_cfg: Any, n: int, seed: int):
    """``n`` fresh prompts of the benchmark's generator as a ``Dataset`` with the ``prompt`` column only.

    The distillation stages need no labels (the principle's point): the answer column is dropped here,
    before the trainer sees the rows (``tests/test_s2d.py`` S6).
    """
    from crs.benchmarks import build_benchmark

    bcfg = (
        OmegaConf.to_container(bench_cfg, resolve=True)
        if isinstance(bench_cfg, DictConfig)
        else dict(bench_cfg)
    )
    bcfg["n_train"] = int(n)
    bench = build_benchmark(bcfg, seed + UNLABELED_SEED_OFFSET)
    return bench.train.select_columns(["prompt"])


def heldout_eval(model_path: str, cfg: DictConfig, settings: Any, seed: int) -> dict[str, float]:
    """pass@1 / pass@k / greedy accuracy of the model at ``model_path`` on the first ``settings.prompts``
    held-out prompts (``crs.evaluate.evaluate_model``, temperature ``trainer.temperature``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.benchmarks import build_benchmark
    from crs.evaluate import evaluate_model

    bench = build_benchmark(cfg.benchmark, seed)
    ev = bench.eval.select(range(min(int(settings.prompts), len(bench.eval))))
    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    m = evaluate_model(
        model,
        tok,
        list(ev["prompt"]),
        list(ev["answer"]),
        bench.verify,
        k=int(settings.k),
        temperature=float(cfg.trainer.temperature),
        max_new_tokens=int(settings.max_new_tokens),
        seed=seed,
    )
    return {
        "s2d/heldout_pass1": m["pass@1"],
        "s2d/heldout_passk": m["pass@k"],
        "s2d/heldout_greedy": m["greedy_accuracy"],
    }


def run_train_stage(cfg: DictConfig) -> tuple[str | None, Path]:
    """One ``crs train`` job (:func:`crs.train.train`) that saves its final policy; returns (run id, model).

    ``resume=auto`` is crs train's own: a stage killed mid-way continues from its last checkpoint, one
    that FINISHED (but whose pipeline record was lost) is not trained again.
    """
    from crs.train import train

    summary = train(cfg)
    model = Path(cfg.paths.output_dir) / "model"
    if summary.get("skipped") and not (model / "config.json").exists():
        raise RuntimeError(f"stage run {summary.get('mlflow_run_id')} FINISHED but its model {model} is gone")
    if summary.get("output_dir"):
        model = Path(summary["output_dir"]) / "model"
    return summary.get("mlflow_run_id"), model


def run_fkl_stage(
    cfg: DictConfig,
    settings: Any,
    student: str,
    teacher: str,
    out_dir: Path,
    n_prompts: int,
    tracker,
    parent_id: str | None,
    run_name: str,
    tags: dict[str, Any],
) -> tuple[str | None, Path]:
    """Stage 2a: :class:`~crs.trainers.gkd.CreditGKDTrainer` (forward KL on teacher samples); the student's
    trainer knobs (temperature, completion length, optimiser) come from ``cfg.trainer``."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed

    from crs.progress import RichProgressCallback, fmt
    from crs.tracking import end_status, flatten
    from crs.trainers.args import training_kwargs
    from crs.trainers.gkd import CreditGKDTrainer, gkd_config

    tracker.start(run_name=run_name, parent_run_id=parent_id, tags=tags)
    status, error = "FINISHED", None
    try:
        tracker.log_params(
            flatten(
                {
                    "stage": OmegaConf.to_container(cfg, resolve=True),
                    "fkl": OmegaConf.to_container(settings, resolve=True),
                    "teacher": teacher,
                    "student": student,
                }
            )
        )
        set_seed(int(cfg.seed))
        tok = AutoTokenizer.from_pretrained(student)
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
        teacher_model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
        if len(AutoTokenizer.from_pretrained(teacher)) != len(tok):
            raise RuntimeError("fkl: the teacher's tokenizer differs from the student's")
        data = unlabeled_prompts(cfg.benchmark, n_prompts, int(cfg.seed))
        t = cfg.trainer
        kw = training_kwargs(cfg, out_dir, None, 0)
        kw.update(
            max_steps=int(settings.max_steps),
            per_device_train_batch_size=int(settings.batch_size),
            learning_rate=float(settings.lr),
            eval_strategy="no",
            eval_steps=None,
            max_new_tokens=int(t.max_completion_length),
            temperature=float(t.temperature),
            max_length=None,
        )
        trainer = CreditGKDTrainer(
            model=model,
            teacher_model=teacher_model,
            args=gkd_config(**kw),
            train_dataset=data,
            processing_class=tok,
            estimator=str(settings.estimator),
        )
        trainer.remove_callback(PrinterCallback)
        cb = tracker.callback()
        if cb is not None:
            trainer.add_callback(cb)
        trainer.add_callback(
            RichProgressCallback(
                f"fkl ({settings.estimator}) seed {cfg.seed}", stats=lambda s: f"loss {fmt(s.get('loss'))}"
            )
        )
        t0 = time.time()
        trainer.train()
        model_dir = out_dir / "model"
        trainer.save_model(str(model_dir))
        tok.save_pretrained(str(model_dir))
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        summary = {
            "train_time_s": time.time() - t0,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
        }
        tracker.log_metrics(
            {f"final/{k}": v for k, v in summary.items() if v is not None}, step=int(settings.max_steps)
        )
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return tracker.run_id, model_dir
    except BaseException as err:
        status, error = end_status(err)
        raise
    finally:
        tracker.end(status, error)
