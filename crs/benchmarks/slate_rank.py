"""Slate-then-rank: an offline candidate-generation-and-ranking task with two verifiable phases.

F-GRPO (arXiv 2605.12995) trains one completion that first writes an unordered **slate** of candidates
and then a **ranking** of slate items; each phase has its own reward. This is the CPU-sized toy of the
spec (docs/methods/wave3.md §1.6): a pool of items with one-letter ids, each with a colour (upper case,
so colours never look like ids) and a size, and a query colour. The **candidates** are the items of the
query colour (``min_candidates``-``max_candidates``); the **relevant** items are the big candidates (size
>= ``big_from``; ``min_relevant``-``max_relevant`` of them). The gold slate is every candidate (pool
order), the gold ranking the relevant items, biggest first. So each phase needs one skill: the slate
matches colours (coverage of Rel), the ranking reads sizes among the slate (relevant first)::

    prompt:      "Pool: a:R7 b:G3 c:B5 d:R2 e:R6 ... h:G4\\nWant:R\\nA:"
    completion:  " <S> a d e </S> <R> a e </R>"

Rewards (TRL reward functions, so TRL logs both): ``slate_recall`` = |slate ∩ Rel| / |Rel| (the first
``slate_cap`` distinct known ids count), ``rank_ndcg`` = binary NDCG@``ndcg_k`` of the ranking, IDCG over all
relevant pool items; ranked ids outside the slate are dropped (or, ``rank_outside_slate: penalize``,
kept as zero-gain positions), duplicates and unknown ids dropped. A completion that is not exactly
``<S> ids </S> <R> ids </R>`` loses ``format_penalty`` on both phases (its unparsable phases score 0).

:func:`parts` gives the character spans of each phase (for per-phase credit: ``method=f_grpo``) with the
phase's reward. Everything is generated from string-seeded ``random.Random`` streams; the eval split
depends only on ``eval_seed`` and is excluded from every train / SFT split::

    crs train benchmark=slate_rank method=f_grpo loss=dr_grpo
"""

from __future__ import annotations

import functools
import math
import random
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from datasets import Dataset

from crs.benchmarks import Benchmark, register_benchmark
from crs.errors import ConfigError

PROMPT_TEMPLATE = "Pool: {pool}\nWant:{colour}\nA:"
SLATE_OPEN, SLATE_CLOSE, RANK_OPEN, RANK_CLOSE = "<S>", "</S>", "<R>", "</R>"
_FORMAT_RE = re.compile(r"\A\s*<S>(?P<slate>[^<>]*)</S>\s*<R>(?P<rank>[^<>]*)</R>\s*\Z")
_SLATE_RE = re.compile(r"<S>(?P<slate>[^<>]*)</S>")
_ID_RE = re.compile(r"\S+")


@dataclass
class SlateRankConfig:
    """Task knobs (``conf/benchmark/slate_rank.yaml``); each help names the trade-off."""

    name: str = field(default="slate_rank", metadata={"help": "Registry name of the benchmark."})
    n_train: int = field(default=4000, metadata={"help": "RL training prompts (eval prompts excluded)."})
    n_eval: int = field(
        default=128,
        metadata={"help": "Held-out eval prompts (unique); more = tighter estimates, slower eval."},
    )
    eval_seed: int = field(
        default=1234,
        metadata={"help": "Seed of the eval split, independent of the run seed (same test set)."},
    )
    n_items: int = field(
        default=8,
        metadata={
            "help": "Pool size (the paper: 20; the spec's toy: 12). Longer pools = harder attention for the "
            "0.35M embedded model and longer prompts (slower CPU generation)."
        },
    )
    colours: str = field(
        default="RGB",
        metadata={"help": "Colour alphabet (upper-case letters, never ids); the query is one of them."},
    )
    big_from: int = field(
        default=5,
        metadata={"help": "A candidate is relevant iff its size >= big_from (sizes are 1-9, one digit)."},
    )
    min_candidates: int = field(
        default=2, metadata={"help": "Fewest items of the query colour (gold slate)."}
    )
    max_candidates: int = field(
        default=4,
        metadata={"help": "Most items of the query colour = gold slate size (the paper's best slate: 10)."},
    )
    min_relevant: int = field(default=1, metadata={"help": "Fewest big candidates (relevant items)."})
    max_relevant: int = field(
        default=3, metadata={"help": "Most relevant items (the paper: 1 for recsys, 2-4 for QA); <= ndcg_k."}
    )
    slate_cap: int = field(
        default=6, metadata={"help": "Slate ids beyond this many count for nothing (caps recall hacking)."}
    )
    ndcg_k: int = field(
        default=3,
        metadata={"help": "NDCG cut-off k = ranking cap (the paper: 5); ranked ids beyond k count 0."},
    )
    rank_outside_slate: str = field(
        default="drop",
        metadata={
            "help": "Ranked ids not in the slate: drop (removed before scoring, the spec's default) or "
            "penalize (kept as zero-gain positions). [UNVERIFIED] in the paper."
        },
    )
    format_penalty: float = field(
        default=1.0,
        metadata={
            "help": "Subtracted from both phase rewards when the tags are missing or out of order (the "
            "paper's value is [UNVERIFIED]; the spec's crs default: 1)."
        },
    )
    slate_noise: float = field(
        default=0.3,
        metadata={
            "help": "SFT only: share of targets whose slate misses one relevant item (swapped for a "
            "distractor). Independent of rank_noise, which makes the two phases' errors separable."
        },
    )
    rank_noise: float = field(
        default=0.3,
        metadata={"help": "SFT only: share of targets whose ranking starts with a non-relevant slate item."},
    )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | SlateRankConfig | None) -> SlateRankConfig:
        """From a dict / ``DictConfig``; an unknown key or a bad value is one :class:`ConfigError` line."""
        if cfg is None:
            return cls()
        if isinstance(cfg, SlateRankConfig):
            return cfg
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(
                f"benchmark.{unknown[0]}: not a slate_rank key; known: {', '.join(sorted(known))}"
            )
        out = cls(**{k: cfg[k] for k in cfg if cfg[k] is not None})
        out.validate()
        return out

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"benchmark (slate_rank): {msg}")

        need(2 <= self.n_items <= 26, f"n_items must be in [2, 26] (got {self.n_items})")
        need(
            len(self.colours) >= 2
            and len(set(self.colours)) == len(self.colours)
            and self.colours.isupper()
            and self.colours.isalpha(),
            f"colours must be >= 2 distinct upper-case letters (got {self.colours!r})",
        )
        need(2 <= self.big_from <= 9, f"big_from must be in [2, 9] (got {self.big_from})")
        need(
            1 <= self.min_relevant <= self.max_relevant <= self.max_candidates
            and self.min_relevant <= self.min_candidates <= self.max_candidates,
            "need 1 <= min_relevant <= max_relevant <= max_candidates and min_relevant <= min_candidates "
            f"<= max_candidates (got {self.min_relevant}, {self.max_relevant}, {self.min_candidates}, "
            f"{self.max_candidates})",
        )
        need(
            self.max_candidates <= self.slate_cap <= self.n_items and self.max_candidates < self.n_items,
            "need max_candidates <= slate_cap <= n_items and max_candidates < n_items "
            f"(got {self.max_candidates}, {self.slate_cap}, {self.n_items})",
        )
        need(self.ndcg_k >= 1, f"ndcg_k must be >= 1 (got {self.ndcg_k})")
        need(self.rank_outside_slate in ("drop", "penalize"), "rank_outside_slate must be drop or penalize")
        need(self.format_penalty >= 0, f"format_penalty must be >= 0 (got {self.format_penalty})")
        for k in ("slate_noise", "rank_noise"):
            need(0 <= getattr(self, k) <= 1, f"{k} must be in [0, 1] (got {getattr(self, k)})")
        need(self.n_eval >= 1 and self.n_train >= 1, "n_train and n_eval must be >= 1")

    def sft_key(self) -> dict[str, Any]:
        """The fields that change the SFT data / tokenizer corpus (part of the embedded model's cache key)."""
        d = asdict(self)
        for k in ("n_train", "name", "format_penalty", "rank_outside_slate"):  # RL-only fields
            d.pop(k)
        return d


# ----------------------------------------------------------------------------------------------
# generation


@dataclass(frozen=True)
class Problem:
    """A pool ``((id, colour, size), ...)``, the query colour and the relevance threshold."""

    items: tuple[tuple[str, str, int], ...]
    colour: str
    big_from: int = 5

    @property
    def prompt(self) -> str:
        pool = " ".join(f"{i}:{c}{s}" for i, c, s in self.items)
        return PROMPT_TEMPLATE.format(pool=pool, colour=self.colour)

    @property
    def relevant(self) -> list[str]:
        """Relevant ids in gold ranking order: biggest first, ties by id."""
        rel = [(s, i) for i, c, s in self.items if c == self.colour and s >= self.big_from]
        return [i for s, i in sorted(rel, key=lambda x: (-x[0], x[1]))]

    def slate(self) -> list[str]:
        """The gold slate in pool order: every item of the query colour (the candidates)."""
        return [i for i, c, _ in self.items if c == self.colour]


def sample_problem(rng: random.Random, cfg: SlateRankConfig) -> Problem:
    ids = string.ascii_lowercase[: cfg.n_items]
    colour = rng.choice(cfg.colours)
    n_cand = rng.randint(cfg.min_candidates, cfg.max_candidates)
    k = rng.randint(cfg.min_relevant, min(cfg.max_relevant, n_cand))
    cand = rng.sample(range(cfg.n_items), n_cand)
    big = set(cand[:k])
    others = [c for c in cfg.colours if c != colour]
    items = []
    for j in range(cfg.n_items):
        if j in big:
            items.append((ids[j], colour, rng.randint(cfg.big_from, 9)))
        elif j in cand:
            items.append((ids[j], colour, rng.randint(1, cfg.big_from - 1)))
        else:
            items.append((ids[j], rng.choice(others), rng.randint(1, 9)))
    return Problem(tuple(items), colour, cfg.big_from)


def completion_text(slate: Iterable[str], ranking: Iterable[str]) -> str:
    return f" {SLATE_OPEN} {' '.join(slate)} {SLATE_CLOSE} {RANK_OPEN} {' '.join(ranking)} {RANK_CLOSE}"


def _rng(kind: str, seed: int) -> random.Random:
    return random.Random(f"crs-slate_rank-{kind}-{seed}")


def eval_problems(cfg: SlateRankConfig) -> list[Problem]:
    """``cfg.n_eval`` unique problems, determined by ``cfg.eval_seed`` only."""
    rng, seen = _rng("eval", cfg.eval_seed), {}
    for _ in range(100 * cfg.n_eval + 1000):
        p = sample_problem(rng, cfg)
        seen.setdefault(p.prompt, p)
        if len(seen) == cfg.n_eval:
            return list(seen.values())
    raise ConfigError(f"benchmark (slate_rank): task space too small for n_eval={cfg.n_eval} unique prompts")


def sample_problems(n: int, kind: str, seed: int, cfg: SlateRankConfig, exclude: Iterable[str] = ()) -> list:
    rng, excl, out = _rng(kind, seed), set(exclude), []
    while len(out) < n:
        p = sample_problem(rng, cfg)
        if p.prompt not in excl:
            out.append(p)
    return out


def _to_dataset(problems: list[Problem]) -> Dataset:
    return Dataset.from_dict(
        {"prompt": [p.prompt for p in problems], "answer": [" ".join(p.relevant) for p in problems]}
    )


def sft_dataset(
    n: int,
    seed: int,
    error_rate: float | None = None,
    cfg: Mapping[str, Any] | SlateRankConfig | None = None,
    exclude_eval: bool = True,
) -> Dataset:
    """Prompt/completion pairs for the SFT warm start, with independent slate and rank noise.

    ``slate_noise`` of the slates miss one relevant item (a distractor takes its place, the ranking then
    ranks what is left); ``rank_noise`` of the rankings start with a non-relevant slate item. ``error_rate``
    (the embedded builder's arithmetic knob) is ignored here: the two noise rates are task keys. Columns:
    ``prompt``, ``completion``, ``answer`` (gold ranking), ``noisy`` ("", "slate", "rank" or "slate+rank").
    """
    scfg = SlateRankConfig.from_mapping(cfg)
    exclude = [p.prompt for p in eval_problems(scfg)] if exclude_eval else []
    noise = _rng("sft-noise", seed)
    rows: dict[str, list] = {"prompt": [], "completion": [], "answer": [], "noisy": []}
    for p in sample_problems(n, "sft", seed, scfg, exclude):
        slate, rel, tags = p.slate(), p.relevant, []
        if noise.random() < scfg.slate_noise:
            miss = noise.choice(rel)
            spare = [i for i, _, _ in p.items if i not in slate]
            slate = sorted([i for i in slate if i != miss] + [noise.choice(spare)], key=p_order(p))
            tags.append("slate")
        ranking = [i for i in rel if i in slate]
        distractors = [i for i in slate if i not in rel]
        if noise.random() < scfg.rank_noise and distractors:
            ranking = [noise.choice(distractors), *ranking][: scfg.ndcg_k]
            tags.append("rank")
        rows["prompt"].append(p.prompt)
        rows["completion"].append(completion_text(slate, ranking))
        rows["answer"].append(" ".join(rel))
        rows["noisy"].append("+".join(tags))
    return Dataset.from_dict(rows)


def p_order(p: Problem) -> Callable[[str], int]:
    pos = {i: n for n, (i, _, _) in enumerate(p.items)}
    return lambda i: pos[i]


def corpus(cfg: Mapping[str, Any] | SlateRankConfig | None = None, n: int = 2000, seed: int = 0) -> list[str]:
    """Prompt+completion strings covering the task's alphabet (for training the tokenizer)."""
    ds = sft_dataset(n, seed, cfg=cfg, exclude_eval=False)
    return [p + c for p, c in zip(ds["prompt"], ds["completion"])]


def eval_set(cfg: Mapping[str, Any] | SlateRankConfig | None) -> tuple[list[str], list[str]]:
    """``(prompts, answers)`` of the eval split (the embedded builder's post-SFT evaluation)."""
    ev = eval_problems(SlateRankConfig.from_mapping(cfg))
    return [p.prompt for p in ev], [" ".join(p.relevant) for p in ev]


# ----------------------------------------------------------------------------------------------
# parsing, rewards, verification


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    return str(completion)


def _ids(block: str, start: int) -> list[tuple[str, int, int]]:
    return [(m.group(), start + m.start(), start + m.end()) for m in _ID_RE.finditer(block)]


def parse(text: str) -> dict[str, Any]:
    """The phases of a completion: ``ok`` (the format holds), ``slate`` / ``rank`` as
    ``[(id, char_start, char_end)]`` (``None`` when the block is missing) and ``slate_end`` (the character
    after ``</S>``, or ``None``)."""
    m = _FORMAT_RE.match(text)
    if m:
        return {
            "ok": True,
            "slate": _ids(m.group("slate"), m.start("slate")),
            "rank": _ids(m.group("rank"), m.start("rank")),
            "slate_end": m.end("slate") + len(SLATE_CLOSE),
        }
    s = _SLATE_RE.search(text)  # a broken completion may still have a slate
    return {
        "ok": False,
        "slate": _ids(s.group("slate"), s.start("slate")) if s else None,
        "rank": None,
        "slate_end": s.end() if s else None,
    }


def recall(slate: Iterable[str], relevant: Iterable[str], cap: int | None = None) -> float:
    """``|slate ∩ Rel| / |Rel|`` over the first ``cap`` distinct ids of the slate (golden case F1)."""
    rel = set(relevant)
    seen: list[str] = []
    for i in slate:
        if i not in seen:
            seen.append(i)
    seen = seen[:cap] if cap is not None else seen
    return len(rel.intersection(seen)) / len(rel) if rel else 0.0


def ndcg(ranking: Iterable[str], relevant: Iterable[str], k: int) -> float:
    """Binary-gain NDCG@k, IDCG over all relevant items (golden cases F2, F3)."""
    rel = set(relevant)
    dcg = sum(1.0 / math.log2(j + 2) for j, i in enumerate(list(ranking)[:k]) if i in rel)
    idcg = sum(1.0 / math.log2(j + 2) for j in range(min(k, len(rel))))
    return dcg / idcg if idcg > 0 else 0.0


def score(text: str, answer: str, cfg: SlateRankConfig) -> tuple[float, float, bool]:
    """``(R_slate, R_rank, format ok)`` of one completion against the relevant ids ``answer``."""
    rel = answer.split()
    known = set(string.ascii_lowercase[: cfg.n_items])
    got = parse(text)
    slate = [i for i, _, _ in got["slate"] or [] if i in known]
    r_slate = recall(slate, rel, cfg.slate_cap)
    r_rank = 0.0
    if got["rank"] is not None:
        in_slate = set(list(dict.fromkeys(slate))[: cfg.slate_cap])
        ranking: list[str] = []
        for i, _, _ in got["rank"]:
            if i not in known or i in ranking:
                continue
            if i not in in_slate:
                if cfg.rank_outside_slate == "drop":
                    continue
                i = f"outside:{i}"  # a zero-gain position
            ranking.append(i)
        r_rank = ndcg(ranking, rel, cfg.ndcg_k)
    if not got["ok"]:
        r_slate, r_rank = r_slate - cfg.format_penalty, r_rank - cfg.format_penalty
    return r_slate, r_rank, got["ok"]


def verify(completion: str, answer: str, cfg: SlateRankConfig | None = None) -> bool:
    """Strict check: well-formed, every relevant item in the slate and ranked first."""
    r_slate, r_rank, ok = score(_text(completion), str(answer), cfg or SlateRankConfig())
    return ok and r_slate == 1.0 and r_rank == 1.0


def parts(completion: Any, row: Mapping[str, Any], cfg: SlateRankConfig | None = None) -> dict[str, Any]:
    """The phases of a completion as ``name -> (char spans, the phase's reward or None)``.

    ``slate`` / ``rank``: the ids written inside each block, with that phase's reward; ``slate_side``:
    everything up to and including ``</S>`` (all of the completion when there is no ``</S>``; F-GRPO's
    ``assign: prefix``), no reward of its own.
    """
    cfg = cfg or SlateRankConfig()
    text = _text(completion)
    got = parse(text)
    r_slate, r_rank, _ = score(text, str(row.get("answer", "")), cfg)
    end = got["slate_end"] if got["slate_end"] is not None else len(text)
    return {
        "slate": ([(s, e) for _, s, e in got["slate"] or []], r_slate),
        "rank": ([(s, e) for _, s, e in got["rank"] or []], r_rank),
        "slate_side": ([(0, end)], None),
    }


def _reward_fns(cfg: SlateRankConfig) -> list[Callable[..., list[float]]]:
    def slate_recall(prompts, completions, answer, log_metric=None, **kw) -> list[float]:
        """TRL reward: the slate's recall of the relevant items (minus the format penalty)."""
        scores = [score(_text(c), a, cfg) for c, a in zip(completions, answer, strict=True)]
        if log_metric is not None and scores:
            log_metric("accuracy", sum(s == 1.0 and r == 1.0 and ok for s, r, ok in scores) / len(scores))
            log_metric("format_ok", sum(ok for _, _, ok in scores) / len(scores))
        return [s for s, _, _ in scores]

    def rank_ndcg(prompts, completions, answer, **kw) -> list[float]:
        """TRL reward: binary NDCG@k of the ranking (minus the format penalty)."""
        return [score(_text(c), a, cfg)[1] for c, a in zip(completions, answer, strict=True)]

    return [slate_recall, rank_ndcg]


@register_benchmark("slate_rank")
def build(cfg: Mapping[str, Any], seed: int) -> Benchmark:
    """Train split from ``seed``, eval split from ``cfg.eval_seed``; rewards ``[slate_recall, rank_ndcg]``."""
    scfg = SlateRankConfig.from_mapping(cfg)
    ev = eval_problems(scfg)
    train = sample_problems(scfg.n_train, "train", seed, scfg, exclude=[p.prompt for p in ev])
    return Benchmark(
        name="slate_rank",
        train=_to_dataset(train),
        eval=_to_dataset(ev),
        reward_funcs=_reward_fns(scfg),
        verify=functools.partial(verify, cfg=scfg),
        sft=functools.partial(sft_dataset, cfg=scfg),
        parts=functools.partial(parts, cfg=scfg),
        info={"config": asdict(scfg), "format": PROMPT_TEMPLATE, "parts": ["slate", "rank", "slate_side"]},
    )


build.parts = ("slate", "rank", "slate_side")  # what crs.methods.f_grpo checks at config time
build.validate = SlateRankConfig.from_mapping


# what the embedded builder (crs/embedded.py) reads to warm-start its model on this task
TaskConfig = SlateRankConfig


def verifier(cfg: SlateRankConfig) -> Callable[[str, str], bool]:
    """:func:`verify` under ``cfg``'s task keys."""
    return functools.partial(verify, cfg=cfg)
