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


def kl_student_teacher(
    student_path: str, teacher_path: str, cfg: DictConfig, settings: Any, seed: int
) -> float:
    """``s2d/kl_student_teacher``: the token mean of KL(π_S ‖ π_T) on one student sample per held-out prompt.

    The paper's condition C2 (OPD is informative only when the teacher is within a small KL of the student),
    measured where OPD works: on the student's own samples (temperature ``trainer.temperature``, both
    models' logits at that temperature, the full vocabulary: :func:`crs.credit.primitives.reverse_kl`). Logged
    for a student stage's input (``_in``) and output model, so stage 2a shows the drop it buys.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.benchmarks import build_benchmark
    from crs.credit.primitives import reverse_kl
    from crs.evaluate import _completion_mask

    bench = build_benchmark(cfg.benchmark, seed)
    prompts = list(bench.eval["prompt"][: int(settings.prompts)])
    tok = AutoTokenizer.from_pretrained(student_path)
    tok.padding_side = "left"
    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
    temp = float(cfg.trainer.temperature)
    torch.manual_seed(seed)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = student.generate(
        **enc,
        max_new_tokens=int(settings.max_new_tokens),
        do_sample=True,
        temperature=temp,
        top_k=0,
        top_p=1.0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    T = out.shape[1] - enc["input_ids"].shape[1]
    mask = _completion_mask(out[:, -T:], [tok.eos_token_id])
    attn = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    with torch.no_grad():
        logits = [
            m(input_ids=out, attention_mask=attn).logits[:, -T - 1 : -1] / temp for m in (student, teacher)
        ]
    return float(reverse_kl(logits[0], logits[1], mask))


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


def _distill_stage(
    cfg: DictConfig,
    name: str,
    settings: Any,
    student: str,
    teacher: str,
    out_dir: Path,
    tracker,
    parent_id: str | None,
    run_name: str,
    tags: dict[str, Any],
    label: str,
    max_steps: int,
    build,
) -> tuple[str | None, Path]:
    """What the TRL distillation stages share: the stage run (params, final metrics, status), the student,
    teacher and tokenizer (the teacher's must be the student's), callbacks, training and the saved model.

    ``build(model, teacher_model, tokenizer)`` returns the trainer; ``name`` keys the settings in the run's
    params and prefixes the errors, ``label`` is the progress line's.
    """
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed

    from crs.progress import RichProgressCallback, fmt
    from crs.tracking import end_status, flatten

    tracker.start(run_name=run_name, parent_run_id=parent_id, tags=tags)
    status, error = "FINISHED", None
    try:
        tracker.log_params(
            flatten(
                {
                    "stage": OmegaConf.to_container(cfg, resolve=True),
                    name: OmegaConf.to_container(settings, resolve=True),
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
            raise RuntimeError(f"{name}: the teacher's tokenizer differs from the student's")
        trainer = build(model, teacher_model, tok)
        trainer.remove_callback(PrinterCallback)
        cb = tracker.callback()
        if cb is not None:
            trainer.add_callback(cb)
        trainer.add_callback(RichProgressCallback(label, stats=lambda s: f"loss {fmt(s.get('loss'))}"))
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
            {f"final/{k}": v for k, v in summary.items() if v is not None}, step=int(max_steps)
        )
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return tracker.run_id, model_dir
    except BaseException as err:
        status, error = end_status(err)
        raise
    finally:
        tracker.end(status, error)


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
    from crs.trainers.args import training_kwargs
    from crs.trainers.gkd import CreditGKDTrainer, gkd_config

    def build(model, teacher_model, tok):
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
        return CreditGKDTrainer(
            model=model,
            teacher_model=teacher_model,
            args=gkd_config(**kw),
            train_dataset=data,
            processing_class=tok,
            estimator=str(settings.estimator),
        )

    label = f"fkl ({settings.estimator}) seed {cfg.seed}"
    return _distill_stage(
        cfg,
        "fkl",
        settings,
        student,
        teacher,
        out_dir,
        tracker,
        parent_id,
        run_name,
        tags,
        label,
        int(settings.max_steps),
        build,
    )


def run_rkl_stage(
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
    """Stage 2b with ``opd.estimator=full_rkl``: :class:`~crs.trainers.distill.CreditDistillationTrainer`
    (full-vocabulary reverse KL on the student's own samples) on ``n_prompts`` prompt-only rows.

    ``cfg`` is the ``on_policy`` stage's ``crs train`` config: its ``trainer.max_steps``, ``lr``,
    ``per_device_train_batch_size`` (student completions per step, one per prompt), gradient accumulation,
    temperature, top-p and completion length are this stage's, so the two estimators run the same budget.
    No checkpoints: a stage killed mid-way runs again from its start (like stage 2a).
    """
    from crs.trainers.args import training_kwargs
    from crs.trainers.distill import CreditDistillationTrainer, distill_config

    def build(model, teacher_model, tok):
        data = unlabeled_prompts(cfg.benchmark, n_prompts, int(cfg.seed))
        t = cfg.trainer
        kw = training_kwargs(cfg, out_dir, None, 0)
        kw.update(
            eval_strategy="no",
            eval_steps=None,
            max_completion_length=int(t.max_completion_length),
            temperature=float(t.temperature),
            top_p=float(t.top_p),
            activation_checkpointing=bool(t.gradient_checkpointing),  # TRL's default is on
        )
        return CreditDistillationTrainer(
            model=model,
            teacher_model=teacher_model,
            args=distill_config(**kw),
            train_dataset=data,
            processing_class=tok,
        )

    label = f"on_policy (full_rkl) seed {cfg.seed}"
    return _distill_stage(
        cfg,
        "rkl",
        settings,
        student,
        teacher,
        out_dir,
        tracker,
        parent_id,
        run_name,
        tags,
        label,
        int(cfg.trainer.max_steps),
        build,
    )
