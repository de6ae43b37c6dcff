"""The embedded default model: a toy Qwen2 warm-started on the arithmetic task, built offline by crs.

Machines running crs may have no model hub, so crs builds its own default policy:

1. a tiny BPE tokenizer trained in-process on the task's text, with every digit a single token
   (``pre_tokenizers.Digits(individual_digits=True)``) so numbers are spelled digit by digit;
2. a toy-size ``Qwen2ForCausalLM`` (standard ``transformers`` architecture, tied embeddings), so
   everything downstream (TRL, PEFT, generation) treats it like any Hub checkpoint;
3. a short supervised warm-start with TRL's ``SFTTrainer`` on *noisy* worked solutions
   (``error_rate``), deliberately stopped early: the resulting policy solves a fraction of the
   problems at temperature 1 and much more with k samples, which is the regime where RL has
   signal (non-zero reward variance within groups) and room to improve.

The defaults of :class:`EmbeddedModelConfig` and of
:class:`crs.benchmarks.arithmetic.ArithmeticConfig` are calibrated together (see the field help
texts). Built models are cached under a content hash of their configuration, so
``ensure_embedded_model`` is cheap after the first call and safe under concurrent builders.

Calibration (2 shared CPU cores, torch 2.13 CPU, 2 threads, default task: 3-4 terms, operands
0-20, ``+-``, eval split of 256 prompts, k=8, temperature 1): the default build has 343k parameters
and a 106-token vocabulary, pretrains in ~105 s (SFT ~90 s) and gives pass@1 0.34, pass@8 0.92,
greedy accuracy 0.73, mean token entropy 0.11 nats (low on average because most tokens are copied
operands and punctuation; the mass sits on the result digits). Sharpening alone would help
(pass@1 0.47 at temperature 0.7), so RL has an easy first direction. With crs's default ``trainer``
settings (conf/trainer/default.yaml: 300 steps, ~0.3 s/step, ~90 s) mean reward rose from 0.32-0.33 over the first 10% of steps to
0.41-0.42 over the last 10% (seeds 0 and 1), and eval pass@1 from 0.34 to 0.42-0.45, while greedy
accuracy (0.73 -> ~0.58) and pass@8 fell: the usual RLVR sharpening trade-off. Larger learning
rates (>= 2e-4) or Adam's default beta1=0.9 were worse: with 64 completions per step the gradient
is noisy and Adam's per-parameter normalisation turns noise into full-size steps.

Example::

    python -c "from pathlib import Path; from crs.embedded import EmbeddedModelConfig, ensure_embedded_model; \
print(ensure_embedded_model(EmbeddedModelConfig(), {'name': 'arithmetic'}, Path('.cache/models')))"
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Bump when the builder's behaviour changes (tokenizer, architecture, SFT recipe): it is part of the
# cache key, so stale cached models are never reused.
BUILDER_VERSION = 1

SPECIAL_TOKENS = {"unk_token": "<unk>", "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


@dataclass
class EmbeddedModelConfig:
    """How the embedded model is built. Defaults are the calibrated values."""

    seed: int = field(
        default=0,
        metadata={
            "help": "Seed for weight init, SFT data and SFT shuffling. Same config => identical weights."
        },
    )
    vocab_size: int = field(
        default=128,
        metadata={
            "help": "Target BPE vocabulary size (printable ASCII + specials + merges learned on task text). "
            "Bigger merges more text into single tokens; digits always stay single tokens."
        },
    )
    hidden_size: int = field(
        default=96,
        metadata={
            "help": "Model width. Wider = learns the task faster per SFT step but slower generation, which "
            "is the CPU bottleneck of RL."
        },
    )
    num_layers: int = field(
        default=3,
        metadata={
            "help": "Transformer layers. Multi-digit arithmetic needs >= 2; each layer adds generation cost."
        },
    )
    num_heads: int = field(
        default=4, metadata={"help": "Attention heads (hidden_size must be divisible by it)."}
    )
    num_kv_heads: int = field(
        default=4, metadata={"help": "Key/value heads (grouped-query attention when < num_heads)."}
    )
    intermediate_size: int = field(
        default=256,
        metadata={"help": "MLP width (typically 2-4 x hidden_size); where the 'arithmetic tables' live."},
    )
    max_position_embeddings: int = field(
        default=128, metadata={"help": "Longest prompt + completion in tokens; the task needs < 64."}
    )
    n_sft: int = field(
        default=20000,
        metadata={
            "help": "SFT examples generated. With sft_steps x sft_batch_size above it the data repeats "
            "(epochs); below it, each example is seen at most once."
        },
    )
    sft_steps: int = field(
        default=1200,
        metadata={
            "help": "SFT optimizer steps: the main strength knob. More steps => higher pass@1 and lower "
            "entropy (less for RL to do); fewer => weaker and noisier policy. Linear in pretrain time."
        },
    )
    sft_batch_size: int = field(default=32, metadata={"help": "SFT batch size (sequences per step)."})
    learning_rate: float = field(
        default=3e-3,
        metadata={"help": "Peak SFT learning rate (AdamW, cosine decay). Toy models tolerate large rates."},
    )
    warmup_steps: int = field(default=30, metadata={"help": "Linear warm-up steps of the SFT learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay during SFT."})
    error_rate: float = field(
        default=0.3,
        metadata={
            "help": "Fraction of SFT targets with one perturbed step (error propagates to the answer). "
            "Higher => the warm-started policy reproduces more slips at temperature 1 (lower pass@1, "
            "higher entropy) while greedy/pass@k stay high: headroom that RL can recover."
        },
    )
    eval_k: int = field(default=8, metadata={"help": "Samples per eval prompt for pass@1/pass@k after SFT."})
    eval_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the post-SFT evaluation (match RL's)."}
    )
    eval_max_new_tokens: int = field(
        default=48, metadata={"help": "Generation budget of the post-SFT evaluation (task needs <= ~40)."}
    )

    @classmethod
    def from_any(cls, cfg: EmbeddedModelConfig | Mapping[str, Any] | None) -> EmbeddedModelConfig:
        """Accept the dataclass, a dict or an OmegaConf ``DictConfig`` (unknown keys are ignored)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if dataclasses.is_dataclass(cfg):
            cfg = asdict(cfg)  # type: ignore[arg-type]
        known = {f.name for f in fields(cls)}
        return cls(**{k: cfg[k] for k in cfg if k in known and cfg[k] is not None})


def as_model_config(cfg: EmbeddedModelConfig | Mapping[str, Any] | None) -> EmbeddedModelConfig:
    """Small helper: dataclass / dict / ``DictConfig`` -> :class:`EmbeddedModelConfig`."""
    return EmbeddedModelConfig.from_any(cfg)


# Other tasks the embedded model can warm-start on: benchmark name -> its module, which has ``TaskConfig``
# (``from_mapping``, ``sft_key``), ``corpus``, ``sft_dataset``, ``eval_set`` and ``verifier`` (the SFT data
# comes from the benchmark module). The default arithmetic task and its cache key are unchanged.
OTHER_TASKS = {"slate_rank": "crs.benchmarks.slate_rank"}


def _bench_config(bench_cfg: Mapping[str, Any] | None):
    from crs.benchmarks.arithmetic import ArithmeticConfig

    name = "arithmetic" if bench_cfg is None else bench_cfg.get("name", "arithmetic")
    if name in OTHER_TASKS:
        import importlib

        return importlib.import_module(OTHER_TASKS[name]).TaskConfig.from_mapping(bench_cfg)
    # bifurcation (crs/benchmarks/bifurcation.py) uses the arithmetic task's prompts and policy
    if name not in ("arithmetic", "bifurcation"):
        raise ValueError(
            f"the embedded model is built for the {', '.join(['arithmetic', *OTHER_TASKS])} benchmarks, "
            f"not {name!r}"
        )
    return ArithmeticConfig.from_mapping(bench_cfg)


def _task_module(acfg):
    """The benchmark module a task config comes from (its corpus, SFT data, eval split, verifier)."""
    import importlib

    return importlib.import_module(type(acfg).__module__)


def _eval_split(acfg) -> tuple[list[str], list[str], Any]:
    """``(prompts, answers, verify)`` of the task's eval split."""
    mod = _task_module(acfg)
    if hasattr(mod, "eval_set"):
        prompts, answers = mod.eval_set(acfg)
        return prompts, answers, mod.verifier(acfg)
    ev = mod.eval_problems(acfg)
    return [p.prompt for p in ev], [str(p.answer) for p in ev], mod.verify


# ----------------------------------------------------------------------------------------------
# tokenizer and architecture


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable-unicode map used by the ByteLevel pre-tokenizer/decoder.
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer(texts: list[str], vocab_size: int = 128):
    """Train a byte-level BPE tokenizer on ``texts`` with single-digit tokens.

    The initial alphabet is printable ASCII plus newline (not all 256 bytes) to keep the vocabulary
    small; other bytes map to ``<unk>``. Digits are split off individually *before* BPE, so no merge
    can ever contain a digit: numbers are always spelled one token per digit.

    Returns:
        ``PreTrainedTokenizerFast`` with ``<unk> <pad> <s> </s>`` specials, left padding, no
        automatically added special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    b2u = _bytes_to_unicode()
    alphabet = [b2u[b] for b in [10, *range(32, 127)]]
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKENS[k] for k in ("unk_token", "pad_token", "bos_token", "eos_token")],
        initial_alphabet=alphabet,
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)
    hf_tok.model_max_length = 128
    return hf_tok


def build_model(tokenizer, cfg: EmbeddedModelConfig):
    """A randomly initialised ``Qwen2ForCausalLM`` of the configured size (seed set by the caller).

    ``cfg`` needs ``hidden_size``, ``intermediate_size``, ``num_layers``, ``num_heads``,
    ``max_position_embeddings`` and optionally ``num_kv_heads`` (default: ``num_heads``), so the
    environment policies (:mod:`crs.envs.policy`) build the same architecture.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    mcfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=getattr(cfg, "num_kv_heads", cfg.num_heads),
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(mcfg)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    return model


# ----------------------------------------------------------------------------------------------
# SFT warm-start


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers/datasets/TRL chatter (progress bars, info logs, warnings) temporarily."""
    import datasets
    import transformers

    old_tf = transformers.logging.get_verbosity()
    old_ds = datasets.utils.logging.get_verbosity()
    ds_bars = datasets.utils.is_progress_bar_enabled()
    loggers = [logging.getLogger(n) for n in ("trl", "accelerate", "torch")]
    old_levels = [lg.level for lg in loggers]
    tf_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # e.g. "Writing model shards"
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(old_tf)
        datasets.utils.logging.set_verbosity(old_ds)
        if ds_bars:
            datasets.enable_progress_bars()
        if tf_bars:
            transformers.utils.logging.enable_progress_bar()
        for lg, lvl in zip(loggers, old_levels):
            lg.setLevel(lvl)


def build_and_sft(
    model_cfg: EmbeddedModelConfig | Mapping[str, Any] | None,
    bench_cfg: Mapping[str, Any] | None,
    show_progress: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train the tokenizer, initialise the model and run the SFT warm-start (nothing is saved).

    Returns:
        ``(model, tokenizer, sft_info)`` where ``sft_info`` has ``steps``, ``first_loss``,
        ``final_loss``, ``losses`` (list of ``(step, loss)``) and ``wall_time_s``.
    """
    from transformers import TrainerCallback, set_seed

    cfg = as_model_config(model_cfg)
    acfg = _bench_config(bench_cfg)
    corpus, sft_dataset = _task_module(acfg).corpus, _task_module(acfg).sft_dataset
    with _quiet():
        tokenizer = build_tokenizer(corpus(acfg, n=2000, seed=cfg.seed), cfg.vocab_size)
        tokenizer.model_max_length = cfg.max_position_embeddings
        set_seed(cfg.seed)  # weight init is the first use of the torch RNG after this point
        model = build_model(tokenizer, cfg)
        train_ds = sft_dataset(cfg.n_sft, cfg.seed, cfg.error_rate, acfg).select_columns(
            ["prompt", "completion"]
        )
        losses: list[tuple[int, float]] = []

        class Recorder(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    losses.append((state.global_step, float(logs["loss"])))

        callbacks: list[Any] = [Recorder()]
        if show_progress:
            from crs.progress import RichProgressCallback, fmt

            callbacks.append(
                RichProgressCallback("SFT warm-start", stats=lambda s: f"loss {fmt(s.get('loss'))}")
            )
        t0 = time.perf_counter()
        if cfg.sft_steps <= 0:  # random init (Trainer would read max_steps=0 as "use epochs")
            model.config.use_cache = True
            return (
                model,
                tokenizer,
                {"steps": 0, "first_loss": None, "final_loss": None, "losses": [], "wall_time_s": 0.0},
            )
        trainer = sft_warm_start(model, tokenizer, train_ds, **sft_settings(cfg), callbacks=callbacks)
        model = trainer.model
        model.config.use_cache = True
    info = {
        "steps": cfg.sft_steps,
        "first_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "losses": losses,
        "wall_time_s": time.perf_counter() - t0,
    }
    return model, tokenizer, info


def sft_settings(cfg: EmbeddedModelConfig) -> dict[str, Any]:
    """:func:`sft_warm_start`'s knobs from an embedded model's config (every embedded variant warm-starts alike)."""
    return dict(
        steps=cfg.sft_steps,
        batch_size=cfg.sft_batch_size,
        lr=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        logging_steps=max(1, cfg.sft_steps // 20),
        max_length=cfg.max_position_embeddings,
        seed=cfg.seed,
    )


def sft_warm_start(
    model,
    tokenizer,
    train_ds,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    logging_steps: int,
    max_length: int,
    seed: int,
    weight_decay: float = 0.0,
    callbacks: list | None = None,
):
    """TRL SFT of a tiny model on ``prompt``/``completion`` rows, on the CPU, nothing saved; returns the trainer.

    The one warm start of crs's own models (the embedded policy, the environment policies): completion-only
    loss (the solution and the EOS TRL appends, not the prompt), cosine schedule, no packing.
    """
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory(prefix="crs-sft-") as tmp:
        args = SFTConfig(
            output_dir=tmp,  # nothing is saved there (save_strategy="no"); the caller saves
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            logging_steps=logging_steps,
            completion_only_loss=True,
            max_length=max_length,
            packing=False,
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            bf16=False,
            use_cpu=True,
            activation_checkpointing=False,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=train_ds, processing_class=tokenizer, callbacks=callbacks
        )
        # with disable_tqdm=True, Trainer prints every log dict; the rich bar replaces both
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return trainer


def pretrain(
    model_cfg: EmbeddedModelConfig | Mapping[str, Any] | None,
    bench_cfg: Mapping[str, Any] | None,
    out_dir: Path,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Build tokenizer + model, warm-start with SFT, save, evaluate and report.

    Args:
        model_cfg: :class:`EmbeddedModelConfig` (or a mapping of its fields).
        bench_cfg: arithmetic benchmark config (mapping of
            :class:`~crs.benchmarks.arithmetic.ArithmeticConfig` fields; ``None`` = defaults).
        out_dir (`Path`): where ``save_pretrained`` writes model + tokenizer and ``crs_pretrain.json``.
        show_progress (`bool`): draw a ``rich`` progress bar during SFT.

    Returns:
        The report also written to ``out_dir/crs_pretrain.json``: ``builder_version``, ``config``,
        ``benchmark``, ``n_params``, ``vocab_size``, ``sft`` (losses), ``eval`` (see
        :func:`crs.evaluate.evaluate_model`, on the benchmark's eval split) and ``wall_time_s``
        (``total``, ``sft``, ``eval``).
    """
    import torch

    from crs.evaluate import evaluate_model

    cfg = as_model_config(model_cfg)
    acfg = _bench_config(bench_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tokenizer, sft_info = build_and_sft(cfg, asdict(acfg), show_progress=show_progress)
    with _quiet():
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        prompts, answers, verify = _eval_split(acfg)
        t_eval = time.perf_counter()
        metrics = evaluate_model(
            model,
            tokenizer,
            prompts,
            answers,
            verify,
            k=cfg.eval_k,
            temperature=cfg.eval_temperature,
            max_new_tokens=cfg.eval_max_new_tokens,
            seed=cfg.seed,
        )
        t_eval = time.perf_counter() - t_eval
    report = {
        "builder_version": BUILDER_VERSION,
        "config": asdict(cfg),
        "benchmark": asdict(acfg),
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "sft": {k: v for k, v in sft_info.items() if k != "wall_time_s"},
        "eval": metrics,
        "wall_time_s": {"total": time.perf_counter() - t0, "sft": sft_info["wall_time_s"], "eval": t_eval},
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "crs_pretrain.json").write_text(json.dumps(report, indent=2))
    return report


# ----------------------------------------------------------------------------------------------
# cache


def cache_key(
    model_cfg: EmbeddedModelConfig | Mapping[str, Any] | None, bench_cfg: Mapping[str, Any] | None
) -> str:
    """Short content hash of everything that determines the built model (and its report)."""
    cfg = as_model_config(model_cfg)
    acfg = _bench_config(bench_cfg)
    payload = {"builder": BUILDER_VERSION, "model": asdict(cfg), "task": acfg.sft_key()}
    if acfg.name in OTHER_TASKS:  # the arithmetic key stays what it always was
        payload["task_name"] = acfg.name
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def ensure_embedded_model(
    model_cfg: EmbeddedModelConfig | Mapping[str, Any] | None,
    bench_cfg: Mapping[str, Any] | None,
    cache_dir: Path,
    show_progress: bool = True,
) -> Path:
    """Return ``cache_dir/embedded-<key>``, building it with :func:`pretrain` on a cache miss.

    Built in a private temporary folder and published atomically, one builder at a time
    (:func:`crs.cache.publish`), so a reader never sees a half-written model and concurrent jobs build it once.
    """
    from crs.cache import publish

    final = Path(cache_dir) / f"embedded-{cache_key(model_cfg, bench_cfg)}"
    _say_if_waiting(final, "crs_pretrain.json")
    return publish(
        final,
        "crs_pretrain.json",
        lambda tmp: pretrain(model_cfg, bench_cfg, tmp, show_progress=show_progress),
    )


def _say_if_waiting(final: Path, marker: str) -> None:
    """One line when another process holds ``final``'s build lock (:func:`crs.cache.publish` waits on it)."""
    from filelock import FileLock, Timeout

    lock = final.parent / f".{final.name}.lock"
    if (final / marker).exists() or not lock.exists():
        return
    try:
        with FileLock(str(lock), timeout=0):
            return
    except Timeout:
        print(
            f"crs: waiting for another process that is building {final.name} (lock {lock}); "
            "it is built once and then shared",
            flush=True,
        )
