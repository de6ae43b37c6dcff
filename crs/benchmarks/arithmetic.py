"""Chained integer arithmetic: crs's embedded, offline, verifiable multi-step task.

A prompt is a left-to-right chain of integer operations; the target completion writes every
intermediate step and then the final answer, so a trajectory has a real *early / middle / tail*
(first steps, later steps that depend on them, the answer) and errors propagate along it::

    prompt:      "Q: 7+5-3+8\\nA:"
    completion:  " 7+5=12, 12-3=9, 9+8=17. Answer: 17"

The chain is evaluated strictly left to right (each step applies the next operator to the running
result), also when ``ops`` contains ``*``: the written steps make the order explicit.

Everything is generated procedurally from string-seeded ``random.Random`` streams (no global RNG),
so the same seed always gives the same prompts. The eval split depends only on ``eval_seed`` (not
on the run seed) and is removed from every train / SFT split, so runs with different seeds are
scored on the same held-out prompts.

Example::

    crs train benchmark=arithmetic benchmark.max_terms=5 benchmark.ops="+-*"
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the config schema above must not load datasets
    from datasets import Dataset

from crs.benchmarks import Benchmark, register_benchmark

# The exact surface format. Kept in one place because the verifier, the step parser and the
# tokenizer corpus (crs.embedded) all depend on it.
PROMPT_TEMPLATE = "Q: {expr}\nA:"
ANSWER_PREFIX = "Answer: "
_ANSWER_TAIL_RE = re.compile(r"Answer: (-?\d+)\Z")
_STEP_RE = re.compile(r"(-?\d+)([+\-*])(\d+)=(-?\d+)")
_EXPR_RE = re.compile(r"Q: (\d+(?:[+\-*]\d+)+)\nA:\Z")
_TERM_RE = re.compile(r"([+\-*])(\d+)")


@dataclass
class ArithmeticConfig:
    """Task knobs. Defaults are the calibrated ones (see ``crs.embedded`` for the calibration)."""

    name: str = field(default="arithmetic", metadata={"help": "Registry name of the benchmark."})
    n_train: int = field(
        default=4000,
        metadata={
            "help": "Number of RL training prompts (sampled with replacement from the task space, eval "
            "prompts excluded). Only needs to exceed steps x prompts/step (default 300 x 8) to avoid "
            "repeating prompts within a run."
        },
    )
    n_eval: int = field(
        default=256,
        metadata={
            "help": "Number of held-out eval prompts (unique). More prompts = tighter pass@k estimates but "
            "slower evaluation (generation dominates on CPU)."
        },
    )
    eval_seed: int = field(
        default=1234,
        metadata={
            "help": "Seed of the eval split. Independent of the run seed so that all runs of a sweep are "
            "scored on the same prompts; change it only to get a different fixed test set."
        },
    )
    min_terms: int = field(
        default=3,
        metadata={"help": "Minimum number of operands in a chain (>= 2). Each extra term adds one step."},
    )
    max_terms: int = field(
        default=4,
        metadata={
            "help": "Maximum number of operands. More terms = longer trajectories (more steps for credit "
            "assignment, more error propagation) but longer completions, i.e. slower CPU generation "
            "(~8 tokens per step)."
        },
    )
    max_operand: int = field(
        default=20,
        metadata={
            "help": "Operands are drawn uniformly from [0, max_operand]. Larger = harder carries/borrows "
            "and more multi-digit tokens."
        },
    )
    ops: str = field(
        default="+-",
        metadata={
            "help": "Operators to draw from, e.g. '+-' or '+-*'. '*' makes the task much harder for a tiny "
            "model and grows numbers fast (bounded by max_value)."
        },
    )
    allow_negative: bool = field(
        default=False,
        metadata={
            "help": "Whether intermediate results may go below zero. False keeps every number non-negative "
            "(a '-' whose result would be negative is redrawn), which is easier for small models."
        },
    )
    max_value: int = field(
        default=99,
        metadata={
            "help": "Bound on |intermediate result|; a step that would exceed it is redrawn. Keeps numbers "
            "short (tokens are single digits) when '*' is enabled."
        },
    )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | ArithmeticConfig | None) -> ArithmeticConfig:
        """Build from a dict / OmegaConf ``DictConfig`` (unknown keys such as Hydra's are ignored)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, ArithmeticConfig):
            return cfg
        kwargs = {f.name: cfg.get(f.name) for f in fields(cls) if cfg.get(f.name) is not None}
        out = cls(**kwargs)
        out.validate()
        return out

    def validate(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms:
            raise ValueError(f"need 2 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}")
        if self.max_operand < 1:
            raise ValueError("max_operand must be >= 1")
        if not self.ops or set(self.ops) - set("+-*"):
            raise ValueError(f"ops must be a non-empty subset of '+-*', got {self.ops!r}")
        if self.max_value < self.max_operand:
            raise ValueError("max_value must be >= max_operand")

    def sft_key(self) -> dict[str, Any]:
        """The fields that change the SFT data / tokenizer corpus (used in model cache keys)."""
        d = asdict(self)
        for k in ("n_train", "name"):  # RL-only fields do not change the warm-started model
            d.pop(k)
        return d


# ----------------------------------------------------------------------------------------------
# generation


@dataclass(frozen=True)
class Problem:
    """One chain: ``terms[0] ops[0] terms[1] ops[1] ...`` evaluated left to right."""

    terms: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def expr(self) -> str:
        return str(self.terms[0]) + "".join(f"{o}{t}" for o, t in zip(self.ops, self.terms[1:]))

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(expr=self.expr)

    def results(self) -> list[int]:
        """Running results after each step (length ``len(ops)``)."""
        out, acc = [], self.terms[0]
        for o, t in zip(self.ops, self.terms[1:]):
            acc = _apply(acc, o, t)
            out.append(acc)
        return out

    @property
    def answer(self) -> int:
        return self.results()[-1]


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def sample_problem(rng: random.Random, cfg: ArithmeticConfig) -> Problem:
    """Draw one chain; steps that break ``allow_negative`` / ``max_value`` are redrawn."""
    n = rng.randint(cfg.min_terms, cfg.max_terms)
    acc = rng.randint(0, cfg.max_operand)
    terms, ops = [acc], []
    for _ in range(n - 1):
        for _attempt in range(100):
            op = rng.choice(cfg.ops)
            b = rng.randint(0, cfg.max_operand)
            r = _apply(acc, op, b)
            if abs(r) <= cfg.max_value and (cfg.allow_negative or r >= 0):
                break
        else:  # e.g. acc=0 with ops="-" and allow_negative=False: '+0'/'*' fallback keeps it valid
            op, b, r = cfg.ops[0], 0, _apply(acc, cfg.ops[0], 0)
        terms.append(b)
        ops.append(op)
        acc = r
    return Problem(tuple(terms), tuple(ops))


def solution_text(problem: Problem, wrong_step: int | None = None, delta: int = 0) -> str:
    """The target completion, optionally with step ``wrong_step``'s result off by ``delta``.

    The error propagates: later steps chain from the wrong value and are computed correctly from it,
    and the final answer is the propagated (wrong) value, like a real arithmetic slip.
    """
    acc, parts = problem.terms[0], []
    for i, (o, t) in enumerate(zip(problem.ops, problem.terms[1:])):
        r = _apply(acc, o, t)
        if i == wrong_step:
            r += delta
        parts.append(f"{acc}{o}{t}={r}")
        acc = r
    return " " + ", ".join(parts) + f". {ANSWER_PREFIX}{acc}"


def _rng(kind: str, seed: int) -> random.Random:
    # String seeds give independent, platform-stable streams per split, so train/eval/sft never
    # share draws even when the run seed equals eval_seed.
    return random.Random(f"crs-arithmetic-{kind}-{seed}")


def eval_problems(cfg: ArithmeticConfig) -> list[Problem]:
    """``cfg.n_eval`` unique problems, determined by ``cfg.eval_seed`` only."""
    rng = _rng("eval", cfg.eval_seed)
    seen: dict[str, Problem] = {}
    attempts = 0
    while len(seen) < cfg.n_eval:
        attempts += 1
        if attempts > 100 * cfg.n_eval + 1000:
            raise ValueError(
                f"task space too small for n_eval={cfg.n_eval} unique prompts; increase difficulty"
            )
        p = sample_problem(rng, cfg)
        seen.setdefault(p.prompt, p)
    return list(seen.values())


def sample_problems(
    n: int, kind: str, seed: int, cfg: ArithmeticConfig, exclude: Iterable[str] = ()
) -> list[Problem]:
    """``n`` problems (repeats allowed) from stream ``kind``/``seed``, skipping prompts in ``exclude``."""
    rng, excl, out = _rng(kind, seed), set(exclude), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError("task space is (almost) exhausted by the eval split; increase difficulty")
        p = sample_problem(rng, cfg)
        if p.prompt not in excl:
            out.append(p)
    return out


def _to_dataset(problems: list[Problem]) -> Dataset:
    from datasets import Dataset

    return Dataset.from_dict(
        {"prompt": [p.prompt for p in problems], "answer": [str(p.answer) for p in problems]}
    )


def sft_dataset(
    n: int,
    seed: int,
    error_rate: float = 0.0,
    cfg: Mapping[str, Any] | ArithmeticConfig | None = None,
    exclude_eval: bool = True,
) -> Dataset:
    """Prompt/completion pairs for warm-starting a model with SFT.

    Args:
        n (`int`): number of examples.
        seed (`int`): seed of the SFT stream (independent of the train/eval streams).
        error_rate (`float`): probability that an example has one step whose result is perturbed by a
            small non-zero delta (the error then propagates to the final answer). Noisy targets keep
            the warm-started policy imperfect and stochastic, which is what RL then has to fix.
        cfg: task config; defaults to :class:`ArithmeticConfig`.
        exclude_eval (`bool`): drop the eval split's prompts so SFT never sees test prompts.

    Returns:
        `datasets.Dataset` with columns ``prompt``, ``completion``, ``answer`` (the *true* answer) and
        ``noisy`` (whether the completion contains a perturbed step).
    """
    acfg = ArithmeticConfig.from_mapping(cfg)
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    exclude = [p.prompt for p in eval_problems(acfg)] if exclude_eval else []
    problems = sample_problems(n, "sft", seed, acfg, exclude)
    noise_rng = _rng("sft-noise", seed)
    prompts, completions, answers, noisy = [], [], [], []
    for p in problems:
        wrong, delta = None, 0
        if noise_rng.random() < error_rate:
            wrong = noise_rng.randrange(len(p.ops))
            delta = noise_rng.choice([-10, -2, -1, 1, 2, 10])
            true_r = p.results()[wrong]
            if not acfg.allow_negative and true_r + delta < 0:
                delta = abs(delta)
        prompts.append(p.prompt)
        completions.append(solution_text(p, wrong, delta))
        answers.append(str(p.answer))
        noisy.append(wrong is not None)
    from datasets import Dataset

    return Dataset.from_dict(
        {"prompt": prompts, "completion": completions, "answer": answers, "noisy": noisy}
    )


def corpus(
    cfg: Mapping[str, Any] | ArithmeticConfig | None = None, n: int = 2000, seed: int = 0
) -> list[str]:
    """Prompt+completion strings covering the task's alphabet (for training a tokenizer)."""
    ds = sft_dataset(n, seed, error_rate=0.0, cfg=cfg, exclude_eval=False)
    return [p + c for p, c in zip(ds["prompt"], ds["completion"])]


# ----------------------------------------------------------------------------------------------
# verification and rewards


def _text(completion: Any) -> str:
    # standard format: a string; conversational format: [{"role": "assistant", "content": ...}]
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    return str(completion)


def extract_answer(completion: str) -> str | None:
    """The final answer if the completion ends with exactly one ``Answer: <int>``, else ``None``."""
    text = completion.strip()
    if text.count("Answer:") != 1:
        return None
    m = _ANSWER_TAIL_RE.search(text)
    return m.group(1) if m else None


def verify(completion: str, answer: str) -> bool:
    """Strict outcome check.

    The stripped completion must end with ``Answer: <int>``, contain ``Answer:`` exactly once, and
    the integer must be written canonically (no ``+``, no leading zeros, no ``-0``) and equal
    ``answer``. Missing answers, two answers and trailing text are all wrong.

    Example::

        >>> verify(" 1+2=3. Answer: 3", "3"), verify(" Answer: 3 Answer: 3", "3"), verify("Answer: 3.", "3")
        (True, False, False)
    """
    got = extract_answer(_text(completion))
    if got is None:
        return False
    try:
        return got == str(int(str(answer).strip()))
    except ValueError:
        return False


def correctness_reward(
    prompts: list[Any] | None,
    completions: list[Any],
    answer: list[str],
    log_metric: Callable[[str, float], None] | None = None,
    **kwargs: Any,
) -> list[float]:
    """TRL reward function: 1.0 if :func:`verify` accepts the completion, else 0.0.

    Args:
        prompts: the prompts (unused; part of TRL's signature).
        completions: ``list[str]`` (standard format) or chat-message lists (conversational format).
        answer: the dataset's ``answer`` column, one per completion.
        log_metric: TRL's per-step scalar logger; receives ``("accuracy", mean)`` so accuracy is logged
            separately from the (possibly shaped / weighted) reward.

    Returns:
        `list[float]` of length ``len(completions)``.
    """
    scores = [1.0 if verify(_text(c), a) else 0.0 for c, a in zip(completions, answer, strict=True)]
    if log_metric is not None and scores:
        log_metric("accuracy", sum(scores) / len(scores))
    return scores


correctness_reward.__name__ = "correctness"  # TRL logs rewards/<__name__>/mean


def parse_prompt(prompt: str) -> tuple[list[int], list[str]] | None:
    """``(terms, ops)`` of a task prompt, or ``None`` if it is not one."""
    m = _EXPR_RE.search(prompt)
    if not m:
        return None
    expr = m.group(1)
    first = re.match(r"\d+", expr)
    assert first is not None
    terms, ops = [int(first.group())], []
    for o, t in _TERM_RE.findall(expr[first.end() :]):
        ops.append(o)
        terms.append(int(t))
    return terms, ops


def step_scores(completion: str, row: Mapping[str, Any] | None = None) -> list[tuple[int, int, float]]:
    """Process-level scores: one ``(char_start, char_end, score)`` per written step ``a op b=c``.

    A step scores 1.0 iff its arithmetic is right (``c == a op b``) and it chains: ``a`` is the
    previous step's written ``c`` (for the first step, the prompt's first term when ``row`` is given).
    With ``row`` (a dataset row with a ``prompt``), step ``i`` must also use the prompt's ``i``-th
    operator and operand, and steps beyond the chain's length score 0.0. Character offsets index
    into ``completion`` as given (not stripped), so they can be mapped to tokens with offsets.

    Example::

        >>> step_scores(" 7+5=12, 12-3=8. Answer: 8")
        [(1, 7, 1.0), (9, 15, 0.0)]
    """
    completion = _text(completion)
    parsed = parse_prompt(str(row["prompt"])) if row is not None and "prompt" in row else None
    out: list[tuple[int, int, float]] = []
    prev: int | None = parsed[0][0] if parsed else None
    for i, m in enumerate(_STEP_RE.finditer(completion)):
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        ok = c == _apply(a, op, b) and (prev is None or a == prev)
        if parsed is not None:
            terms, ops = parsed
            ok = ok and i < len(ops) and ops[i] == op and terms[i + 1] == b
        out.append((m.start(), m.end(), 1.0 if ok else 0.0))
        prev = c
    return out


# ----------------------------------------------------------------------------------------------
# registry entry


@register_benchmark("arithmetic")
def build(cfg: Mapping[str, Any], seed: int) -> Benchmark:
    """Build the benchmark: train split from ``seed``, eval split from ``cfg.eval_seed``.

    Args:
        cfg: dict / ``DictConfig`` with :class:`ArithmeticConfig` keys (missing keys use defaults).
        seed (`int`): run seed; only changes the train split.

    Returns:
        :class:`~crs.benchmarks.Benchmark` with ``prompt``/``answer`` columns, ``[correctness_reward]``,
        :func:`verify`, an ``sft(n, seed, error_rate=0.0)`` factory (:func:`step_scores` is the rule verifier's basis).
    """
    acfg = ArithmeticConfig.from_mapping(cfg)
    ev = eval_problems(acfg)
    train = sample_problems(acfg.n_train, "train", seed, acfg, exclude=[p.prompt for p in ev])
    return Benchmark(
        name=acfg.name,
        train=_to_dataset(train),
        eval=_to_dataset(ev),
        reward_funcs=[correctness_reward],
        verify=verify,
        sft=functools.partial(sft_dataset, cfg=acfg),
        info={"config": asdict(acfg), "format": PROMPT_TEMPLATE},
    )
