"""Sparse-to-dense stage 2b with ``opd.estimator=full_rkl`` (crs/trainers/distill.py, docs/s2d.md).

The wired TRL ``DistillationTrainer`` is the full-vocabulary *reverse* KL ``Σ_v p_S (log p_S − log p_T)``
(token mean) on the student's *own* samples: its loss and gradient equal the hand-computed reverse KL of
the two models' logits on the same sequences and ``GKDTrainer.generalized_jsd_loss(beta=1)``; TRL's chunked
divergence gives S1's 0.092033 on one position; the completions it trains on are what the student samples
(not the teacher); no label column reaches it; the stage runner trains and saves; the pipeline accepts
``sampled_pg|full_rkl`` only and keys the stage by the estimator; (slow) the real command runs the stage.

    python -m pytest tests/test_s2d_rkl.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
from trl.experimental.gkd import GKDTrainer

PROMPTS = ["Q: 3+4\nA:", "Q: 12-5\nA:", "Q: 2+9-1\nA:"]


def _models(student_dir, teacher_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student_dir)
    tok.padding_side = "left"
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    return tok, student, teacher


def _trainer(tok, student, teacher, tmp_path, data=None, **kw):
    from datasets import Dataset

    from crs.trainers.distill import CreditDistillationTrainer, distill_config

    args = dict(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=len(PROMPTS),
        use_cpu=True,
        report_to="none",
        max_completion_length=8,
        bf16=False,
        activation_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
    )
    args.update(kw)
    return CreditDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=distill_config(**args),
        processing_class=tok,
        train_dataset=data if data is not None else Dataset.from_dict({"prompt": PROMPTS}),
    )


class _PromptOnly(dict):
    """A row that fails the test on any key but ``prompt`` (a label read would be a KeyError here)."""

    def __getitem__(self, key):
        if key != "prompt":
            raise AssertionError(f"trainer read column {key!r}")
        return super().__getitem__(key)


# ------------------------------------------------------------------------------------------ the loss
def test_s1_trl_chunked_divergence_with_the_wired_beta_is_the_reverse_kl():
    """One position, logits = log-probs (hidden = log p, LM head = I): S1's RKL, through TRL's own function."""
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    from crs.trainers.distill import FIXED

    p_t, p_s = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.5, 0.3, 0.2])
    eye, one = torch.eye(3), torch.ones(1, 1)

    def div(beta):
        return float(
            _chunked_divergence_loss(p_s.log().view(1, 1, 3), p_t.log().view(1, 1, 3), eye, eye, one, beta)[0]
        )

    assert div(FIXED["beta"]) == pytest.approx(0.092033, abs=1e-6)  # reverse KL(π_S‖π_T): what stage 2b uses
    assert div(0.0) == pytest.approx(0.085123, abs=1e-6)  # (forward KL, for contrast)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_wired_loss_and_gradient_are_the_full_reverse_kl(tiny_model_dir, teacher_dir, tmp_path, temperature):
    from datasets import Dataset

    from crs.trainers.distill import distill_config

    tok, student, teacher = _models(tiny_model_dir, teacher_dir)
    # whatever the config says, the trainer is fixed to beta=1 and the prompt column
    from crs.trainers.distill import CreditDistillationTrainer

    cfg = distill_config(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    cfg.beta, cfg.remove_unused_columns, cfg.temperature = 0.0, False, temperature
    tr = CreditDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=cfg,
        processing_class=tok,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
    )
    assert (tr.beta, tr.args.remove_unused_columns) == (1.0, True)
    tr.model.train()
    ids = torch.tensor([[5, 6, 7, 8, 9, 11], [6, 7, 8, 9, 10, 12]])
    cmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # the second completion ended early
    inputs = {
        "prompt_ids": ids[:, :2],
        "prompt_mask": torch.ones(2, 2, dtype=torch.long),
        "completion_ids": ids[:, 2:],
        "completion_mask": cmask,
        "num_items_in_batch": cmask.sum(),
    }

    def grads(loss):
        tr.model.zero_grad()
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
        tr.model.zero_grad()
        return g

    loss = tr.compute_loss(tr.model, inputs)
    ours = grads(loss)
    attn = torch.cat([inputs["prompt_mask"], cmask], 1)
    s_logits = (
        tr.model(input_ids=ids, attention_mask=attn).logits[:, 1:-1] / temperature
    )  # predict ids[:, 2:]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=attn).logits[:, 1:-1] / temperature
    ls, lt = torch.log_softmax(s_logits, -1), torch.log_softmax(t_logits, -1)
    m = cmask.bool()
    rkl = (ls.exp() * (ls - lt)).sum(-1)[m].mean()  # Σ_v p_S (log p_S − log p_T), completion-token mean
    fkl = (lt.exp() * (lt - ls)).sum(-1)[m].mean()
    assert float(loss.detach()) == pytest.approx(float(rkl), rel=1e-5)
    assert abs(float(fkl) - float(rkl)) > 1e-4  # the two directions differ here, so a swap is caught
    labels = torch.where(m, ids[:, 2:], -100)
    gkd = GKDTrainer.generalized_jsd_loss(s_logits, t_logits, labels=labels, beta=1.0)
    assert float(loss.detach()) == pytest.approx(float(gkd), rel=1e-5)
    torch.testing.assert_close(ours, grads(rkl), rtol=1e-4, atol=1e-7)  # TRL's hand-written backward too


# ------------------------------------------------------------------------------------ on-policy, labels
def test_completions_are_the_students_own_samples_and_rows_are_read_for_the_prompt_only(
    tiny_model_dir, teacher_dir, tmp_path
):
    """Seeded, the trainer's completions are exactly ``student.generate``'s (and not the teacher's)."""
    tok, student, teacher = _models(tiny_model_dir, teacher_dir)
    tr = _trainer(tok, student, teacher, tmp_path)
    tr.model.train()
    rows = [_PromptOnly(prompt=p, answer="7", completion="x") for p in PROMPTS]
    torch.manual_seed(0)
    out = tr._generate_and_score_completions(rows)
    got = [c[m.bool()].tolist() for c, m in zip(out["completion_ids"], out["completion_mask"])]
    assert sum(map(len, got)) > len(PROMPTS)

    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert all(  # the prompts it sampled from are the plain-text prompts, tokenised as is (no chat template)
        torch.equal(a[b.bool()], c[d.bool()])
        for a, b, c, d in zip(out["prompt_ids"], out["prompt_mask"], enc["input_ids"], enc["attention_mask"])
    )

    def sample(model):
        torch.manual_seed(0)
        with torch.no_grad():
            seq = model.generate(**enc, generation_config=tr.generation_config)[
                :, enc["input_ids"].shape[1] :
            ]
        cut = []
        for row in seq.tolist():
            ends = [i for i, x in enumerate(row) if x in tr.eos_token_ids]
            cut.append(row[: ends[0] + 1] if ends else row)
        return cut

    assert got == sample(tr.model)  # on-policy: the student wrote them
    assert got != sample(teacher)  # the teacher, same seed, writes others (so the check can fail)


def test_an_answer_column_never_reaches_the_batch_and_prompt_only_rows_train(
    tiny_model_dir, teacher_dir, tmp_path
):
    from datasets import Dataset

    tok, student, teacher = _models(tiny_model_dir, teacher_dir)
    before = [p.detach().clone() for p in student.parameters()]
    data = Dataset.from_dict({"prompt": PROMPTS, "answer": ["5", "7", "10"]})
    tr = _trainer(tok, student, teacher, tmp_path, data=data, learning_rate=1e-2)
    batch = next(iter(tr.get_train_dataloader()))
    assert [sorted(r) for r in batch] == [["prompt"]] * len(PROMPTS)  # the answer column was dropped
    tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) and x > 0 for x in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


# ------------------------------------------------------------------------------------- stage runner
def test_rkl_stage_trains_and_saves_the_student_on_prompt_only_rows(
    tiny_model_dir, teacher_dir, tmp_path, compose_cfg
):
    """``run_rkl_stage`` with the on_policy stage's trainer knobs: one step, model and summary saved."""
    import json

    from omegaconf import OmegaConf

    from crs.pipeline.config import OPDSettings
    from crs.pipeline.stages import run_rkl_stage
    from crs.tracking import NullTracker

    cfg = compose_cfg(
        "debug=fast",
        "trainer.max_steps=1",
        "trainer.per_device_train_batch_size=4",
        "trainer.max_completion_length=8",
        "trainer.device=cpu",
    )
    out = tmp_path / "stage"
    out.mkdir()
    settings = OmegaConf.structured(OPDSettings(estimator="full_rkl"))
    run_id, model = run_rkl_stage(
        cfg, settings, tiny_model_dir, teacher_dir, out, 8, NullTracker(), None, "rkl", {}
    )
    assert run_id is None and (model / "config.json").exists() and (model / "tokenizer_config.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["loss_first"]) and summary["loss_first"] > 0


# ------------------------------------------------------------------------------------------ pipeline
def test_pipeline_accepts_full_rkl_and_keys_the_stage_by_estimator():
    from crs.pipeline import compose_pipeline
    from crs.pipeline.runner import Pipeline, check

    keys = {}
    for est in ("sampled_pg", "full_rkl"):
        p = compose_pipeline("sparse_to_dense", [f"opd.estimator={est}"])
        check(p)  # no ConfigError
        keys[est] = Pipeline(p).stage_dir("on_policy", {"student": "raw:s", "teacher": "raw:t"})[0]
    assert keys["sampled_pg"] != keys["full_rkl"]


def test_an_unknown_opd_estimator_is_one_line_exit_2(capsys):
    from crs.pipeline import main

    with pytest.raises(SystemExit) as err:
        main(["sparse_to_dense", "opd.estimator=nope"])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "opd.estimator must be one of sampled_pg, full_rkl" in lines[0], lines


@pytest.mark.slow
def test_debug_pipeline_with_full_rkl_runs_the_opd_stage(tmp_path):
    """The real command: ``skip=[fkl]`` → stage 1 (GRPO teacher), then stage 2b on full_rkl, FINISHED."""
    import json

    import mlflow

    from tests.conftest import run_crs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = run_crs(
        "pipeline",
        "sparse_to_dense",
        "size=debug",
        "opd.estimator=full_rkl",
        "skip=[fkl]",
        f"root={tmp_path / 'p'}",
        f"tracking.uri={uri}",
        cwd=tmp_path,
        timeout=1200,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "p").glob("on_policy-*/crs_stage.json")]
    assert rec["status"] == "FINISHED" and "s2d/heldout_pass1" in rec["heldout"]
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("crs")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`crs.role` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    (opd,) = [r for r in kids if r.data.tags.get("crs.stage") == "on_policy"]
    assert opd.info.run_id == rec["run_id"] and opd.info.status == "FINISHED"
    assert opd.data.tags["method"] == "full_rkl" and opd.data.params["rkl.estimator"] == "full_rkl"
    names = list(opd.data.metrics)  # shown in MetricLayout's sections ("5 optimizer/loss", "other/s2d.…")
    assert any(k.endswith("optimizer/loss") for k in names) and any(
        k.endswith("heldout_pass1") for k in names
    )
