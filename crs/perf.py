"""Benchmark: crs's trainer and rollout engines against plain TRL ``GRPOTrainer``, as paired ratios.

Each variant trains the same model on the same prompts for a few steps in its own process (so peak
memory is per variant). Variants are interleaved over ``--rounds`` (drift in machine load hits every
variant alike) and each round's time is divided by plain TRL's time *in the same round*: the table
shows the median step time, the median paired ratio with its min–max over rounds, tokens/s, peak
memory and where a step's time goes (generation, reward, other rollout work, credit, forward/backward,
diagnostics, optimizer). Speed is read from these ratios, never asserted as a timing.

    python -m crs.perf                                   # CPU, tiny model (make bench)
    python -m crs.perf --device cuda --model 180m --batch 128 --tokens 256 --precision bf16 \\
        --variants trl,grpo,grpo+static --rounds 3 --json bench.json

Variants: ``trl`` (plain GRPOTrainer), or ``<method>`` (crs's trainer with that credit method) plus
``+static`` / ``+hf_static`` (rollout engine, crs/rollout), ``+diagnostics`` (percentile
entropy/KL every step). ``--force-length`` (default for random-weight models) suppresses EOS so every
completion is exactly ``--tokens`` long and all variants do the same work.
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
from collections import defaultdict
from pathlib import Path
from typing import Any


def method_credit(name: str) -> dict | None:
    """``method.credit`` of ``conf/method/<name>.yaml`` (the chain a real run uses), or ``None``."""
    from omegaconf import OmegaConf

    from crs.locations import CONF_DIR

    path = Path(CONF_DIR) / "method" / f"{name}.yaml"
    if not path.exists():
        return None
    credit = OmegaConf.load(path).get("credit")
    return dict(OmegaConf.to_container(credit, resolve=True)) if credit else {}


CPU_VARIANTS = "trl,grpo,grpo+static,tp_schedule,forking_tokens,entropy_adv,grpo+diagnostics"
CUDA_VARIANTS = "trl,grpo,grpo+static"
# model sizes: Qwen2 shapes; "tiny" is crs.testing's model (SFT'd a few steps), the others random weights
SIZES: dict[str, dict[str, int] | None] = {
    "tiny": None,
    "30m": dict(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1408,
    ),
    "180m": dict(
        hidden_size=1024,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        intermediate_size=2304,
    ),
}
PHASES = ("generation", "reward", "rollout_other", "credit", "fwd_bwd", "diagnostics", "optimizer_other")


def parse_variant(v: str) -> dict[str, Any]:
    base, *flags = v.split("+")
    unknown = set(flags) - {"static", "hf_static", "diagnostics"}
    if (base != "trl" and method_credit(base) is None) or unknown:
        raise SystemExit(f"crs: error: unknown benchmark variant {v!r} (trl, or a method of conf/method/)")
    generation = "static" if "static" in flags else "hf_static" if "hf_static" in flags else "hf"
    return {"method": base, "generation": generation, "diagnostics": "diagnostics" in flags}


class _Phases:
    """Wall time per phase, synchronising CUDA at every boundary so kernels are charged where launched."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.now: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.tokens = 0
        self.step_tokens: list[int] = []

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def wrap(self, obj, name: str, phase: str) -> None:
        fn = getattr(obj, name)

        def timed(*a, **k):
            self.sync()
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.sync()
                self.now[phase] += time.perf_counter() - t

        setattr(obj, name, timed)


def _build_model(model_dir: str, size: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if SIZES[size] is None:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tiny = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = Qwen2Config(
        vocab_size=tiny.config.vocab_size,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tiny.config.bos_token_id,
        eos_token_id=tiny.config.eos_token_id,
        pad_token_id=tiny.config.pad_token_id,
        **SIZES[size],
    )
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(cfg)


def _child(variant: str, model_dir: str, a: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from crs.methods.chain import CreditChain
    from crs.testing import cpu_grpo_config
    from crs.trainers.grpo import CreditGRPOTrainer

    spec = parse_variant(variant)
    cuda = a.device == "cuda"
    if not cuda:
        torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = _build_model(model_dir, a.model, a.device)
    n_params = sum(p.numel() for p in model.parameters())
    prompts = [f"Q: {x}+{y}-{z}\nA:" for x in range(1, 9) for y in range(1, 9) for z in range(1, 3)]

    def reward(completion_ids, **kw):
        return [float(sum(ids) % 5) / 5 for ids in completion_ids]

    force = a.force_length if a.force_length is not None else SIZES[a.model] is not None
    with tempfile.TemporaryDirectory() as out:
        args = cpu_grpo_config(
            out,
            max_steps=a.steps,
            per_device_train_batch_size=a.batch,
            num_generations=8,
            max_completion_length=a.tokens,
            learning_rate=1e-5 if SIZES[a.model] else 1e-4,
            use_cpu=not cuda,
            bf16=a.precision == "bf16",
            cache_implementation="static" if spec["generation"] == "hf_static" else None,
            generation_kwargs={"suppress_tokens": [tok.eos_token_id]} if force else None,
        )
        kw = dict(
            model=model,
            reward_funcs=[reward],
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tok,
        )
        if spec["method"] == "trl":
            trainer = GRPOTrainer(**kw)
        else:
            trainer = CreditGRPOTrainer(
                **kw,
                credit=CreditChain(method_credit(spec["method"])),
                schedule=lambda p: 1.0 - p,
                diagnostics_every=1 if spec["diagnostics"] else 0,
                generation=spec["generation"] if spec["generation"] == "static" else "hf",
            )
        ph = _Phases(cuda)
        gen = trainer._generate_single_turn

        def counting(*x, **k):
            ids, logps = gen(*x, **k)
            ph.tokens += sum(len(c) for c in ids)
            return ids, logps

        trainer._generate_single_turn = counting
        ph.wrap(trainer, "_generate_single_turn", "generation")
        ph.wrap(trainer, "_calculate_rewards", "reward")
        ph.wrap(trainer, "_generate_and_score_completions", "rollout")
        ph.wrap(trainer, "training_step", "training_step")
        if isinstance(trainer, CreditGRPOTrainer):
            ph.wrap(trainer, "_advantage_phase", "credit_adv")  # inside the loss forward
            ph.wrap(trainer.credit, "mask_phase", "credit_mask")  # at rollout time
            ph.wrap(trainer, "measure_update_kl", "diag_kl")  # after the optimizer step
            ph.wrap(trainer, "_log_percentile_entropy", "diag_in_step")  # inside the credit phase

        class Timer(TrainerCallback):
            def on_step_begin(self, *x, **k):
                ph.sync()
                ph.now.clear()
                ph.tokens = 0
                self.t = time.perf_counter()

            def on_step_end(self, *x, **k):
                ph.sync()
                total = time.perf_counter() - self.t
                n = dict(ph.now)
                g, r, ro = n.get("generation", 0.0), n.get("reward", 0.0), n.get("rollout", 0.0)
                c_adv, c_mask = n.get("credit_adv", 0.0), n.get("credit_mask", 0.0)
                ts = n.get("training_step", 0.0)
                d_in, d_kl = n.get("diag_in_step", 0.0), n.get("diag_kl", 0.0)
                ph.steps.append(
                    {
                        "total": total,
                        "generation": g,
                        "reward": r,
                        "rollout_other": max(ro - g - r - c_mask, 0.0),
                        "credit": max(c_adv + c_mask - d_in, 0.0),
                        "diagnostics": d_in + d_kl,
                        "fwd_bwd": max(ts - ro - c_adv, 0.0),
                        "optimizer_other": max(total - ts - d_kl, 0.0),
                    }
                )
                ph.step_tokens.append(ph.tokens)

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.add_callback(Timer())
        trainer.train()
    timed = ph.steps[a.warmup :] or ph.steps
    toks = ph.step_tokens[a.warmup :] or ph.step_tokens
    s = statistics.median(x["total"] for x in timed)
    res = {
        "s_per_step": s,
        "phases": {p: statistics.mean(x[p] for x in timed) for p in PHASES},
        "tokens_per_step": statistics.mean(toks),
        "tokens_per_s": statistics.mean(toks) / s,
        "n_params": n_params,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if cuda:
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["gpu"] = torch.cuda.get_device_name()
    decoder = getattr(trainer, "decoder", None)
    if decoder is not None:
        res["decoder"] = {k: v for k, v in decoder.stats.items() if k != "tokens"}
    return res


def _spread(xs: list[float]) -> str:
    return f"{min(xs):.2f}–{max(xs):.2f}" if len(xs) > 1 else "–"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m crs.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--model", choices=tuple(SIZES), default="tiny", help="model size (random weights above tiny)"
    )
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default=None, help="default: bf16 on cuda, fp32 on cpu"
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: 8 cpu, 4 cuda)")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out (allocation, graph capture)")
    p.add_argument("--batch", type=int, default=64, help="completions per step")
    p.add_argument("--tokens", type=int, default=32, help="max completion length")
    p.add_argument("--rounds", "--repeats", type=int, default=3, dest="rounds")
    p.add_argument("--variants", default=None, help=f"comma-separated (cpu default: {CPU_VARIANTS})")
    p.add_argument("--force-length", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--json", default=None, help="write every measurement here (rewritten after every round)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no round that would end past this many seconds (estimated from the rounds so far): "
        "a time-limited GPU call keeps its complete rounds and their JSON",
    )
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "MODEL_DIR"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.precision = a.precision or ("bf16" if a.device == "cuda" else "fp32")
    a.steps = a.steps or (4 if a.device == "cuda" else 8)
    if a.child:
        print(json.dumps(_child(a.child[0], a.child[1], a)))
        return
    variants = (a.variants or (CUDA_VARIANTS if a.device == "cuda" else CPU_VARIANTS)).split(",")
    for v in variants:
        parse_variant(v)
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("crs: error: --device cuda but no CUDA device is visible")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from crs.testing import build_tiny_model

    results: dict[str, list[dict]] = {v: [] for v in variants}
    passthrough = [
        f"--{k}={getattr(a, k)}"
        for k in ("device", "model", "precision", "steps", "warmup", "batch", "tokens")
    ]
    if a.force_length is not None:
        passthrough.append("--force-length" if a.force_length else "--no-force-length")
    t0 = time.perf_counter()
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "model"))
        for r in range(a.rounds):
            elapsed = time.perf_counter() - t0
            if a.budget_s is not None and done and elapsed * (done + 1) / done > a.budget_s:
                print(
                    f"crs: stopping after {done} of {a.rounds} rounds: another would pass --budget-s {a.budget_s:g} "
                    f"({elapsed:.0f} s so far)",
                    file=sys.stderr,
                    flush=True,
                )
                break
            for v in variants:
                out = subprocess.run(
                    [sys.executable, "-m", "crs.perf", "--child", v, model_dir, *passthrough],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )
                if out.returncode != 0:
                    raise SystemExit(f"variant {v} failed:\n{out.stderr[-3000:]}")
                results[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
                x = results[v][-1]
                print(
                    f"round {r + 1}/{a.rounds} {v}: {x['s_per_step']:.3f} s/step, {x['tokens_per_s']:.0f} tok/s",
                    file=sys.stderr,
                    flush=True,
                )
            done = r + 1
            _write_json(a, results, variants, done)  # complete rounds survive a killed call
    print_table(summarize(results, variants, a), a)


def _write_json(a, results: dict[str, list[dict]], variants: list[str], rounds_done: int) -> None:
    if a.json:
        report = {"args": vars(a), "rounds_done": rounds_done, "summary": summarize(results, variants, a)}
        Path(a.json).write_text(json.dumps({**report, "runs": results}, indent=2))


def summarize(results: dict[str, list[dict]], variants: list[str], a) -> dict[str, Any]:
    base = variants[0]
    out: dict[str, Any] = {"baseline": base, "variants": {}}
    base_times = [x["s_per_step"] for x in results[base]]
    for v in variants:
        times = [x["s_per_step"] for x in results[v]]
        ratios = [t / b for t, b in zip(times, base_times)]
        mem_key = "peak_gpu_mb" if a.device == "cuda" else "peak_rss_mb"
        out["variants"][v] = {
            "s_per_step_median": statistics.median(times),
            "s_per_step_rounds": times,
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "speedup_vs_baseline": 1 / statistics.median(ratios),
            "tokens_per_s": statistics.median(x["tokens_per_s"] for x in results[v]),
            "tokens_per_step": statistics.median(x["tokens_per_step"] for x in results[v]),
            "peak_mem_mb": statistics.median(x[mem_key] for x in results[v]),
            "phases_s": {ph: statistics.median(x["phases"][ph] for x in results[v]) for ph in PHASES},
        }
    out["rounds"] = len(base_times)
    out["baseline_round_spread"] = max(base_times) / min(base_times) - 1
    return out


def print_table(report: dict[str, Any], a) -> None:
    from rich.console import Console
    from rich.table import Table

    base = report["baseline"]
    mem = "peak GPU MB" if a.device == "cuda" else "peak RSS MB"
    table = Table(
        title=f"{a.model} model on {a.device} ({a.precision}), {a.batch} completions × ≤{a.tokens} tokens, "
        f"{a.steps} steps (first {a.warmup} left out), {report['rounds']} interleaved rounds; ratios paired per round vs {base}"
    )
    for col in ("variant", "s/step", f"× {base} (min–max)", "speed-up", "tok/s", mem, *PHASES):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v, s in report["variants"].items():
        table.add_row(
            v,
            f"{s['s_per_step_median']:.3f}",
            f"{s['ratio_median']:.2f} ({s['ratio_min']:.2f}–{s['ratio_max']:.2f})",
            f"{s['speedup_vs_baseline']:.2f}×",
            f"{s['tokens_per_s']:.0f}",
            f"{s['peak_mem_mb']:.0f}",
            *(f"{s['phases_s'][ph]:.3f}" for ph in PHASES),
        )
    Console(width=220).print(table)
    print(f"{base} step time spread over rounds: {report['baseline_round_spread'] * 100:.0f}% (max/min − 1)")


if __name__ == "__main__":
    main()
