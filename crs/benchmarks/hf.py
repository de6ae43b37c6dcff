"""Real math datasets (GSM8K, MATH-500, ...) from the hub or local files, verified with math-verify.

One loader for any dataset with a question column and a reference-answer column. ``benchmark.path``
takes a hub id (``openai/gsm8k``), a local folder (``train.jsonl``/``test.jsonl`` or parquet files
named by split, as ``datasets`` infers them), a single ``.jsonl/.json/.parquet/.csv`` file, or a
pattern with ``{split}`` (quote it for Hydra: ``'benchmark.path="/data/{split}.jsonl"'``).
Completions are scored by HF's ``math-verify`` (the last ``\\boxed{}``/number of the completion against
the parsed reference), 1.0 if equivalent else 0.0.

    crs train model=qwen2.5-0.5b benchmark=gsm8k
    crs train model.name_or_path=/models/qwen benchmark=gsm8k benchmark.path=/data/gsm8k   # train.jsonl, test.jsonl
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the config check reads FILE_BUILDERS without loading datasets
    from datasets import Dataset

from crs.benchmarks import Benchmark, register_benchmark
from crs.errors import ConfigError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def reference_answer(raw: Any, answer_format: str) -> str:
    """The gold answer as a string math-verify can parse.

    ``gsm8k``: the text after ``####`` (thousands separators removed); ``boxed``: the solution as is
    (math-verify finds its last ``\\boxed{}``); ``raw``: the value as is; ``list``: the first element of
    a list column (OlympiadBench's ``final_answer``); ``gpqa``: see :func:`gpqa_rows`.
    """
    if answer_format == "list":
        raw = raw[0] if isinstance(raw, list | tuple) and raw else raw
        answer_format = "raw"
    text = str(raw)
    if answer_format == "gsm8k":
        if "####" not in text:
            raise ValueError(f"gsm8k answer without '####': {text[:80]!r}")
        return text.split("####")[-1].strip().replace(",", "")
    if answer_format in ("raw", "boxed", "gpqa"):
        return text.strip()
    raise ConfigError(
        f"benchmark.answer_format must be raw, gsm8k, boxed, list or gpqa (got {answer_format!r})"
    )


GPQA_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
LETTERS = "ABCD"


def gpqa_rows(ds: Dataset, q: str, a: str) -> tuple[list[str], list[str]]:
    """GPQA's format (Idavidrein/gpqa: ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``) as
    multiple-choice questions: the four answers shuffled by a seed derived from the question text (the
    same order on every machine and run), listed as ``A) … D)``; the reference is the correct letter."""
    import random

    missing = [c for c in GPQA_WRONG if c not in ds.column_names]
    if missing:
        raise ConfigError(
            f"benchmark: column {missing[0]!r} not in dataset (answer_format gpqa needs {a!r} and "
            f"{', '.join(GPQA_WRONG)}; columns: {', '.join(ds.column_names)})"
        )
    questions, letters = [], []
    for row in ds:
        choices = [str(row[a]).strip(), *(str(row[c]).strip() for c in GPQA_WRONG)]
        order = list(range(4))
        random.Random(str(row[q])).shuffle(order)
        listed = "\n".join(f"{LETTERS[i]}) {choices[j]}" for i, j in enumerate(order))
        questions.append(f"{str(row[q]).strip()}\n\n{listed}")
        letters.append(LETTERS[order.index(0)])
    return questions, letters


def _completion_text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content", "") for m in completion if isinstance(m, Mapping))
    return str(completion)


def math_verify_correct(completion: str, gold: str) -> bool:
    """math-verify equivalence of the completion's final answer and the reference."""
    from math_verify import parse, verify

    gold_parsed = parse(gold if "\\boxed" in gold or "$" in gold else f"${gold}$")
    pred = parse(completion)
    if not gold_parsed or not pred:
        return False
    return bool(verify(gold_parsed, pred))


def math_reward(prompts, completions, answer, log_metric=None, **kwargs) -> list[float]:
    """TRL reward: 1.0 when math-verify finds the completion's answer equal to ``answer``."""
    rewards = [
        1.0 if math_verify_correct(_completion_text(c), a) else 0.0 for c, a in zip(completions, answer)
    ]
    if log_metric is not None and rewards:
        log_metric("accuracy", sum(rewards) / len(rewards))
    return rewards


math_reward.__name__ = "correctness"


def _load_split(cfg: Mapping[str, Any], split: str) -> Dataset:
    from datasets import load_dataset

    path = str(cfg["path"])
    try:
        if "{split}" in path or Path(path).suffix in FILE_BUILDERS:
            file = path.format(split=split)
            if not Path(file).exists():
                raise ConfigError(f"benchmark.path: no such file {file!r}")
            return load_dataset(FILE_BUILDERS[Path(file).suffix], data_files={split: file}, split=split)
        # a local folder has no hub configs (gsm8k's "main"): its files are the splits
        subset = None if Path(path).is_dir() else cfg.get("subset")
        return load_dataset(path, subset, split=split)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(
            f"benchmark.path: could not load {path!r} split {split!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); offline machines need local files"
        ) from None


def _prompt(question: str, cfg: Mapping[str, Any]) -> Any:
    user = str(cfg["prompt_template"]).format(question=question)
    if not cfg.get("chat", True):
        return user
    messages = []
    if cfg.get("system_prompt"):
        messages.append({"role": "system", "content": cfg["system_prompt"]})
    messages.append({"role": "user", "content": user})
    return messages


def _prepare(ds: Dataset, cfg: Mapping[str, Any], n: int | None, seed: int | None) -> Dataset:
    q, a = cfg["question_field"], cfg["answer_field"]
    for col in (q, a):
        if col not in ds.column_names:
            raise ConfigError(
                f"benchmark: column {col!r} not in dataset (columns: {', '.join(ds.column_names)})"
            )
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    from datasets import Dataset

    if cfg["answer_format"] == "gpqa":  # multiple choice: the question lists the shuffled answers
        questions, answers = gpqa_rows(ds, q, a)
    else:
        questions, answers = ds[q], [reference_answer(x, cfg["answer_format"]) for x in ds[a]]
    rows = {"prompt": [_prompt(x, cfg) for x in questions], "answer": list(answers)}
    return Dataset.from_dict(rows)


def sft_from_solutions(ds: Dataset, cfg: Mapping[str, Any]) -> Dataset:
    """Prompt/completion pairs from a dataset whose answer column holds worked solutions (GSM8K)."""
    q, a = cfg["question_field"], cfg["answer_field"]

    def completion(sol: str) -> str:
        if cfg["answer_format"] == "gsm8k":
            body, _, final = sol.rpartition("####")
            body = re.sub(r"<<[^>]*>>", "", body).strip()
            return f"{body}\nThe answer is \\boxed{{{final.strip()}}}."
        return sol

    from datasets import Dataset

    return Dataset.from_dict(
        {"prompt": [_prompt(x, cfg) for x in ds[q]], "completion": [completion(s) for s in ds[a]]}
    )


@register_benchmark("hf")
def build(cfg: Mapping[str, Any], seed: int) -> Benchmark:
    """Train prompts shuffled by the run seed (capped at n_train); eval = the first n_eval (fixed)."""
    train_raw = _load_split(cfg, cfg.get("train_split", "train"))
    eval_raw = _load_split(cfg, cfg.get("eval_split", "test"))
    train = _prepare(train_raw, cfg, cfg.get("n_train"), seed)
    evald = _prepare(eval_raw, cfg, cfg.get("n_eval"), None)

    def sft(n: int, sft_seed: int) -> Dataset:
        return sft_from_solutions(train_raw.shuffle(seed=sft_seed).select(range(min(n, len(train_raw)))), cfg)

    return Benchmark(
        name=f"hf:{cfg['path']}",
        train=train,
        eval=evald,
        reward_funcs=[math_reward],
        verify=lambda completion, gold: math_verify_correct(completion, gold),
        sft=sft,
        info={"path": cfg["path"], "n_train": len(train), "n_eval": len(evald)},
    )
