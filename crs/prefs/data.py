"""Preference pairs in TRL's format (``prompt``/``chosen``/``rejected``): on-policy from the verifier, or a file.

On-policy pairs follow T-REG's pipeline (arXiv 2412.02685: 5 samples per prompt from the reference policy,
best = chosen, worst = rejected by a reward model) with the task's verifier as the reward model: ``samples``
completions per training prompt at the training temperature; a prompt with at least one correct and one
wrong completion gives one pair (the first correct one, the first wrong one); all-correct and all-wrong
groups are ties and dropped. Fixed ``data_seed``; cached under ``<cache>/prefs-<content hash>`` (the model
folder, the prompts, the sampling knobs), so every run and seed of a sweep trains on the same pairs::

    crs train trainer=dpo method=dpo                                        # on-policy pairs
    crs train trainer=dpo method=dpo method.credit.dpo.data_file=pairs.jsonl  # a local file
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from crs.errors import ConfigError

PAIRS_VERSION = 1


def load_preference_file(path: str | Path):
    """A ``.jsonl``/``.json`` file of ``prompt``/``chosen``/``rejected`` rows (text or conversational) as a Dataset."""
    from datasets import Dataset

    path = Path(path).expanduser()
    text = path.read_text()
    try:
        rows = (
            json.loads(text)
            if path.suffix == ".json"
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except json.JSONDecodeError as err:
        raise ConfigError(f"method.credit.dpo.data_file {str(path)!r}: not JSON ({err})") from None
    if not rows or not all(isinstance(r, dict) and {"prompt", "chosen", "rejected"} <= set(r) for r in rows):
        raise ConfigError(
            f"method.credit.dpo.data_file {str(path)!r}: every row needs prompt, chosen and rejected"
        )
    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def on_policy_pairs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    verify: Callable[[str, str], bool],
    *,
    samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 16,
) -> tuple[list[dict[str, str]], dict[str, float]]:
    """Sample ``samples`` completions per prompt, label them with ``verify``; returns ``(pairs, stats)``."""
    from crs.evaluate import _generate

    pairs: list[dict[str, str]] = []
    n_correct = n_all = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            texts, _, _, _ = _generate(
                model,
                tokenizer,
                chunk,
                do_sample=True,
                num_return_sequences=samples,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
            )
            for j, prompt in enumerate(chunk):
                group = texts[j * samples : (j + 1) * samples]
                ok = [bool(verify(t, answers[i + j])) for t in group]
                n_correct += sum(ok)
                n_all += len(ok)
                if any(ok) and not all(ok):
                    # TRL appends EOS to text pairs; the sampled responses end at EOS too
                    pairs.append(
                        {
                            "prompt": prompt,
                            "chosen": group[ok.index(True)],
                            "rejected": group[ok.index(False)],
                        }
                    )
    stats = {
        "pairs": float(len(pairs)),
        "prompts": float(len(prompts)),
        "sample_accuracy": n_correct / max(n_all, 1),
    }
    return pairs, stats


def preference_dataset(
    args: dict[str, Any],
    bench: Any,
    model: Any,
    tokenizer: Any,
    model_path: str,
    cache_dir: Path,
    temperature: float,
    max_new_tokens: int,
):
    """The run's pairs (a Dataset) and a report: ``args`` are the ``dpo`` step's (``samples``, ``n_prompts``,
    ``data_seed``, ``data_file``)."""
    from datasets import Dataset

    from crs.cache import publish

    if args.get("data_file"):
        ds = load_preference_file(args["data_file"])
        return ds, {"source": str(args["data_file"]), "pairs": len(ds)}
    n = min(int(args["n_prompts"]), len(bench.train))
    prompts, answers = list(bench.train["prompt"][:n]), [str(a) for a in bench.train["answer"][:n]]
    if not all(isinstance(p, str) for p in prompts):
        raise ConfigError("on-policy pairs need text prompts; give a conversational benchmark a data_file")
    marker = Path(model_path) / "crs_pretrain.json"
    model_id = hashlib.sha256(marker.read_bytes()).hexdigest() if marker.exists() else str(model_path)
    payload = {
        "v": PAIRS_VERSION,
        "model": model_id,
        "prompts": prompts,
        "answers": answers,
        "samples": int(args["samples"]),
        "seed": int(args["data_seed"]),
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def build(tmp: Path) -> None:
        pairs, stats = on_policy_pairs(
            model,
            tokenizer,
            prompts,
            answers,
            bench.verify,
            samples=int(args["samples"]),
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            seed=int(args["data_seed"]),
        )
        (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        (tmp / "report.json").write_text(json.dumps({"key": key, **stats}, indent=2))

    folder = publish(Path(cache_dir) / f"prefs-{key}", "report.json", build)
    report = json.loads((folder / "report.json").read_text())
    rows = [json.loads(x) for x in (folder / "pairs.jsonl").read_text().splitlines() if x.strip()]
    if not rows:
        raise ConfigError(
            f"no preference pairs: the policy solved all or none of {n} prompts' {args['samples']} samples "
            "(raise method.credit.dpo.samples or n_prompts, or give a data_file)"
        )
    return Dataset.from_list(rows), {"source": str(folder), **report}
