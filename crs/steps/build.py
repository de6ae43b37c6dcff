"""Build a small PRM and a small judge for the embedded task, offline, from the policy's own samples.

No hub PRM or judge is reachable here, so crs builds both the way their papers' authors built theirs —
from step labels — with the exact rule verifier (:mod:`crs.steps.rule`) as the labeller:

1. sample ``n_prompts × samples_per_prompt`` completions from the policy (temperature 1) on prompts from
   their own stream (never the eval split), segment them (:mod:`crs.steps.segment`) and label every step;
2. **PRM** (PURE's recipe, TRL PRM format): a ``*ForTokenClassification`` model with 2 labels initialised
   from the policy, input ``prompt ⊕ step_1 ⊕ "\\n" ⊕ …`` (every step end → the step token), label on each
   step-end position (1 = correct), trained with ``transformers.Trainer``;
   **judge** (CAPO's GenPRM, fine-tuned to emit critiques): the policy fine-tuned with TRL's ``SFTTrainer``
   on ``judge_prompt(problem, numbered steps) → "[i,j]"`` (the wrong steps, 1-based);
3. measure both against the rule verifier on fresh samples of held-out (eval-split) prompts: step-level
   precision / recall / F1 of the *wrong* class (the steps a credit method must find) and accuracy, saved
   in ``crs_prm.json`` / ``crs_judge.json`` next to the model.

Built models are cached under a content hash of (policy path, benchmark, separators, build settings) and
published atomically, like the embedded model. Example::

    python -m crs.steps.build prm   # build (or show) the PRM for the default embedded policy and print its report
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from crs.steps.settings import JudgeSettings, PRMSettings

DEFAULT_SEPARATORS = (",", ".")


def _key(kind: str, policy_path: str, benchmark: str, settings: Mapping[str, Any], separators) -> str:
    keep = {k: v for k, v in settings.items() if k not in ("path", "critiques", "vote", "temperature")}
    payload = {
        "kind": kind,
        "policy": str(Path(policy_path).resolve()),
        "bench": benchmark,
        "s": keep,
        "sep": list(separators),
        "v": 1,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _problems(n: int, kind: str, seed: int, eval_split: bool, task: Mapping[str, Any] | None = None):
    from crs.benchmarks.arithmetic import ArithmeticConfig, eval_problems, sample_problems

    acfg = ArithmeticConfig.from_mapping({**dict(task or {}), "name": "arithmetic"})
    ev = eval_problems(acfg)
    if eval_split:
        # held-out measurement: the eval split's prompts first, then (small task spaces) a separate stream
        extra = sample_problems(max(0, n - len(ev)), f"{kind}-heldout", seed, acfg) if n > len(ev) else []
        return (ev + extra)[:n]
    return sample_problems(n, kind, seed, acfg, exclude=[p.prompt for p in ev])


@torch.no_grad()
def sample_labelled(
    policy_path: str,
    benchmark: str,
    n_prompts: int,
    k: int,
    seed: int,
    eval_split: bool,
    separators=DEFAULT_SEPARATORS,
    task=None,
):
    """Policy samples with rule labels: list of dicts ``prompt, prompt_ids, completion_ids, step_texts, labels``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.steps.rule import verify_steps
    from crs.steps.segment import segment_batch, separator_token_ids, step_texts

    tok = AutoTokenizer.from_pretrained(policy_path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(policy_path).eval()
    sep = separator_token_ids(tok, separators)
    torch.manual_seed(seed)
    probs = _problems(n_prompts, f"{benchmark}-scorer-build", seed, eval_split, task)
    prompts = [p.prompt for p in probs for _ in range(k)]
    out = []
    for s in range(0, len(prompts), 256):
        chunk = prompts[s : s + 256]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=48,
            pad_token_id=tok.pad_token_id,
        )
        comp = gen[:, enc["input_ids"].shape[1] :]
        # valid = up to and including the first EOS
        is_eos = comp == tok.eos_token_id
        first = torch.where(
            is_eos.any(1), is_eos.float().argmax(1), torch.full((comp.shape[0],), comp.shape[1] - 1)
        )
        mask = (torch.arange(comp.shape[1]).unsqueeze(0) <= first.unsqueeze(1)).long()
        comp = comp.masked_fill(mask == 0, tok.pad_token_id)
        steps = segment_batch(comp, mask, sep)
        texts = step_texts(tok, comp, steps)
        for b, prompt in enumerate(chunk):
            labels = verify_steps(benchmark, texts[b], {"prompt": prompt})
            out.append(
                {
                    "prompt": prompt,
                    "prompt_ids": enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist(),
                    "completion_ids": comp[b, : int(mask[b].sum())].tolist(),
                    "ends": steps.ends[b][steps.valid[b]].tolist(),
                    "step_texts": texts[b],
                    "labels": labels,
                }
            )
    return out


def step_prf(truth_ok: list[float], pred_ok: list[float]) -> dict[str, float]:
    """Step-level precision/recall/F1 of the *wrong* class (scores < 0.5 = wrong) and accuracy."""
    t = torch.tensor(truth_ok) < 0.5
    p = torch.tensor(pred_ok) < 0.5
    tp = float((t & p).sum())
    prec = tp / float(p.sum()) if p.any() else float("nan")
    rec = tp / float(t.sum()) if t.any() else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if p.any() and t.any() and prec + rec > 0 else float("nan")
    return {
        "precision_wrong": prec,
        "recall_wrong": rec,
        "f1_wrong": f1,
        "accuracy": float((t == p).float().mean()) if len(t) else float("nan"),
        "n_steps": len(t),
        "n_wrong": int(t.sum()),
    }


def _publish(final: Path, build) -> Path:
    from crs.cache import publish

    return publish(final, "crs_report.json", build)


def _cache(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("CRS_CACHE_DIR") or Path.home() / ".cache" / "crs")


def _policy(policy_path: str | None, cache_dir: str | None) -> str:
    if policy_path:
        return policy_path
    from crs.embedded import EmbeddedModelConfig, ensure_embedded_model

    return str(ensure_embedded_model(EmbeddedModelConfig(), {"name": "arithmetic"}, _cache(cache_dir)))


# ---------------------------------------------------------------------------------------------------- PRM


def _prm_features(sample: Mapping[str, Any], step_token_id: int) -> dict[str, list[int]]:
    c = list(sample["completion_ids"])
    labels = [-100] * (len(sample["prompt_ids"]) + len(c))
    for end, lab in zip(sample["ends"], sample["labels"]):
        c[end] = step_token_id
        labels[len(sample["prompt_ids"]) + end] = int(lab >= 0.5)
    ids = sample["prompt_ids"] + c
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def build_prm(
    policy_path: str,
    benchmark: str,
    out_dir: Path,
    settings: Mapping[str, Any],
    separators=DEFAULT_SEPARATORS,
    seed: int = 0,
    task=None,
) -> dict[str, Any]:
    """Train the PRM into ``out_dir`` and return its report (see module docstring)."""
    from datasets import Dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from crs.embedded import _quiet

    s = {**PRMSettings().__dict__, **dict(settings)}
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(policy_path)
    tok.padding_side = "right"
    step_id = tok(s["step_token"], add_special_tokens=False).input_ids[0]
    train = sample_labelled(
        policy_path, benchmark, s["n_prompts"], s["samples_per_prompt"], seed, False, separators, task
    )
    ds = Dataset.from_list([_prm_features(x, step_id) for x in train])
    with _quiet():
        torch.manual_seed(seed)
        model = AutoModelForTokenClassification.from_pretrained(policy_path, num_labels=2)
        model.config.pad_token_id = tok.pad_token_id
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(
                output_dir=tmp,
                max_steps=s["train_steps"],
                per_device_train_batch_size=32,
                learning_rate=s["lr"],
                lr_scheduler_type="cosine",
                warmup_steps=20,
                weight_decay=0.0,
                logging_steps=50,
                save_strategy="no",
                report_to="none",
                # same device as the policy: a CPU-only TrainingArguments in-process resets accelerate's shared
                # state to CPU and the GPU policy's generation then fails (seen on an H200)
                use_cpu=not torch.cuda.is_available(),
                seed=seed,
                disable_tqdm=True,
                dataloader_num_workers=0,
            )
            Trainer(
                model=model,
                args=args,
                train_dataset=ds,
                data_collator=DataCollatorForTokenClassification(tok),
            ).train()
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    t_train = time.perf_counter() - t0
    report = {
        "kind": "prm",
        "policy": policy_path,
        "benchmark": benchmark,
        "settings": s,
        "n_train_completions": len(train),
        "train_wrong_frac": float(
            sum(1 for x in train for v in x["labels"] if v < 0.5)
            / max(1, sum(len(x["labels"]) for x in train))
        ),
        "build_time_s": t_train,
    }
    report["eval"] = evaluate_prm(
        str(out_dir), policy_path, benchmark, s["n_eval_prompts"], separators, task=task
    )
    (out_dir / "crs_report.json").write_text(json.dumps(report, indent=2))
    return report


def evaluate_prm(
    prm_path: str,
    policy_path: str,
    benchmark: str,
    n_prompts: int,
    separators=DEFAULT_SEPARATORS,
    seed: int = 1,
    task=None,
) -> dict[str, float]:
    """PRM vs the rule verifier on fresh policy samples of eval-split prompts (step precision/recall)."""
    from crs.steps.scorers import PRMScorer

    samples = sample_labelled(policy_path, benchmark, n_prompts, 4, seed, True, separators, task)
    scorer = PRMScorer(prm_path)
    truth, pred = [], []
    for s in range(0, len(samples), 64):
        chunk = samples[s : s + 64]
        feats = [_prm_features(x, scorer.step_token_id) for x in chunk]
        S = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(chunk), S), scorer.pad_id)
        att = torch.zeros(len(chunk), S, dtype=torch.long)
        K = max(len(x["ends"]) for x in chunk)
        pos = torch.full((len(chunk), K), -1)
        for b, (f, x) in enumerate(zip(feats, chunk)):
            ids[b, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            att[b, : len(f["input_ids"])] = 1
            pos[b, : len(x["ends"])] = torch.tensor(x["ends"]) + len(x["prompt_ids"])
        probs = scorer.probs(ids, att, pos)
        for b, x in enumerate(chunk):
            truth += list(x["labels"])
            pred += probs[b, : len(x["ends"])].tolist()
    return step_prf(truth, pred)


def _ensure(
    kind: str, defaults, build, policy_path, benchmark, cache_dir, settings, separators, task
) -> Path:
    """The cached ``kind`` model for ``(policy, benchmark, settings)``, built by ``build`` on first use."""
    policy_path = _policy(policy_path, cache_dir)
    s = {**defaults.__dict__, **dict(settings or {})}
    final = (
        _cache(cache_dir) / f"{kind}-{_key(kind, policy_path, benchmark, {**s, 'task': task}, separators)}"
    )
    if not (final / "crs_report.json").exists():
        from crs.progress import console

        console.print(
            f"crs: building a {kind.upper() if kind == 'prm' else kind} for {benchmark} from the policy's "
            f"rule-labelled samples (once); cached in {final}"
        )
    return _publish(final, lambda tmp: build(policy_path, benchmark, tmp, s, separators, task=task))


def ensure_prm(
    policy_path: str | None,
    benchmark: str,
    cache_dir: str | None,
    settings: Mapping[str, Any] | None = None,
    separators=DEFAULT_SEPARATORS,
    task=None,
) -> Path:
    """The cached PRM for ``(policy, benchmark, settings)``, built on first use."""
    return _ensure(
        "prm", PRMSettings(), build_prm, policy_path, benchmark, cache_dir, settings, separators, task
    )


# -------------------------------------------------------------------------------------------------- judge


def build_judge(
    policy_path: str,
    benchmark: str,
    out_dir: Path,
    settings: Mapping[str, Any],
    separators=DEFAULT_SEPARATORS,
    seed: int = 0,
    task=None,
) -> dict[str, Any]:
    """Fine-tune the policy into a critique writer (TRL ``SFTTrainer``) and return its report."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from crs.embedded import _quiet
    from crs.steps.scorers import judge_prompt, judge_target

    s = {**JudgeSettings().__dict__, **dict(settings)}
    t0 = time.perf_counter()
    train = sample_labelled(
        policy_path, benchmark, s["n_prompts"], s["samples_per_prompt"], seed, False, separators, task
    )
    rows = [
        {
            "prompt": judge_prompt(x["prompt"], x["step_texts"]),
            "completion": judge_target([k for k, v in enumerate(x["labels"]) if v < 0.5]),
        }
        for x in train
    ]
    with _quiet():
        tok = AutoTokenizer.from_pretrained(policy_path)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(policy_path)
        with tempfile.TemporaryDirectory() as tmp:
            args = SFTConfig(
                output_dir=tmp,
                max_steps=s["train_steps"],
                per_device_train_batch_size=32,
                learning_rate=s["lr"],
                lr_scheduler_type="cosine",
                warmup_steps=20,
                logging_steps=50,
                completion_only_loss=True,
                max_length=model.config.max_position_embeddings,
                packing=False,
                seed=seed,
                # same device as the policy: a CPU-only TrainingArguments in-process resets accelerate's shared
                # state to CPU and the GPU policy's generation then fails (seen on an H200)
                use_cpu=not torch.cuda.is_available(),
                bf16=False,
                activation_checkpointing=False,
                report_to="none",
                save_strategy="no",
                disable_tqdm=True,
                dataloader_num_workers=0,
            )
            SFTTrainer(
                model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
            ).train()
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    report = {
        "kind": "judge",
        "policy": policy_path,
        "benchmark": benchmark,
        "settings": s,
        "n_train_completions": len(train),
        "build_time_s": time.perf_counter() - t0,
    }
    report["eval"] = evaluate_judge(
        str(out_dir),
        policy_path,
        benchmark,
        s["n_eval_prompts"],
        int(s["critiques"]),
        separators=separators,
        task=task,
    )
    (out_dir / "crs_report.json").write_text(json.dumps(report, indent=2))
    return report


def evaluate_judge(
    judge_path: str,
    policy_path: str,
    benchmark: str,
    n_prompts: int,
    critiques: int = 4,
    rules=("majority", "intersection", "union", "average"),
    separators=DEFAULT_SEPARATORS,
    seed: int = 1,
    task=None,
) -> dict[str, Any]:
    """Judge (k sampled critiques, voted by each rule) vs the rule verifier on fresh samples of eval-split prompts.

    One batch of critiques is generated and voted by every rule, so the rules are compared on the same
    critiques. Also reports ``single`` (one greedy critique, no vote).
    """
    from crs.steps.scorers import JudgeScorer, judge_prompt, parse_critique, vote

    samples = sample_labelled(policy_path, benchmark, n_prompts, 4, seed, True, separators, task)
    judge = JudgeScorer(judge_path, critiques=critiques)
    torch.manual_seed(seed)
    prompts = [judge_prompt(x["prompt"], x["step_texts"]) for x in samples]
    t0 = time.perf_counter()
    texts, n_tok = judge.critique(prompts, critiques)
    secs = time.perf_counter() - t0
    greedy, _ = judge.critique(prompts, 1, temperature=0.0)
    parsed = [
        [parse_critique(texts[b * critiques + j], len(x["step_texts"])) for j in range(critiques)]
        for b, x in enumerate(samples)
    ]
    truth = [v for x in samples for v in x["labels"]]
    out: dict[str, Any] = {}
    for rule in rules:
        pred = []
        for sets, x in zip(parsed, samples):
            pred += (1.0 - vote([[p or set() for p in sets]], len(x["step_texts"]), rule)[0]).tolist()
        out[rule] = step_prf(truth, pred)
    pred = []
    for t, x in zip(greedy, samples):
        pred += (
            1.0 - vote([[parse_critique(t, len(x["step_texts"])) or set()]], len(x["step_texts"]), "union")[0]
        ).tolist()
    out["single_greedy"] = step_prf(truth, pred)
    out["parse_fail"] = sum(p is None for ps in parsed for p in ps) / max(1, len(texts))
    out["cost"] = {"critiques": len(texts), "gen_tokens": n_tok, "seconds": secs}
    return out


def ensure_judge(
    policy_path: str | None,
    benchmark: str,
    cache_dir: str | None,
    settings: Mapping[str, Any] | None = None,
    separators=DEFAULT_SEPARATORS,
    task=None,
) -> Path:
    """The cached judge for ``(policy, benchmark, settings)``, built on first use."""
    return _ensure(
        "judge", JudgeSettings(), build_judge, policy_path, benchmark, cache_dir, settings, separators, task
    )


if __name__ == "__main__":  # pragma: no cover - a convenience for the README numbers
    import sys

    what = sys.argv[1] if len(sys.argv) > 1 else "prm"
    bench = sys.argv[2] if len(sys.argv) > 2 else "arithmetic"
    path = (ensure_prm if what == "prm" else ensure_judge)(None, bench, None)
    print(path)
    print(json.dumps(json.loads((path / "crs_report.json").read_text())["eval"], indent=2))
