"""Running a pipeline: stages in order, each an MLflow child of one parent, each skipped when it FINISHED.

A stage's identity is a **content key**: its ``crs train`` overrides, its settings, the seed and the keys
of the models it reads. Its folder is ``<root>/<stage>-<key>`` and holds ``crs_stage.json`` (written
last: status, run id, output model, held-out scores). Rerunning a pipeline therefore skips every stage
whose record says FINISHED and whose model is still there, and passes that model on; a stage killed
mid-way has no record and runs again (an RL/OPD stage through ``crs train``'s own ``resume=auto``, from its
last checkpoint). Because keys are contents, ablation arms share stages: ``skip=[fkl]`` and ``skip=[on_policy]``
reuse the full pipeline's stage 1 (same seed), ``skip=[on_policy]`` its stage 2 too; the reusing parent run
records the reused run ids as tags ``reused.<stage>``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crs.errors import ConfigError
from crs.pipeline.config import STAGES

RECORD = "crs_stage.json"
TEACHER, FKL, OPD, STUDENT_RL = STAGES
STUDENT_STAGES = (FKL, OPD, STUDENT_RL)
# stage 3's held-out labeled set L′ is the benchmark's train split under data_seed = seed + this offset
HELDOUT_LABELS_OFFSET = 7_919


def _key(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage_overrides(p: DictConfig, stage: str) -> list[str]:
    """The stage's ``crs train`` overrides as configured: common, size preset, the stage's own."""
    sized = p.sized or {}
    return [
        *map(str, p.common),
        *map(str, sized.get("common", [])),
        *map(str, (p.stages or {}).get(stage, [])),
        *map(str, sized.get(stage, [])),
        f"seed={p.seed}",
    ]


def _tracking(p: DictConfig) -> list[str]:
    out = [f"tracking.experiment={p.tracking.experiment}"]
    if p.tracking.uri:
        out.append(f"tracking.uri={p.tracking.uri}")
    return out


def compose_stage(p: DictConfig, stage: str, extra: list[str] = ()):
    """The stage's ``crs train`` config (``conf/train.yaml`` + overrides, as ``crs train`` composes it)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from crs.config import register_configs
    from crs.locations import CONF_DIR

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[*stage_overrides(p, stage), *_tracking(p), *extra])


def check(p: DictConfig) -> None:
    """Everything that can be checked before a model loads (one :class:`ConfigError` line)."""
    from crs.config import validate_values
    from crs.methods.chain import CreditChain
    from crs.trainers.gkd import ESTIMATORS

    bad = [s for s in p.skip if s not in STAGES]
    if bad:
        raise ConfigError(f"skip: unknown stage(s) {bad}; stages: {', '.join(STAGES)}")
    if not todo_stages(p):
        raise ConfigError("skip: every stage is skipped (student_rl=true runs the direct-GRPO baseline)")
    if p.fkl.estimator not in ESTIMATORS:
        raise ConfigError(f"fkl.estimator must be one of {', '.join(ESTIMATORS)} (got {p.fkl.estimator!r})")
    from crs.pipeline.config import OPD_ESTIMATORS

    if p.opd.estimator not in OPD_ESTIMATORS:
        raise ConfigError(
            f"opd.estimator must be one of {', '.join(OPD_ESTIMATORS)} (got {p.opd.estimator!r})"
        )
    if p.student_rl_labels not in ("fresh", "replay"):
        raise ConfigError(f"student_rl_labels must be fresh or replay (got {p.student_rl_labels!r})")
    for name, v in (("labeled", p.labeled), ("unlabeled", p.unlabeled), ("fkl.max_steps", p.fkl.max_steps)):
        if int(v) < 1:
            raise ConfigError(f"{name} must be >= 1 (got {v})")
    for stage in STAGES:
        try:
            cfg = compose_stage(p, stage)
        except Exception as err:  # a typo in a stage's overrides
            from crs.errors import one_line

            raise ConfigError(f"stages.{stage}: {one_line(err)}") from None
        validate_values(cfg)
        CreditChain(cfg.method.credit)  # arguments and ranges; the method's own checks run at the stage


def todo_stages(p: DictConfig) -> list[str]:
    """The stages this pipeline runs, in order (``skip`` removed; ``student_rl`` only when asked for)."""
    return [s for s in STAGES if s not in p.skip and (s != STUDENT_RL or p.student_rl)]


def _record(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / RECORD
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    ok = rec.get("status") == "FINISHED" and (Path(rec.get("model", "")) / "config.json").exists()
    return rec if ok else None


def _raw_model(cfg) -> str:
    from crs.assemble import resolve_model_path

    return resolve_model_path(cfg)[0]


class Pipeline:
    """One pipeline run: ``Pipeline(p).run()`` → the final stage's record (module docstring)."""

    def __init__(self, p: DictConfig, console=None):
        self.p = p
        self.root = Path(p.root)
        from crs.progress import console as default_console

        self.console = console or default_console
        self.records: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------------------------------- tracking
    def _tracker(self):
        from crs.tracking import MlflowTracker

        return MlflowTracker(self.p.tracking.uri, self.p.tracking.experiment)

    def arm(self) -> str:
        if self.p.arm:
            return str(self.p.arm)
        skipped = [s for s in STAGES if s in self.p.skip and s != STUDENT_RL]
        if set(skipped) == {TEACHER, FKL, OPD}:
            return "student_grpo"
        rl = "" if not self.p.student_rl else "+rl" if self.p.student_rl_labels == "fresh" else "+rl_replay"
        return ("pipeline" if not skipped else "no_" + "_".join(skipped)) + rl

    def _start_parent(self):
        from crs.tracking import git_sha

        t = self._tracker()
        sweep = dict(self.p.sweep or {})
        resolved = OmegaConf.to_container(self.p, resolve=True)
        key = _key({k: v for k, v in resolved.items() if k != "sweep"})
        # a rerun of the same pipeline (killed, failed) reopens its parent: one parent, every stage a child
        for run in t.find_runs({"crs.role": "pipeline", "crs.pipeline_key": key}):
            if run.info.status != "FINISHED":
                t.reopen(run.info.run_id, {"crs.resumed": "1"})
                return t
        t.start(
            run_name=f"{self.p.name}: {self.arm()} s{self.p.seed}",
            parent_run_id=sweep.get("run_id"),
            tags={
                "crs.role": "pipeline",
                "pipeline": self.p.name,
                "arm": self.arm(),
                "seed": self.p.seed,
                "skip": ",".join(self.p.skip),
                "git_sha": git_sha(),
                "crs.pipeline_key": key,
            },
        )
        from crs.tracking import flatten

        t.log_params(flatten(OmegaConf.to_container(self.p, resolve=True)))
        return t

    # ------------------------------------------------------------------------------------- stages
    def run(self) -> dict[str, Any]:
        p = self.p
        check(p)
        from crs.tracking import end_status

        parent = self._start_parent()
        status, error = "FINISHED", None
        try:
            final = self._run_stages(parent)
            metrics = {k: v for k, v in final.get("heldout", {}).items()}
            parent.log_metrics(metrics, step=0)
            parent.set_tags({"final_stage": final["stage"], "final_run": final.get("run_id") or ""})
            self._report_to_sweep(final)
            return final
        except BaseException as err:
            status, error = end_status(err)
            raise
        finally:
            parent.end(status, error)

    def _run_stages(self, parent) -> dict[str, Any]:
        p = self.p
        todo = todo_stages(p)
        student_cfg = compose_stage(p, FKL)
        teacher_cfg = compose_stage(p, TEACHER)
        student = teacher = None
        if any(s in todo for s in STUDENT_STAGES):
            student = {
                "model": _raw_model(student_cfg),
                "key": "raw:" + _raw_model(student_cfg),
                "stage": "raw",
            }
        if any(s in todo for s in (TEACHER, FKL, OPD)):
            path = _raw_model(teacher_cfg)
            teacher = {"model": path, "key": "raw:" + path, "stage": "raw"}
        from crs.pipeline.plot import raw_name

        for role, raw, cfg in (("student", student, student_cfg), ("teacher", teacher, teacher_cfg)):
            if raw is not None:  # where the stages start from: s2d/raw_<role>/heldout_* on the parent
                scores = self._raw_scores(raw["model"], cfg)
                parent.log_metrics({raw_name(k, role): v for k, v in scores.items()}, step=0)
        final = None
        for stage in todo:
            inputs = {"student": student and student["key"], "teacher": teacher and teacher["key"]}
            rec = self._stage(stage, inputs, student, teacher, parent)
            self.records[stage] = rec
            if stage == TEACHER:
                teacher = rec
            else:
                student = rec
            final = rec
        return final

    def _raw_scores(self, model: str, cfg) -> dict[str, float]:
        """Held-out scores of a model a pipeline starts from, cached in ``<root>/raw-<key>.json``."""
        from crs.pipeline.stages import heldout_eval

        p = self.p
        bench = OmegaConf.to_container(cfg.benchmark, resolve=True)
        payload = {"model": model, "eval": OmegaConf.to_container(p.eval), "seed": p.seed, "benchmark": bench}
        path = self.root / f"raw-{_key({**payload, 'temperature': cfg.trainer.temperature})}.json"
        if path.is_file():
            return json.loads(path.read_text())
        scores = heldout_eval(model, cfg, p.eval, int(p.seed))
        self.root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scores, indent=2))
        return scores

    def _settings(self, stage: str) -> dict[str, Any]:
        p = self.p
        if stage == FKL:
            return {**OmegaConf.to_container(p.fkl), "unlabeled": p.unlabeled}
        if stage == OPD:
            return {**OmegaConf.to_container(p.opd), "unlabeled": p.unlabeled}
        if stage == STUDENT_RL:
            return {"labeled": p.labeled, "labels": p.student_rl_labels}
        return {"labeled": p.labeled}

    def train_overrides(self, stage: str, student: dict | None, teacher: dict | None) -> list[str]:
        """What the runner adds to a ``crs train`` stage: the model it trains (by path), its prompts (L for
        the RL stages, ``unlabeled`` generated ones for OPD) and OPD's teacher. Stage 3 after a bridge trains
        on a held-out labeled set L′ (``student_rl_labels=fresh``: another ``data_seed``); the direct-GRPO
        baseline (a raw student) and the replay control train on the stage-1 set L."""
        p = self.p
        src = teacher if stage == TEACHER else student
        out = [
            f"model.name_or_path={src['model']}",
            f"model.name={'s2d_teacher' if stage == TEACHER else 's2d_student'}",
        ]
        if stage == OPD:
            return out + [
                f"benchmark.n_train={p.unlabeled}",
                f"method.credit.opd.teacher={teacher['model']}",
                f"method.credit.opd.reward={p.opd.reward}",
                "trainer.beta=0.0",
            ]
        out.append(f"benchmark.n_train={p.labeled}")
        if stage == STUDENT_RL and student["stage"] != "raw" and p.student_rl_labels == "fresh":
            out.append(f"data_seed={int(p.seed) + HELDOUT_LABELS_OFFSET}")
        return out

    def stage_dir(self, stage: str, inputs: dict) -> tuple[str, Path]:
        """``(content key, folder)`` of a stage given the keys of the models it reads."""
        p = self.p
        key = _key(
            {
                "stage": stage,
                "overrides": stage_overrides(p, stage),
                "inputs": inputs,
                "settings": self._settings(stage),
                "eval": OmegaConf.to_container(p.eval),
            }
        )
        return key, (self.root / f"{stage}-{key}").resolve()

    def _stage(self, stage: str, inputs: dict, student, teacher, parent) -> dict[str, Any]:
        p = self.p
        key, stage_dir = self.stage_dir(stage, inputs)
        rec = _record(stage_dir)
        if rec is not None:
            self.console.print(
                f"crs pipeline: stage {stage} already FINISHED (run {rec.get('run_id')}); reused"
            )
            parent.set_tags({f"reused.{stage}": rec.get("run_id") or ""})
            return rec
        self.console.print(f"crs pipeline: stage {stage} ({stage_dir.name})")
        stage_dir.mkdir(parents=True, exist_ok=True)
        extra = [f"paths.output_dir={stage_dir / 'job'}", "trainer.save_model=true", *_tracking(p)]
        tags = {
            "crs.role": "stage",
            "crs.stage": stage,
            "crs.stage_key": key,
            "pipeline": p.name,
            "mlflow.parentRunId": parent.run_id or "",
        }
        distill = {FKL: ("fkl", "fkl", p.fkl)}  # the TRL distillation stages: (run name, method, settings)
        if p.opd.estimator == "full_rkl":
            distill[OPD] = ("rkl", "full_rkl", p.opd)
        if stage in distill:
            from crs.pipeline import stages as runners

            short, method, settings = distill[stage]
            cfg = compose_stage(p, stage, extra)
            run = runners.run_fkl_stage if stage == FKL else runners.run_rkl_stage
            run_id, model = run(
                cfg,
                settings,
                student["model"],
                teacher["model"],
                stage_dir,
                int(p.unlabeled),
                self._tracker(),
                parent.run_id,
                f"{short}·s{p.seed}",
                {**tags, "method": method, "model": "s2d_student", "seed": p.seed},
            )
        else:
            cfg = compose_stage(p, stage, extra + self.train_overrides(stage, student, teacher))
            from crs.pipeline.stages import run_train_stage

            run_id, model = run_train_stage(cfg)
        from crs.pipeline.stages import heldout_eval

        heldout = heldout_eval(str(model), cfg, p.eval, int(p.seed))
        if stage in STUDENT_STAGES and teacher is not None:  # condition C2 before and after the stage
            from crs.pipeline.stages import kl_student_teacher

            def kl(path) -> float:
                return kl_student_teacher(str(path), teacher["model"], cfg, p.eval, int(p.seed))

            # the input's KL is the previous student stage's output KL (same teacher, prompts and seed)
            before = (student.get("heldout") or {}).get("s2d/kl_student_teacher")
            heldout["s2d/kl_student_teacher_in"] = before if before is not None else kl(student["model"])
            heldout["s2d/kl_student_teacher"] = kl(model)
        if run_id:
            t = self._tracker()
            t.connect()
            t.run_id = run_id
            t.log_metrics(heldout, step=int(p.fkl.max_steps if stage == FKL else cfg.trainer.max_steps))
            t.tag_run(
                run_id, {**tags, "s2d.labeled_used": p.labeled if stage in (TEACHER, STUDENT_RL) else 0}
            )
        rec = {
            "stage": stage,
            "status": "FINISHED",
            "run_id": run_id,
            "model": str(model),
            "key": key,
            "inputs": inputs,
            "heldout": heldout,
        }
        (stage_dir / RECORD).write_text(json.dumps(rec, indent=2))
        self.console.print(
            f"crs pipeline: stage {stage} done: " + ", ".join(f"{k} {v:.3f}" for k, v in heldout.items())
        )
        return rec

    def _report_to_sweep(self, final: dict[str, Any]) -> None:
        """In a comparison, the final stage's run is the arm's job run: tags ``sweep_id``, ``sweep.arm``."""
        sweep = dict(self.p.sweep or {})
        if not sweep.get("sweep_id") or not final.get("run_id"):
            return
        t = self._tracker()
        t.tag_run(
            final["run_id"],
            {
                "crs.role": "job",
                "sweep_id": sweep["sweep_id"],
                "sweep.arm": self.arm(),
                "arm": self.arm(),
                "seed": self.p.seed,
            },
        )
