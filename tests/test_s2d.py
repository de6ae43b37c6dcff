"""Sparse-to-dense golden tests (../shared/docs/methods-wave3.md §3.7, docs/s2d.md).

S1–S5 check the stage losses' numbers (KL/JSD against TRL's own ``GKDTrainer.generalized_jsd_loss``),
S4 the IW-OPD weights against TRL's ``IWOPDTrainer._compute_iw_opd_loss``, S6 that the distillation
stages read no label, S7 that crs's ``sampled_pg`` OPD (GRPO loss with ``[B,T]`` advantages ``a_t``,
one PPO epoch, on-policy) has exactly IW-OPD γ=0's gradient on a real rollout. Also: the wired GKD
trainer is the *forward* KL, the teacher config keeps the default student's cache key, bad pipeline
input is one line, and (slow) the debug pipeline end to end, killed in stage 2 and resumed there.

    python -m pytest tests/test_s2d.py -q
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl.experimental.gkd import GKDTrainer
from trl.experimental.iw_opd import IWOPDTrainer

from crs.credit.method import CreditBatch
from crs.errors import ConfigError
from crs.methods.opd import METHOD as OPD
from crs.methods.opd import TEACHER_FEATURE, iw_position_weights, opd_advantages

P_T = torch.tensor([0.7, 0.2, 0.1])
P_S = torch.tensor([0.5, 0.3, 0.2])


def _jsd(beta: float, p_s=P_S, p_t=P_T) -> float:
    """TRL's generalised JSD on one position (logits = log-probs)."""
    return float(GKDTrainer.generalized_jsd_loss(p_s.log().view(1, 1, 3), p_t.log().view(1, 1, 3), beta=beta))


# --------------------------------------------------------------------------------------------- S1–S5
def test_s1_kl_and_jsd_equal_trl():
    fkl = float((P_T * (P_T.log() - P_S.log())).sum())
    rkl = float((P_S * (P_S.log() - P_T.log())).sum())
    assert fkl == pytest.approx(0.085123, abs=1e-6) and rkl == pytest.approx(0.092033, abs=1e-6)
    assert _jsd(0.0) == pytest.approx(0.085123, abs=1e-6)  # beta 0 = forward KL(π_T‖π_S): stage 2a
    assert _jsd(1.0) == pytest.approx(0.092033, abs=1e-6)  # beta 1 = reverse KL
    assert _jsd(0.5) == pytest.approx(0.021901, abs=1e-6)


def test_s2_sampled_token_advantages():
    a = opd_advantages(P_T.log()[[0, 2]].view(1, 2), P_S.log()[[0, 2]].view(1, 2), torch.ones(1, 2))
    torch.testing.assert_close(a, torch.tensor([[0.336472, -0.693147]]), atol=1e-6, rtol=0)


def test_s3_sampled_estimator_is_unbiased_for_reverse_kl():
    a = opd_advantages(P_T.log().view(1, 3), P_S.log().view(1, 3), torch.ones(1, 3))
    expected = float(-(P_S * a[0]).sum())  # E_{y~p_S}[log p_S(y) − log p_T(y)]
    assert expected == pytest.approx(0.092033, abs=1e-6) == _jsd(1.0)


def _iw_trl(gamma: float, student_logits, tokens, teacher_lp):
    """TRL's IW-OPD loss, its own code, with the few trainer attributes it reads."""
    me = SimpleNamespace(
        temperature=1.0,
        iw_opd_gamma=gamma,
        iw_opd_epsilon=1e-8,
        model=SimpleNamespace(training=True),
        _metrics={"train": defaultdict(list)},
    )
    labels = torch.zeros_like(tokens)
    return IWOPDTrainer._compute_iw_opd_loss(me, student_logits, tokens, labels, teacher_lp)


def test_s4_iw_opd_weights_equal_trl():
    a = torch.tensor([[0.336472, -0.693147]])
    w = iw_position_weights(a, torch.ones(1, 2), 0.5)
    torch.testing.assert_close(w, torch.tensor([[1.5, 1.336604]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w * a, torch.tensor([[0.504708, -0.926463]]), atol=1e-6, rtol=0)
    assert torch.equal(iw_position_weights(a, torch.ones(1, 2), 0.0), torch.ones(1, 2))
    # the crs step with iw_gamma gives TRL's weighted advantage: same loss −Σ log π_S · w·a / n
    logits = torch.log(torch.stack([P_S, P_S])).unsqueeze(0).requires_grad_(True)
    tokens = torch.tensor([[0, 2]])
    t_lp = P_T.log()[[0, 2]].view(1, 2)
    lp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    batch = CreditBatch(
        advantages=torch.zeros(1), mask=torch.ones(1, 2), features={TEACHER_FEATURE: t_lp}, logps=lp.detach()
    )
    ours = OPD.fn(batch, iw_gamma=0.5).advantages
    torch.testing.assert_close(-(lp * ours).sum() / 2, _iw_trl(0.5, logits, tokens, t_lp))


def test_s5_student_equal_teacher_gives_nothing():
    lp = P_S.log().view(1, 3)
    batch = CreditBatch(
        advantages=torch.ones(1), mask=torch.ones(1, 3), features={TEACHER_FEATURE: lp}, logps=lp
    )
    out = OPD.fn(batch)
    assert torch.count_nonzero(out.advantages) == 0  # a_t = 0 everywhere: no update
    assert _jsd(0.0, P_S, P_S) == 0.0 and _jsd(1.0, P_S, P_S) == 0.0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_teacher_logps_are_the_teachers_at_the_sampling_temperature(temperature, tiny_model_dir, teacher_dir):
    """``opd_teacher_logp`` = log softmax(teacher logits / T) of each sampled completion token, zero on
    padding, scored as TRL scores the student (at the rollout's temperature); the student's vocabulary
    must be the teacher's."""
    from transformers import AutoModelForCausalLM

    from crs.methods.opd import TeacherLogps

    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trainer = SimpleNamespace(model=student, temperature=temperature, _metrics={"train": defaultdict(list)})
    g = torch.Generator().manual_seed(0)
    V = student.config.vocab_size
    out = {
        "prompt_ids": torch.randint(3, V, (2, 4), generator=g),
        "prompt_mask": torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]),
        "completion_ids": torch.randint(3, V, (2, 3), generator=g),
        "completion_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
    }
    hook = TeacherLogps(teacher_dir)
    lp = hook.features(trainer, out, torch.zeros(2), 1.0)[TEACHER_FEATURE]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    with torch.no_grad():
        logits = teacher(input_ids=ids, attention_mask=attn).logits[:, 3:6] / temperature
    want = torch.log_softmax(logits, -1).gather(-1, out["completion_ids"][..., None]).squeeze(-1)
    want = want * out["completion_mask"]
    torch.testing.assert_close(lp, want, rtol=1e-5, atol=1e-6)
    assert lp[0, 2] == 0 and (lp[out["completion_mask"].bool()] < 0).all()
    m = out["completion_mask"].float()
    assert trainer._metrics["train"]["s2d/teacher_logp"] == [pytest.approx(float((want * m).sum() / m.sum()))]
    trainer.model = SimpleNamespace(
        parameters=student.parameters,
        config=SimpleNamespace(get_text_config=lambda: SimpleNamespace(vocab_size=V + 1)),
    )
    with pytest.raises(ConfigError, match="differs from the student's"):
        TeacherLogps(teacher_dir).features(trainer, out, torch.zeros(2), 1.0)


def test_opd_leaves_eval_batches_alone():
    batch = CreditBatch(advantages=torch.ones(2), mask=torch.ones(2, 3), logps=torch.zeros(2, 3))
    assert OPD.fn(batch) is batch  # no teacher feature outside training rollouts


# ---------------------------------------------------------------------------------------------- S6
class _PromptOnly(dict):
    """A row that fails the test on any key but ``prompt`` (a label read would be a KeyError here)."""

    def __getitem__(self, key):
        if key != "prompt":
            raise AssertionError(f"stage read column {key!r}")
        return super().__getitem__(key)


def test_s6_distillation_data_has_no_labels_and_collation_reads_none(tiny_model_dir):
    import random

    from transformers import AutoTokenizer

    from crs.pipeline.stages import unlabeled_prompts
    from crs.trainers.gkd import PromptCollator

    ds = unlabeled_prompts({"name": "arithmetic"}, 16, seed=0)
    assert ds.column_names == ["prompt"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    collate = PromptCollator(tok)
    rng = random.Random(0)
    for _ in range(20):  # property: whatever the answers say, the batch is the same, and none is read
        rows = [dict(r) for r in ds.select(rng.sample(range(16), 4))]
        labelled = [{**r, "answer": str(rng.randint(-99, 99)), "completion": "x"} for r in rows]
        a = collate([_PromptOnly(r) for r in labelled])
        b = collate(rows)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert (a["labels"] == -100).all()  # the teacher writes the completion (seq_kd)


def test_s6_opd_advantage_ignores_reward():
    g = torch.Generator().manual_seed(0)
    t, s = -torch.rand(4, 5, generator=g), -torch.rand(4, 5, generator=g)
    outs = [
        OPD.fn(
            CreditBatch(advantages=adv, mask=torch.ones(4, 5), features={TEACHER_FEATURE: t}, logps=s)
        ).advantages
        for adv in (torch.randn(4, generator=g), torch.zeros(4))  # GRPO's reward-based advantages
    ]
    assert torch.equal(outs[0], outs[1])


# ------------------------------------------------------------------------------------ GKD wiring
def test_gkd_trainer_loss_is_forward_kl_on_teacher_tokens(tiny_model_dir, teacher_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.trainers.gkd import CreditGKDTrainer, gkd_config

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    args = gkd_config(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to="none",
        max_new_tokens=6,
        bf16=False,
    )
    tr = CreditGKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_dict({"prompt": ["Q: 3+4\nA:", "Q: 12-5\nA:"]}),
    )
    assert (tr.lmbda, tr.seq_kd, tr.beta) == (0.0, True, 0.0)
    ids = torch.tensor([[5, 6, 7, 8, 9], [6, 7, 8, 9, 10]])
    labels = ids.clone()
    labels[:, :2] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    loss = tr.compute_loss(tr.model, inputs)
    with torch.no_grad():
        ls = torch.log_softmax(student(input_ids=ids).logits[:, :-1], -1)
        lt = torch.log_softmax(teacher(input_ids=ids).logits[:, :-1], -1)
    m = labels[:, 1:] != -100
    fkl = (lt.exp() * (lt - ls)).sum(-1)[m].mean()  # KL(π_T ‖ π_S) per completion position
    rkl = (ls.exp() * (ls - lt)).sum(-1)[m].mean()
    assert float(loss) == pytest.approx(float(fkl), rel=1e-5)
    assert abs(float(fkl) - float(rkl)) > 1e-4  # the two directions differ here, so a swap is caught
    tr.estimator = "sampled"  # SFT on the teacher's tokens: the student's cross-entropy on them
    ce = -ls.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)[m].mean()
    assert float(tr.compute_loss(tr.model, inputs)) == pytest.approx(float(ce), rel=1e-5)


# ---------------------------------------------------------------------------------------------- S7
def test_s7_sampled_pg_gradient_equals_iw_opd_gamma0(tiny_model_dir, teacher_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.methods.chain import CreditChain
    from crs.testing import cpu_grpo_config
    from crs.trainers.grpo import CreditGRPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    chain = CreditChain({"opd": {"teacher": teacher_dir}})
    tr = CreditGRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=[lambda completion_ids, **kw: [float(sum(c) % 3) for c in completion_ids]],
        args=cpu_grpo_config(tmp_path, loss_type="dapo"),
        train_dataset=Dataset.from_dict({"prompt": ["Q: 3+4-2\nA:", "Q: 10+5-7\nA:"]}),
        processing_class=tok,
        credit=chain,
        schedule=lambda p: 1.0,
        rollouts=OPD.rollouts(chain, None, None, tok),
    )
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    inputs = tr._prepare_inputs(next(iter(tr.get_train_dataloader())))
    t_lp = inputs[f"crs_{TEACHER_FEATURE}"]
    assert t_lp.shape == inputs["completion_ids"].shape and t_lp.abs().sum() > 0
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    with torch.no_grad():  # the feature is log π_T of each sampled token, computed independently here
        c, cm = inputs["completion_ids"], inputs["completion_mask"]
        for i in range(c.shape[0]):
            p_ids = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()]
            n = int(cm[i].sum())
            lt = torch.log_softmax(teacher(input_ids=torch.cat([p_ids, c[i, :n]])[None]).logits[0], -1)
            want = lt[len(p_ids) - 1 : len(p_ids) - 1 + n].gather(-1, c[i, :n, None]).squeeze(-1)
            torch.testing.assert_close(t_lp[i, :n], want, rtol=1e-4, atol=1e-5)

    def grads(loss):
        tr.model.zero_grad()
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
        tr.model.zero_grad()
        return g

    ours = grads(tr.compute_loss(tr.model, dict(inputs)))
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    T = inputs["completion_ids"].shape[1]
    logits = tr.model(input_ids=ids, attention_mask=attn).logits[:, -T - 1 : -1]
    teacher_lp = torch.where(inputs["completion_mask"].bool(), t_lp, torch.tensor(math.inf))
    labels = torch.where(inputs["completion_mask"].bool(), inputs["completion_ids"], -100)
    me = SimpleNamespace(
        temperature=tr.temperature,
        iw_opd_gamma=0.0,
        iw_opd_epsilon=1e-8,
        model=SimpleNamespace(training=True),
        _metrics={"train": defaultdict(list)},
    )
    ref = grads(
        IWOPDTrainer._compute_iw_opd_loss(
            me, logits, inputs["completion_ids"], labels, torch.where(labels != -100, teacher_lp, 0.0)
        )
    )
    assert ref.abs().sum() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------- models and config
def test_teacher_is_bigger_with_the_students_tokenizer_and_the_default_key_is_unchanged():
    from crs.cli import compose
    from crs.embedded import cache_key

    s, t = compose([]), compose(["model=embedded_teacher"])
    assert cache_key(s.model.embedded, s.benchmark) == "e057643aeaf3"  # the default student, as before
    assert cache_key(t.model.embedded, t.benchmark) != "e057643aeaf3"
    same = ("seed", "vocab_size", "max_position_embeddings")  # what build_tokenizer reads
    assert all(s.model.embedded[k] == t.model.embedded[k] for k in same)
    assert t.model.embedded.hidden_size * t.model.embedded.num_layers >= 4 * (
        s.model.embedded.hidden_size * s.model.embedded.num_layers
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "no pipeline 'nope'"),
        (["sparse_to_dense", "skip=[bogus]"], "unknown stage"),
        (["sparse_to_dense", "fkl.estimator=xx"], "fkl.estimator"),
        (["sparse_to_dense", "opd.estimator=nope"], "opd.estimator must be one of sampled_pg, full_rkl"),
        (["sparse_to_dense", "skip=[teacher_rl,fkl,on_policy]"], "every stage is skipped"),
        (["sparse_to_dense", "common=['trainer.lrr=1']"], "trainer.lrr"),
    ],
)
def test_bad_pipeline_input_is_one_line_exit_2(args, message, capsys):
    from crs.pipeline import main

    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_stage_keys_are_shared_by_arms_and_change_with_inputs():
    from crs.pipeline import compose_pipeline
    from crs.pipeline.runner import stage_overrides

    full = compose_pipeline("sparse_to_dense", [])
    no_fkl = compose_pipeline("sparse_to_dense", ["skip=[fkl]"])
    assert stage_overrides(full, "teacher_rl") == stage_overrides(no_fkl, "teacher_rl")
    assert stage_overrides(full, "teacher_rl") != stage_overrides(
        compose_pipeline("sparse_to_dense", ["seed=1"]), "teacher_rl"
    )


@pytest.mark.parametrize(
    "overrides, stages, arm",
    [
        ([], ["teacher_rl", "fkl", "on_policy"], "pipeline"),
        (["skip=[fkl]"], ["teacher_rl", "on_policy"], "no_fkl"),
        (["skip=[on_policy]"], ["teacher_rl", "fkl"], "no_on_policy"),
        (["skip=[teacher_rl]"], ["fkl", "on_policy"], "no_teacher_rl"),
        (["skip=[teacher_rl,fkl,on_policy]", "student_rl=true"], ["student_rl"], "student_grpo"),
        (["student_rl=true"], ["teacher_rl", "fkl", "on_policy", "student_rl"], "pipeline+rl"),
    ],
)
def test_arms_run_the_stages_they_name(overrides, stages, arm):
    from crs.pipeline import compose_pipeline
    from crs.pipeline.runner import Pipeline, todo_stages

    p = compose_pipeline("sparse_to_dense", overrides)
    assert todo_stages(p) == stages and Pipeline(p).arm() == arm


def test_a_finished_stage_is_skipped_and_its_model_passed_on(tmp_path, tiny_model_dir):
    """A stage whose record says FINISHED (and whose model exists) is not run again: its record comes back."""
    import json

    from crs.pipeline import compose_pipeline
    from crs.pipeline.runner import RECORD, Pipeline

    p = compose_pipeline(
        "sparse_to_dense", [f"root={tmp_path}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]
    )
    pipe = Pipeline(p)
    parent = pipe._start_parent()
    inputs = {"student": "raw:s", "teacher": "raw:t"}
    nowhere = {"model": str(tmp_path / "none"), "key": "raw:x"}
    try:
        with pytest.raises(ConfigError, match="no model at"):  # no record: the stage runs (no such teacher)
            pipe._stage("on_policy", inputs, nowhere, nowhere, parent)
        _, folder = pipe.stage_dir("on_policy", inputs)
        rec = {
            "stage": "on_policy",
            "status": "FINISHED",
            "run_id": "abc",
            "model": tiny_model_dir,
            "heldout": {},
        }
        (folder / RECORD).write_text(json.dumps(rec))
        assert pipe._stage("on_policy", inputs, nowhere, nowhere, parent) == rec
        assert (
            pipe.stage_dir("on_policy", {**inputs, "teacher": "other"})[1] != folder
        )  # other teacher: other stage
    finally:
        parent.end("FINISHED")


# ------------------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_debug_pipeline_killed_in_stage_2_resumes_there(tmp_path):
    """The real command: killed while stage 2 trains, rerun → stage 1 reused (same run), stage 2 runs."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    args = [
        sys.executable,
        "-m",
        "crs.cli",
        "pipeline",
        "sparse_to_dense",
        "size=debug",
        f"root={tmp_path / 'p'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "fkl.max_steps=60",
    ]
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    deadline = time.time() + 1200
    for line in proc.stdout:
        seen.append(line)
        if "stage fkl (" in line:
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(seen[-20:])
    proc.wait()
    assert any("stage fkl (" in ln for ln in seen), "".join(seen[-30:])
    (stage1,) = [json.loads(p.read_text()) for p in (tmp_path / "p").glob("teacher_rl-*/crs_stage.json")]
    assert not list((tmp_path / "p").glob("fkl-*/crs_stage.json"))
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    said = " ".join(again.stdout.split())  # rich wraps long lines
    assert f"stage teacher_rl already FINISHED (run {stage1['run_id']})" in said
    assert "stage fkl (" in said and "stage on_policy (" in said
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("crs")
    parents = client.search_runs(
        [exp.experiment_id], "tags.`crs.role` = 'pipeline' and attributes.status = 'FINISHED'"
    )
    (parent,) = parents
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags["crs.stage"] for r in kids} == {
        "teacher_rl",
        "fkl",
        "on_policy",
    }  # the parent was reopened
    assert stage1["run_id"] in {r.info.run_id for r in kids}
    assert "s2d/heldout_pass1" in parent.data.metrics or any(
        k.endswith("heldout_pass1") for k in parent.data.metrics
    )


def test_fkl_stage_trains_on_teacher_samples_from_prompts_only(tiny_model_dir, teacher_dir, tmp_path):
    """One real GKD step: the teacher writes the completions (seq_kd) for prompt-only rows, the student moves."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.pipeline.stages import unlabeled_prompts
    from crs.trainers.gkd import CreditGKDTrainer, gkd_config

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = [p.detach().clone() for p in student.parameters()]
    args = gkd_config(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to="none",
        max_new_tokens=8,
        bf16=False,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
    )
    tr = CreditGKDTrainer(
        model=student,
        teacher_model=AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32),
        args=args,
        processing_class=tok,
        train_dataset=unlabeled_prompts({"name": "arithmetic"}, 8, seed=0),
    )
    tr.current_gradient_accumulation_steps = 1
    batch = tr.data_collator([tr.train_dataset[i] for i in range(4)])
    assert math.isfinite(float(tr.training_step(tr.model, batch, torch.tensor(0))))  # placeholder count 0
    tr.model.zero_grad()
    tr.train()
    assert any("loss" in h and math.isfinite(h["loss"]) for h in tr.state.log_history)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


def test_a_pipeline_grid_takes_its_seeds_from_the_command_line():
    """``crs pipeline sweep s2d seeds=[0]``: every arm once, at seed 0 (the grid's own seeds otherwise)."""
    from crs.pipeline.sweep import jobs, load_grid

    g = load_grid("s2d")
    assert len(jobs(g, [])) == len(g["arms"]) * len(g["seeds"])
    one = jobs(g, ["seeds=[0]", "tracking.uri=sqlite:///x.db"])
    assert [(a, s) for a, s, _ in one] == [(a, 0) for a in g["arms"]]
    assert all("seeds=[0]" not in ov and "tracking.uri=sqlite:///x.db" in ov for _, _, ov in one)


def test_a_pipeline_grid_runs_the_arms_the_command_line_picks(capsys):
    """``arms=[..]`` picks arms in the grid's order with their own overrides; a typo is one line naming the
    grid's arms; ``crs pipeline sweep --help`` prints the usage (it used to look for a grid '--help')."""
    import pytest

    from crs import pipeline
    from crs.pipeline.sweep import jobs, load_grid

    g = load_grid("s2d")
    two = jobs(g, ["arms=[full_rkl,pipeline]", "seeds=[1]"])
    assert [(a, s) for a, s, _ in two] == [("pipeline", 1), ("full_rkl", 1)]
    assert "opd.estimator=full_rkl" in two[1][2] and "opd.estimator=full_rkl" not in two[0][2]
    assert all(not o.startswith(("arms=", "seeds=")) for _, _, ov in two for o in ov)
    assert [a for a, _, _ in jobs(g, ["arms=no_fkl"])] == ["no_fkl"] * len(g["seeds"])
    with pytest.raises(ConfigError, match=r"no arm 'no_fk' \(did you mean no_fkl\b"):
        jobs(g, ["arms=[no_fk]"])
    pipeline.main(["sweep", "--help"])
    assert "arms=[..]" in capsys.readouterr().out


# ------------------------------------------------------------- C2 metric, stage 3 labels, rebuild, plot
def test_reverse_kl_is_s1_on_the_masked_tokens_only():
    from crs.credit.primitives import reverse_kl

    s = P_S.log().view(1, 1, 3).repeat(1, 2, 1)
    t = P_T.log().view(1, 1, 3).repeat(1, 2, 1)
    t[0, 1] = torch.tensor([5.0, -5.0, 0.0])  # a far teacher at a position outside the mask
    mask = torch.tensor([[1, 0]])
    assert float(reverse_kl(s, t, mask)) == pytest.approx(0.092033, abs=1e-6)  # KL(π_S‖π_T), S1
    assert float(reverse_kl(t, s, mask)) == pytest.approx(0.085123, abs=1e-6)  # the other direction: FKL
    assert float(reverse_kl(s + 3.0, t - 1.0, mask)) == pytest.approx(0.092033, abs=1e-6)  # logits, not logps
    both = float(reverse_kl(s, t, torch.ones(1, 2)))
    assert both > 0.5 and both == pytest.approx(
        float(reverse_kl(s[:, 1:], t[:, 1:], mask)) / 2 + 0.092033 / 2
    )


def test_kl_student_teacher_is_zero_for_one_model_and_positive_for_two(tiny_model_dir, teacher_dir):
    from crs.pipeline import compose_pipeline
    from crs.pipeline.runner import compose_stage
    from crs.pipeline.stages import kl_student_teacher

    cfg = compose_stage(compose_pipeline("sparse_to_dense", ["size=debug"]), "fkl")
    few = SimpleNamespace(prompts=4, max_new_tokens=8)
    assert kl_student_teacher(tiny_model_dir, tiny_model_dir, cfg, few, 0) == pytest.approx(0.0, abs=1e-6)
    assert kl_student_teacher(tiny_model_dir, teacher_dir, cfg, few, 0) > 1e-3


@pytest.mark.parametrize(
    "overrides, student_stage, data_seed",
    [
        (["student_rl=true"], "on_policy", 7919),  # stage 3 after the bridge: new labels L′
        (["student_rl=true", "student_rl_labels=replay"], "on_policy", None),  # the replay control: L again
        (["skip=[teacher_rl,fkl,on_policy]", "student_rl=true"], "raw", None),  # direct GRPO: L
    ],
)
def test_stage_3_trains_on_new_labels_only_after_a_bridge(overrides, student_stage, data_seed):
    from crs.pipeline import compose_pipeline
    from crs.pipeline.runner import Pipeline

    p = compose_pipeline("sparse_to_dense", overrides)
    ov = Pipeline(p).train_overrides("student_rl", {"model": "/s", "stage": student_stage}, {"model": "/t"})
    assert [o for o in ov if o.startswith("data_seed=")] == (
        [] if data_seed is None else [f"data_seed={data_seed}"]
    )
    assert f"benchmark.n_train={p.labeled}" in ov and "model.name_or_path=/s" in ov


def test_data_seed_draws_other_train_prompts_and_the_same_eval_split():
    from crs.benchmarks import build_benchmark
    from crs.pipeline import compose_pipeline
    from crs.pipeline.runner import compose_stage
    from crs.train import data_seed

    p = compose_pipeline("sparse_to_dense", [])
    L, L2 = (compose_stage(p, "student_rl", extra) for extra in ([], ["data_seed=7919"]))
    assert (data_seed(L), data_seed(L2)) == (0, 7919)
    a, b = (build_benchmark(c.benchmark, data_seed(c)) for c in (L, L2))
    assert a.eval["prompt"] == b.eval["prompt"]
    assert len(set(a.train["prompt"]) & set(b.train["prompt"])) < len(a.train) // 2


@pytest.mark.parametrize("overrides, expected", [([], 3), (["data_seed=7919"], 7919)])
def test_crs_train_builds_its_train_prompts_from_data_seed(overrides, expected, compose_cfg, monkeypatch):
    """The run itself (crs/train.py), not only ``data_seed()``: the benchmark is built under ``data_seed``
    when set, else under the run's seed (the seed is 3 here, so a run ignoring ``data_seed`` shows)."""
    from pathlib import Path

    import crs.benchmarks
    from crs.train import _train

    seen = []

    class Built(Exception):
        pass

    def build(bench_cfg, seed):
        seen.append(seed)
        raise Built  # stop before any model loads

    monkeypatch.setattr(crs.benchmarks, "build_benchmark", build)
    cfg = compose_cfg("seed=3", *overrides)
    with pytest.raises(Built):
        _train(cfg, {}, None, Path(cfg.paths.output_dir), 0.0)
    assert seen == [expected]


@pytest.mark.parametrize(
    "args, message",
    [
        (["sparse_to_dense", "student_rl_labels=new"], "student_rl_labels must be fresh or replay"),
        (["sparse_to_dense", "common=['data_seed=-1']"], "data_seed must be null or an integer"),
    ],
)
def test_bad_stage_3_input_is_one_line_exit_2(args, message, capsys):
    from crs.pipeline import main

    with pytest.raises(SystemExit) as err:
        main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and message in lines[0], lines


def test_a_pipeline_sweep_export_rebuilds_with_crs_pipeline_sweep():
    from crs.compare.export import rebuild_command

    rec = {"pipeline_grid": "s2d", "overrides": ["seeds=[0,1]", "root=/tmp/x", "tracking.uri=sqlite:///m.db"]}
    assert rebuild_command(rec) == "crs pipeline sweep s2d 'seeds=[0,1]'"


def test_the_stage_plot_draws_every_arm_from_the_raw_student():
    from crs.compare.statistics import describe
    from crs.pipeline.plot import figure

    stats = {
        ("a", "raw"): describe([0.3, 0.32]),
        ("a", "fkl"): describe([0.35, 0.37]),
        ("b", "raw"): describe([0.3, 0.32]),
        ("b", "student_rl"): describe([0.31, 0.33]),
        ("a", "teacher_rl"): describe([0.5, 0.6]),
    }
    ax = figure(stats, "s2d/heldout_pass1", "t").axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"a", "b", "teacher after stage 1"} <= set(labels)
    (bar_b,) = [c for c in ax.containers if c.get_label() == "b"]
    xs = list(bar_b.lines[0].get_xdata())
    assert xs[0] == 0 and xs[-1] == pytest.approx(3, abs=0.2) and len(xs) == 2  # raw student → 3 GRPO


def test_a_pipeline_sweep_with_a_failed_arm_exits_1(monkeypatch):
    import crs.pipeline as pipeline

    monkeypatch.setattr(pipeline, "sweep", lambda grid, ov: {"sweep_id": "x", "run_id": "r", "failed": 1})
    with pytest.raises(SystemExit) as err:
        pipeline.main(["sweep", "s2d"])
    assert err.value.code == 1
    monkeypatch.setattr(pipeline, "sweep", lambda grid, ov: {"sweep_id": "x", "run_id": "r", "failed": 0})
    pipeline.main(["sweep", "s2d"])  # every arm FINISHED: no exit
