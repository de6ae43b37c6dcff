"""``crs train``: GRPO on a verifiable task with a credit method and a temporal schedule.

A thin ``@hydra.main`` (so ``-m`` sweeps, ``--cfg job`` and launchers work) over a plain
:func:`train` that tests call directly. One job = one MLflow run::

    crs train                                         # GRPO on the embedded default (builds it once)
    crs train method=tp_schedule schedule=linear      # the paper's TP-Schedule
    crs train -m method=grpo,tp_schedule schedule=linear seed=0,1,2 hydra/launcher=local

Order of work, so bad input fails fast and nothing is lost: validate the config and the resources
(model path, data files, tracking store; one error line, no model loaded) → decide whether to resume
(``resume=auto``: the unfinished run with this exact config, crs/runs/checkpoint.py) → open or reopen
the MLflow run, hold the run folder's lock, start the heartbeat → build the benchmark → load or build
the model → train with a rich progress bar, checkpoints and non-finite guards → evaluate → log summary,
samples and heatmaps → close the run with its status in a ``finally`` (FINISHED / FAILED / KILLED; a
signal or a crash still writes the samples and a partial summary).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from crs.assemble import _sample_steps, grpo_args, load_model, resolve_model_path, set_threads
from crs.config import register_configs, validate
from crs.errors import ConfigError
from crs.locations import CONF_DIR
from crs.quiet import quiet, quiet_env  # noqa: F401  (re-exported for scripts)
from crs.runs import signals
from crs.runs.signals import JobKilled  # noqa: F401  (re-exported)
from crs.summary import _heatmap_histories, save_partial, summarize


def _hydra_context() -> dict[str, Any]:
    """What Hydra knows about this job (empty when train() is called without @hydra.main)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    ctx: dict[str, Any] = {
        "choices": dict(hc.runtime.choices),
        "output_dir": hc.runtime.output_dir,
        "multirun": str(hc.mode) == "RunMode.MULTIRUN",
        "overrides": list(hc.overrides.task),
        "launcher": OmegaConf.to_container(hc.launcher, resolve=False) if "launcher" in hc else {},
    }
    if ctx["multirun"]:
        ctx["sweep_dir"] = hc.sweep.dir
        ctx["job_num"] = hc.job.num
    return ctx


def data_seed(cfg: DictConfig) -> int:
    """Seed of the training prompts: ``data_seed`` if set, else the run's ``seed`` (conf/train.yaml)."""
    ds = cfg.get("data_seed")
    return int(cfg.seed if ds is None else ds)


def _run_name(cfg: DictConfig, ctx: dict[str, Any], parent: dict[str, Any] | None) -> str:
    from crs.naming import run_name

    return run_name(cfg, ctx, parent)  # tp_schedule·linear·s0 (crs/naming.py)


def _tags(cfg: DictConfig, ctx: dict[str, Any], parent: dict[str, Any] | None) -> dict[str, Any]:
    from crs.tracking import git_sha, versions

    choices = ctx.get("choices", {})
    tags = {
        "method": choices.get("method", cfg.method.name),
        "schedule": choices.get("schedule", cfg.schedule.name),
        "loss": choices.get("loss", cfg.trainer.loss_type),
        "model": cfg.model.name,  # a user-set name says more than the option it started from
        "benchmark": choices.get("benchmark", cfg.benchmark.name),
        "seed": cfg.seed,
        "git_sha": git_sha(),
        "crs.role": "job",
    }
    from crs.naming import job_tags

    tags.update(job_tags(cfg, ctx))  # schedule=none and drives=… for the UI's comparison columns
    if choices.get("experiment"):
        tags["experiment"] = choices["experiment"]
    if cfg.get("tags"):
        tags["tags"] = ",".join(map(str, cfg.tags))
    tags.update({f"version.{k}": v for k, v in versions().items()})
    tags.update(_sweep_tags(ctx, parent))
    return tags


def _sweep_tags(ctx: dict[str, Any], parent: dict[str, Any] | None) -> dict[str, Any]:
    if parent is None:
        return {}
    tags = {
        "sweep_id": parent["sweep_id"],
        "job_num": ctx.get("job_num"),
        "overrides": " ".join(ctx.get("overrides", [])),
    }
    swept = set(parent.get("swept_keys", []))
    for ov in ctx.get("overrides", []):
        key, _, value = ov.lstrip("+~").partition("=")
        if key in swept:
            tags[f"sweep.{key}"] = value
    return tags


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by a composed config; returns the summary dict."""
    from crs.runs.distributed import adopt_slurm_tasks
    from crs.runs.preflight import check_resources

    adopt_slurm_tasks()  # a SLURM job's tasks are its processes (crs/runs/distributed.py)
    credit = validate(cfg)  # one clear error before anything heavy happens; the run's credit chain
    check_resources(cfg)  # model path, data files, tracking store
    quiet()
    from crs.progress import console
    from crs.runs.distributed import Processes, drop_own_folder
    from crs.trainers.args import wants_cuda

    procs = Processes.from_env()  # several processes (torchrun, accelerate launch): rank 0 owns the run
    procs.start(use_cpu=not wants_cuda(cfg))
    if not procs.main:
        console.quiet = True
    ctx = _hydra_context()
    own_dir = Path(ctx.get("output_dir") or cfg.paths.output_dir)
    output_dir = procs.share(own_dir)  # every process works in rank 0's folder
    if not procs.main:
        drop_own_folder(own_dir, output_dir)
    from crs.runs.checkpoint import plan_resume, run_key
    from crs.runs.liveness import Heartbeat, identity_tags
    from crs.runs.lock import RunLock
    from crs.runs.redact import redact_files, redact_text
    from crs.sweep import read_parent
    from crs.tracking import build_tracker, end_status, flatten

    parent = read_parent(ctx.get("sweep_dir")) if ctx.get("multirun") else None
    tcfg = cfg.tracking
    if parent is not None and tcfg.name != "none":
        # jobs of a sweep always log where the parent run lives (keeping this job's own credentials)
        OmegaConf.set_struct(cfg, False)
        if redact_text(str(cfg.tracking.uri)) != parent["uri"]:
            cfg.tracking.uri = parent["uri"]
        cfg.tracking.experiment = parent["experiment"]
        OmegaConf.set_struct(cfg, True)
    from crs.naming import duplicate_of, record_skip

    duplicate = duplicate_of(cfg, ctx, parent)
    if duplicate is not None:  # a schedule that drives nothing: the grid cell collapses (crs/naming.py)
        if procs.main:
            record_skip(ctx["sweep_dir"], ctx.get("job_num"), list(ctx.get("overrides", [])), duplicate)
            print(f"crs: skipped duplicate job {ctx.get('job_num')}: {duplicate}", flush=True)
        return {"skipped": duplicate}
    tracker = build_tracker(cfg.tracking if procs.main else {"name": "none"})
    key = run_key(cfg)
    plan = procs.share(
        plan_resume(cfg, tracker, output_dir, key, bool(ctx.get("multirun"))) if procs.main else None
    )
    # a relaunched sweep adopts the runs it resumes or skips, so its parent counts every job
    adopt = {**_sweep_tags(ctx, parent), "mlflow.parentRunId": parent["run_id"]} if parent else {}
    if plan.skip is not None:
        if adopt:
            tracker.tag_run(plan.skip["run_id"], adopt)
        console.print(
            f"crs: skipped: this config already FINISHED as run {plan.skip['run_id']} ({plan.skip['run_name']}); "
            "resume=never trains it again"
        )
        return {"skipped": True, "mlflow_run_id": plan.skip["run_id"]}
    if plan.note:
        console.print(f"crs: {plan.note}")
    home = plan.home
    run_lock = RunLock(home)
    if procs.main:
        output_dir.mkdir(parents=True, exist_ok=True)
        redact_files(output_dir / ".hydra")  # Hydra wrote the overrides there verbatim
        if not run_lock.acquire():
            raise ConfigError(f"the run folder {home} is held by another live crs process")
    tags = {**identity_tags(str(home)), "crs.run_key": key}
    if plan.run_id is not None:
        resumed = int(plan.marker.get("resumed", 0)) + 1
        tracker.reopen(
            plan.run_id,
            {**tags, **adopt, "crs.resumed": resumed, "crs.resumed_from_step": plan.marker["step"]},
        )
        plan.marker["resumed"] = resumed
    else:
        tracker.start(
            run_name=_run_name(cfg, ctx, parent),
            parent_run_id=parent["run_id"] if parent else None,
            tags={**_tags(cfg, ctx, parent), **tags},
        )
    if plan.dead is not None and procs.main:  # a ghost of this job: close it, pointing at this run
        tracker.close_other(
            plan.dead["run_id"],
            "KILLED",
            {"error": f"KILLED: {plan.dead['reason']}", "crs.replaced_by": tracker.run_id or ""},
        )
    if plan.resuming:
        console.print(
            f"crs: resuming run {tracker.run_id or '(untracked)'} from {plan.checkpoint} "
            f"(step {plan.marker['step']}/{cfg.trainer.max_steps})"
        )
    heartbeat = Heartbeat(tracker, float(cfg.runs.heartbeat_s))
    if procs.main:
        heartbeat.start()
    status, error = "FINISHED", None
    previous = signals.install()  # kill signals → JobKilled, held during store writes (crs/runs/signals.py)
    t0 = time.time()
    try:
        if not plan.resuming:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            tracker.log_params(flatten(resolved))
            tracker.log_artifacts(output_dir / ".hydra", "hydra")
        else:
            tracker.log_artifacts(output_dir / ".hydra", f"hydra/resume-{plan.marker['resumed']}")
        summary = _train(cfg, ctx, tracker, home, t0, plan, key, credit)
        if not cfg.runs.keep_on_finish:
            import shutil

            shutil.rmtree(home / "checkpoints", ignore_errors=True)
        return summary
    except BaseException as err:
        status, error = end_status(err)
        if status == "FAILED":
            _record_nonfinite(tracker, err)
        raise
    finally:
        heartbeat.stop()
        with signals.shielded(raise_held=False):  # a second Ctrl-C must not leave the run RUNNING
            _close_run(tracker, status, error)
        signals.restore(previous)
        run_lock.release()


def _close_run(tracker, status: str, error: str | None, tries: int = 3) -> None:
    """Close the MLflow run with its status; a busy sqlite file (other jobs writing) gets a few more tries.
    If the store is gone, say so on stderr — never hang or mask the real error."""
    for attempt in range(tries):
        try:
            tracker.end(status, error)
            return
        except Exception as err:
            if attempt == tries - 1:
                print(
                    f"crs: could not close the MLflow run as {status} ({type(err).__name__}: {err}); "
                    "`crs runs clean` will",
                    file=sys.stderr,
                )
            else:
                time.sleep(1.0 + attempt)


def _record_nonfinite(tracker, err: BaseException) -> None:
    """A NaN/inf stop: log the quantity at its step (MLflow keeps NaN/inf values) and tag it."""
    from crs.runs.guard import NonFiniteError

    if not isinstance(err, NonFiniteError):
        return
    try:
        value = err.value if err.value is not None else float("nan")
        tracker.log_metrics({f"nonfinite/{err.quantity}": value}, step=err.step)
        tracker.set_tags({"crs.nonfinite": f"{err.quantity}@{err.step}"})
    except Exception:
        pass


def _train(
    cfg: DictConfig,
    ctx: dict[str, Any],
    tracker,
    output_dir: Path,
    t0: float,
    plan=None,
    key: str = "",
    credit=None,
) -> dict[str, Any]:
    import torch
    from transformers import PrinterCallback, set_seed

    from crs.benchmarks import build_benchmark
    from crs.progress import RichProgressCallback, console, summary_table
    from crs.runs.distributed import Processes
    from crs.schedules import schedule_from_cfg, warn_if_short

    procs = Processes.from_env()
    main = procs.main
    threads = set_threads(cfg, ctx)
    set_seed(cfg.seed)
    bench = build_benchmark(cfg.benchmark, data_seed(cfg))
    credit = credit if credit is not None else validate(cfg)  # built once per run
    if cfg.trainer.kind == "dpo":  # the embedded model's contrastive warm start (crs/prefs/warmstart.py)
        from crs.trainers.dpo import dpo_model_path

        model_path, pretrain_report = dpo_model_path(cfg, credit)
    else:
        model_path, pretrain_report = resolve_model_path(cfg)
    if pretrain_report is not None:
        tracker.log_dict(pretrain_report, "model/pretrain_report.json")
    set_seed(cfg.seed)
    model, tokenizer = load_model(cfg, model_path)
    if cfg.trainer.kind == "dpo":  # TRL DPOTrainer on preference pairs (crs/trainers/dpo.py, crs/prefs)
        from crs.trainers.dpo import build_dpo_trainer

        trainer, args, eval_ds = build_dpo_trainer(
            cfg,
            model,
            tokenizer,
            bench,
            model_path,
            output_dir,
            credit,
            schedule_from_cfg(cfg.schedule),
            tracker,
        )
    else:
        trainer, args, eval_ds = _grpo_trainer(
            cfg, model, tokenizer, bench, model_path, output_dir, tracker, credit
        )
    trainer.remove_callback(PrinterCallback)
    cb = tracker.callback()
    if cb is not None:
        trainer.add_callback(cb)
    from crs.runs.checkpoint import checkpoint_callback, restore_crs_state
    from crs.runs.guard import CollapseWatch, install_guards

    if cfg.runs.check_finite:
        install_guards(trainer)
    vocab = getattr(model.config, "vocab_size", None) or len(tokenizer)
    trainer.add_callback(CollapseWatch(vocab, cfg.runs.collapse_steps, tracker, console).callback())
    ckpt_state: dict[str, Any] = {}
    if plan is not None:
        if plan.resuming:
            restore_crs_state(trainer, plan.marker)
            ckpt_state["start_eval"] = plan.marker.get("start_eval")
            ckpt_state["resumed"] = plan.marker.get("resumed", 0)
        trainer.add_callback(checkpoint_callback(trainer, plan, key, cfg.runs.keep, tracker, ckpt_state))
    from crs.naming import driven_knobs

    knobs = driven_knobs(credit)
    choices = ctx.get("choices", {})
    schedule = choices.get("schedule", cfg.schedule.name) if knobs else "none"
    title = f"{choices.get('method', cfg.method.name)} × {schedule} (seed {cfg.seed})"
    trainer.add_callback(RichProgressCallback(title, show_rho=bool(knobs)))
    warn_if_short(cfg, knobs, trainer, title, print)  # a run too short for its schedule: one line
    if cfg.get("inject_failure_at_step") is not None:
        trainer.add_callback(_inject_failure(int(cfg.inject_failure_at_step)))
    console.print(
        f"[bold]crs[/bold] {title}: model {cfg.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), "
        f"benchmark {cfg.benchmark.name} ({len(bench.train)} train / {len(eval_ds)} eval prompts), "
        f"{cfg.trainer.max_steps} steps, device {'cuda' if not args.use_cpu else 'cpu'} × {threads} threads, "
        f"{'bf16' if args.bf16 else 'fp16' if args.fp16 else 'fp32'}, generation {cfg.trainer.generation}"
        + (f", world {procs.world} processes" if procs.world > 1 else "")
    )
    t_train = time.time()
    start_eval = ckpt_state.get("start_eval")
    if cfg.trainer.eval_on_start and not (plan is not None and plan.resuming):
        # Trainer.train() starts a fresh TrainerState, so keep this evaluation for the summary ourselves
        start_eval = {**trainer.evaluate(), "step": 0}
        ckpt_state["start_eval"] = start_eval
    try:
        trainer.train(
            resume_from_checkpoint=str(plan.checkpoint) if plan is not None and plan.resuming else None
        )
    except BaseException as err:
        if main:
            save_partial(trainer, tracker, output_dir, start_eval, t0, err)
        raise
    if cfg.trainer.eval_steps == 0 or cfg.trainer.max_steps % cfg.trainer.eval_steps:
        trainer.evaluate()  # the final evaluation, unless the periodic one already landed on the last step
    history = ([start_eval] if start_eval else []) + list(trainer.state.log_history)
    summary = summarize(history, time.time() - t0)
    summary["train_time_s"] = (
        time.time() - t_train
    )  # training + evaluations, without building/loading the model
    from crs.runs.redact import redact_text

    summary.update(
        {
            "mlflow_run_id": tracker.run_id,
            "mlflow_uri": redact_text(tracker.uri) if tracker.uri else None,
            "output_dir": str(output_dir),
        }
    )
    if ckpt_state.get("resumed"):
        summary["resumed"] = ckpt_state["resumed"]
    final = {
        f"final/{k}": v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    tracker.log_metrics(final, step=trainer.state.global_step)
    tracker.log_dict(summary, "summary.json")
    if main:  # one folder for the job (crs/runs/distributed.py): rank 0 writes it
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if "log_artifacts" in bench.info:  # an environment's own artifacts (orchestra: samples/traces.jsonl)
        bench.info["log_artifacts"](tracker, output_dir if main else None)
    if trainer.samples:
        tracker.log_dict(trainer.samples, "samples/rollouts.json")
        if main:
            (output_dir / "samples.json").write_text(json.dumps(trainer.samples, indent=2, default=str))
    if main and cfg.diagnostics.heatmap and cfg.diagnostics.every > 0:
        from crs.diagnostics import draw_heatmaps

        paths = draw_heatmaps(
            _heatmap_histories(trainer.state.log_history, cfg.diagnostics.bins), output_dir / "plots", title
        )
        if paths:
            tracker.log_artifacts(output_dir / "plots", "plots")
    if cfg.trainer.save_model:
        trainer.save_model(str(output_dir / "model"))
    console.print(summary_table(summary, title))
    del trainer, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return summary


def _grpo_trainer(cfg, model, tokenizer, bench, model_path, output_dir, tracker, credit):
    """The run's CreditGRPOTrainer (crs/trainers/grpo.py); returns ``(trainer, args, eval_ds)``."""
    from crs.schedules import schedule_from_cfg
    from crs.trainers import trainer_class

    args = grpo_args(cfg, output_dir, n_params=sum(p.numel() for p in model.parameters()))
    if not args.use_cpu:
        from crs.precision import configure_cuda_attention

        configure_cuda_attention(cfg.trainer.cudnn_attention)
    tracker.log_dict(json.loads(args.to_json_string()), "config/grpo_config.json")
    reward_funcs = list(bench.reward_funcs)
    if cfg.trainer.soft_overlong_cache:
        from trl.rewards import get_soft_overlong_punishment

        reward_funcs.append(
            get_soft_overlong_punishment(cfg.trainer.max_completion_length, cfg.trainer.soft_overlong_cache)
        )
    peft_config = None
    if cfg.model.lora.enabled:
        from peft import LoraConfig

        lora = cfg.model.lora
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
    eval_ds = bench.eval.select(range(min(cfg.trainer.eval_prompts, len(bench.eval))))
    from crs.steps.hook import StepHook

    credit = credit if credit is not None else validate(cfg)  # built once per run
    step_hook = StepHook(credit, cfg.method.steps, bench, tokenizer, model_path, cfg.paths.cache_dir)
    rollouts = None
    for method, _ in credit.hooked("rollouts"):  # a method that generates its own rollouts (R³L)
        rollouts = method.rollouts(
            credit, cfg.method.steps, bench, tokenizer, model_path, cfg.paths.cache_dir
        )
    trainer = trainer_class(cfg.trainer.kind)(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=bench.train,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        credit=credit,
        step_hook=step_hook,
        schedule=schedule_from_cfg(cfg.schedule),
        filter_zero_std_groups=cfg.trainer.filter_zero_std_groups,
        diagnostics_every=cfg.diagnostics.every,
        diagnostics_bins=cfg.diagnostics.bins,
        diagnostics_kl=cfg.diagnostics.kl,
        sample_steps=_sample_steps(cfg.trainer.max_steps, cfg.tracking.sample_steps),
        sample_size=cfg.tracking.sample_size,
        environment_factory=bench.info.get("environment_factory"),  # multi-turn benchmarks (crs/envs)
        generation=cfg.trainer.generation,
        opmd_tau=cfg.trainer.opmd_tau if cfg.trainer.loss_type == "opmd" else None,
        rollouts=rollouts,
    )
    return trainer, args, eval_ds


def _inject_failure(step: int):
    """A callback that raises at ``step``: shows a failing job ends FAILED while the rest of a sweep goes on."""
    from transformers import TrainerCallback

    class InjectFailure(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise RuntimeError(
                    f"injected failure at step {state.global_step} (inject_failure_at_step={step})"
                )

    return InjectFailure()


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point. In a single run a ConfigError prints one line and exits 2; in a sweep it raises
    so Hydra records the failed job and the other jobs still run."""
    from hydra.core.hydra_config import HydraConfig

    multirun = str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
    try:
        summary = train(cfg)
    except ConfigError as err:
        if multirun:
            raise
        from crs.progress import error_line

        error_line(str(err))
        sys.exit(2)
    except KeyboardInterrupt as err:
        if multirun:
            raise
        from crs.progress import error_line

        signum = getattr(err, "signum", signal.SIGINT)
        error_line(
            f"run KILLED by {signal.Signals(signum).name}; samples and summary kept; "
            "the same command resumes it from its last checkpoint (resume=auto)"
        )
        sys.exit(128 + int(signum))
    except Exception as err:
        from crs.runs.guard import NonFiniteError
        from crs.tracking import TrackingError

        if multirun or not isinstance(err, NonFiniteError | TrackingError):
            raise
        from crs.progress import error_line
        from crs.runs.redact import redact_text

        extra = (
            "; the run is FAILED, its last good checkpoint kept" if isinstance(err, NonFiniteError) else ""
        )
        error_line(redact_text(f"{err}{extra}"))
        sys.exit(1)
    return summary.get("eval_accuracy_end")
