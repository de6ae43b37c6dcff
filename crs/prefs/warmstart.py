"""The embedded model's contrastive warm-start variant: SFT rows with control prefixes.

T-REG's evaluator is the reference model prompted to revise a response to be better or worse. crs's toy
policy cannot read instructions, so the contrast is *learned* in its warm start: the embedded SFT data
(``error_rate`` of the solutions carry one wrong step) is shown with a control prefix on a share of the rows —
``[+]`` before correct solutions, ``[-]`` before wrong-step ones — and without it on the rest (so prompts
without a prefix, the ones DPO trains on, behave like the default model's). The SFT'd model is then both
``π_ref`` and the evaluator, as in the paper.

Everything else is :mod:`crs.embedded`'s recipe (tokenizer, architecture, TRL SFT), and the cache folder is
``embedded-contrastive-<key>``: the default model, its key and the regression fixtures do not change::

    python -c "from pathlib import Path; from crs.prefs.warmstart import ensure_contrastive_model; \
print(ensure_contrastive_model({}, {'name': 'arithmetic'}, Path('.cache/models')))"
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

CONTROL_BETTER = "[+]"
CONTROL_WORSE = "[-]"
# share of SFT rows that carry a control prefix; the rest train the unprefixed policy (as the default model)
CONTROL_SHARE = 0.5
VARIANT_VERSION = 1


def contrastive_sft_rows(ds, share: float = CONTROL_SHARE, seed: int = 0):
    """Prefix ``share`` of the rows of an SFT dataset (columns ``prompt``, ``completion``, ``noisy``):
    ``[-]`` where the completion has a wrong step, ``[+]`` where it is correct; the other rows unchanged."""
    rng = random.Random(f"contrastive-{seed}")

    def mark(row):
        if rng.random() < share:
            row["prompt"] = (CONTROL_WORSE if row["noisy"] else CONTROL_BETTER) + row["prompt"]
        return row

    return ds.map(mark)


def contrastive_key(model_cfg: Any, bench_cfg: Mapping[str, Any] | None) -> str:
    from crs.embedded import cache_key

    payload = {
        "base": cache_key(model_cfg, bench_cfg),
        "variant": VARIANT_VERSION,
        "share": CONTROL_SHARE,
        "prefixes": [CONTROL_BETTER, CONTROL_WORSE],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def pretrain_contrastive(
    model_cfg: Any, bench_cfg: Mapping[str, Any] | None, out_dir: Path
) -> dict[str, Any]:
    """Build, SFT (with control prefixes), save and evaluate the variant; returns its report."""
    from transformers import set_seed

    from crs.embedded import (
        _bench_config,
        _eval_split,
        _quiet,
        _task_module,
        as_model_config,
        build_model,
        build_tokenizer,
        sft_settings,
        sft_warm_start,
    )
    from crs.evaluate import evaluate_model

    cfg = as_model_config(model_cfg)
    acfg = _bench_config(bench_cfg)
    mod = _task_module(acfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _quiet():
        tokenizer = build_tokenizer(mod.corpus(acfg, n=2000, seed=cfg.seed), cfg.vocab_size)
        tokenizer.model_max_length = cfg.max_position_embeddings
        set_seed(cfg.seed)
        model = build_model(tokenizer, cfg)
        ds = mod.sft_dataset(cfg.n_sft, cfg.seed, cfg.error_rate, acfg)
        ds = contrastive_sft_rows(ds, CONTROL_SHARE, cfg.seed).select_columns(["prompt", "completion"])
        if cfg.sft_steps > 0:
            model = sft_warm_start(model, tokenizer, ds, **sft_settings(cfg)).model
        model.config.use_cache = True
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        prompts, answers, verify = _eval_split(acfg)
        evals = {}
        for name, prefix in (("plain", ""), ("better", CONTROL_BETTER), ("worse", CONTROL_WORSE)):
            evals[name] = evaluate_model(
                model,
                tokenizer,
                [prefix + p for p in prompts[:64]],
                answers[:64],
                verify,
                k=4,
                temperature=cfg.eval_temperature,
                max_new_tokens=cfg.eval_max_new_tokens,
                seed=cfg.seed,
                greedy=False,
            )
    report = {
        "variant": "contrastive",
        "control": [CONTROL_BETTER, CONTROL_WORSE],
        "share": CONTROL_SHARE,
        "config": asdict(cfg),
        "benchmark": asdict(acfg),
        "eval": evals,
        "wall_time_s": time.perf_counter() - t0,
    }
    (out_dir / "crs_pretrain.json").write_text(json.dumps(report, indent=2))
    return report


def ensure_contrastive_model(model_cfg: Any, bench_cfg: Mapping[str, Any] | None, cache_dir: Path) -> Path:
    """``cache_dir/embedded-contrastive-<key>``, built once (atomically, :func:`crs.cache.publish`)."""
    from crs.cache import publish

    final = Path(cache_dir) / f"embedded-contrastive-{contrastive_key(model_cfg, bench_cfg)}"
    return publish(final, "crs_pretrain.json", lambda tmp: pretrain_contrastive(model_cfg, bench_cfg, tmp))
