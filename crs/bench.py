"""Benchmark: what the credit hook costs, as ratios against plain TRL ``GRPOTrainer``.

Each variant trains the same tiny model on the same prompts for a few steps in its own process
(so peak memory is per variant) and reports seconds per optimizer step and peak RSS. The machine may
be shared and noisy: read the *ratios* within one invocation, not the absolute numbers; variants are
interleaved over ``--repeats`` rounds and the median is taken.

    python -m crs.bench                 # or: make bench
    python -m crs.bench --steps 6 --repeats 3 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = {
    "trl": None,  # plain GRPOTrainer
    "grpo": {},
    "tp_schedule": {"tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}}},
    "forking_tokens": {
        "forking_tokens": {
            "keep_fraction": 0.0,
            "selection": "per_sequence",
            "drive": {"knob": "keep_fraction", "neutral": 1.0},
        }
    },
    "entropy_adv": {"entropy_adv": {"strength": 1.0, "drive": {"knob": "strength", "neutral": 0.0}}},
    "grpo+diagnostics": {},
}


def _child(variant: str, model_dir: str, steps: int, batch: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from crs.credit import CreditChain
    from crs.testing import cpu_grpo_config
    from crs.trainer import CreditGRPOTrainer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompts = [f"Q: {a}+{b}-{c}\nA:" for a in range(1, 9) for b in range(1, 9) for c in range(1, 3)]

    def reward(completion_ids, **kw):
        return [float(sum(ids) % 5) / 5 for ids in completion_ids]

    with tempfile.TemporaryDirectory() as out:
        args = cpu_grpo_config(
            out,
            max_steps=steps,
            per_device_train_batch_size=batch,
            num_generations=8,
            max_completion_length=32,
            learning_rate=1e-4,
        )
        kw = dict(
            model=model,
            reward_funcs=[reward],
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tok,
        )
        chain = VARIANTS[variant]
        if chain is None:
            trainer = GRPOTrainer(**kw)
        else:
            trainer = CreditGRPOTrainer(
                **kw,
                credit=CreditChain(chain),
                schedule=lambda p: 1.0 - p,
                diagnostics_every=1 if variant.endswith("diagnostics") else 0,
            )
        times = []

        class Timer(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.t)

        trainer.add_callback(Timer())
        trainer.train()
    # the first step includes warm-up (allocations, kernel selection): leave it out
    per_step = statistics.median(times[1:] if len(times) > 1 else times)
    return {"s_per_step": per_step, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m crs.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=64, help="completions per step")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.steps, args.batch)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from crs.testing import build_tiny_model

    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(os.path.join(tmp, "model")))
        for r in range(args.repeats):
            for v in variants:  # interleaved, so drift in machine load hits every variant alike
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "crs.bench",
                        "--child",
                        v,
                        model_dir,
                        "--steps",
                        str(args.steps),
                        "--batch",
                        str(args.batch),
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )
                if out.returncode != 0:
                    raise SystemExit(f"variant {v} failed:\n{out.stderr[-2000:]}")
                results[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}/{args.repeats} {v}: {results[v][-1]}", file=sys.stderr, flush=True)
    from rich.console import Console
    from rich.table import Table

    base = statistics.median(x["s_per_step"] for x in results[variants[0]])
    base_mem = statistics.median(x["peak_rss_mb"] for x in results[variants[0]])
    table = Table(
        title=f"credit-hook cost vs {variants[0]} ({args.batch} completions/step, {args.steps} steps, "
        f"median of {args.repeats})"
    )
    for col in ("variant", "s/step", "time ratio", "peak RSS (MB)", "memory ratio"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for v in variants:
        s = statistics.median(x["s_per_step"] for x in results[v])
        m = statistics.median(x["peak_rss_mb"] for x in results[v])
        table.add_row(v, f"{s:.3f}", f"{s / base:.2f}×", f"{m:.0f}", f"{m / base_mem:.2f}×")
    Console().print(table)


if __name__ == "__main__":
    main()
