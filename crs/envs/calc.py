"""``benchmark=calc_tool``: tool-integrated arithmetic with gold tool-call traces (for MatchTIR).

A task is a left-to-right integer chain (``calc 7+5-3``); the policy must call a calculator tool once
per operation with the right arguments — ``add a=7 b=5`` → ``12``, ``sub a=12 b=3`` → ``9`` — and then
answer ``Answer: 9``. The dataset carries the **gold call trace** (``gold_calls``, a JSON list of
``{"name", "arguments"}`` in MatchTIR's ground-truth format) and the answer; the environment logs
every predicted call (:class:`~crs.envs.base.StepRecord`) so MatchTIR can match predicted to gold
calls per turn. Reward: ``calc_correct`` (1/0, the verifier, logged as ``accuracy``).

    crs train benchmark=calc_tool method=matchtir
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crs.benchmarks import register_benchmark
from crs.envs.base import StepRecord, TurnEnv

OPS = {"+": "add", "-": "sub", "*": "mul"}
_ANSWER_RE = re.compile(r"Answer: (-?\d+)\s*\Z")


@dataclass
class CalcConfig:
    name: str = "calc_tool"
    min_terms: int = 2
    max_terms: int = 4
    max_operand: int = 20
    ops: str = "+-"
    max_turns: int = 6
    n_train: int = 4000
    n_eval: int = 64
    eval_seed: int = 1234
    policy: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> CalcConfig:
        cfg = dict(cfg or {})
        out = cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__ and v is not None})
        if not 2 <= out.min_terms <= out.max_terms or set(out.ops) - set(OPS) or not out.ops:
            raise ValueError("benchmark: need 2 <= min_terms <= max_terms and ops a subset of '+-*'")
        return out


def make_problem(rng: random.Random, cfg: CalcConfig) -> tuple[str, list[dict[str, Any]], int]:
    """``(expression, gold calls, answer)``; results stay in [0, 99]."""
    n = rng.randint(cfg.min_terms, cfg.max_terms)
    acc = rng.randint(0, cfg.max_operand)
    expr, calls = str(acc), []
    for _ in range(n - 1):
        while True:
            op = rng.choice(cfg.ops)
            b = rng.randint(0, cfg.max_operand)
            val = acc + b if op == "+" else acc - b if op == "-" else acc * b
            if 0 <= val <= 99:
                break
        calls.append({"name": OPS[op], "arguments": {"a": acc, "b": b}})
        expr += f"{op}{b}"
        acc = val
    return expr, calls, acc


class CalcEnv(TurnEnv):
    """A calculator: ``add``, ``sub``, ``mul`` on integers. ``reset`` reads the gold trace from the row."""

    def __init__(self, cfg: CalcConfig | None = None):
        super().__init__()
        self.cfg = cfg or CalcConfig()

    def reset(self, **row: Any) -> None:
        super().reset(**row)
        self.gold_calls = json.loads(row.get("gold_calls", "[]"))
        self.answer = row.get("answer")
        return None

    def _ig_target(self) -> str:
        """A²TGPO's ground truth: the answer turn the policy should end with."""
        return f"Answer: {self.answer}"

    def _call(self, name: str, a: Any, b: Any, fn: Callable[[int, int], int]) -> str:
        self.moves += 1
        anchor = f"call{len(self.steps)}"
        valid = (
            isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and not isinstance(b, bool)
        )
        if not valid or self.moves > self.cfg.max_turns:
            self._log(StepRecord(anchor, name, {"a": a, "b": b}, valid=False, reward=0.0))
            return "error"
        out = fn(a, b)
        self._log(StepRecord(anchor, name, {"a": a, "b": b}, valid=True, reward=0.0, info={"result": out}))
        return str(out)

    def add(self, a: int, b: int) -> str:
        """Add two integers.

        Args:
            a: first operand.
            b: second operand.
        """
        return self._call("add", a, b, lambda x, y: x + y)

    def sub(self, a: int, b: int) -> str:
        """Subtract b from a.

        Args:
            a: first operand.
            b: second operand.
        """
        return self._call("sub", a, b, lambda x, y: x - y)

    def mul(self, a: int, b: int) -> str:
        """Multiply two integers.

        Args:
            a: first operand.
            b: second operand.
        """
        return self._call("mul", a, b, lambda x, y: x * y)


def final_answer(completion: Any) -> str | None:
    """The ``Answer: N`` of the last assistant message of a conversational completion."""
    if isinstance(completion, list):
        texts = [m.get("content") or "" for m in completion if m.get("role") == "assistant"]
        text = texts[-1] if texts else ""
    else:
        text = str(completion)
    m = _ANSWER_RE.search(text.strip())
    return m.group(1) if m else None


def correct_reward(
    completions: list[Any], answer: list[Any], log_metric: Callable | None = None, **kw
) -> list[float]:
    """Verifier: 1.0 iff the final message is ``Answer: <gold>``."""
    scores = [1.0 if final_answer(c) == str(a) else 0.0 for c, a in zip(completions, answer, strict=True)]
    if log_metric is not None and scores:
        log_metric("accuracy", sum(scores) / len(scores))
    return scores


correct_reward.__name__ = "calc_correct"


def _tc(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": args}}


def expert_messages(
    expr: str, gold: list[dict[str, Any]], answer: int, rng: random.Random, error_rate: float
) -> list[dict]:
    """Gold trace with slips: with prob. ``error_rate`` a call gets a wrong operand (the chain continues
    from the wrong result) — so the final answer is wrong whenever a slip happened."""
    msgs: list[dict[str, Any]] = [{"role": "user", "content": f"calc {expr}"}]
    acc = gold[0]["arguments"]["a"] if gold else answer
    for call in gold:
        b = call["arguments"]["b"]
        if rng.random() < error_rate:
            b = max(0, b + rng.choice([-2, -1, 1, 2]))
        name = call["name"]
        val = acc + b if name == "add" else acc - b if name == "sub" else acc * b
        msgs.append({"role": "assistant", "content": "", "tool_calls": [_tc(name, {"a": acc, "b": b})]})
        msgs.append({"role": "tool", "name": name, "content": str(val)})
        acc = val
    msgs.append({"role": "assistant", "content": f"Answer: {acc}"})
    return msgs


def _problems(cfg: CalcConfig, n: int, tag: str, exclude: set[str] | None = None):
    rng = random.Random(tag)
    out, seen = [], set()
    while len(out) < n:
        expr, calls, ans = make_problem(rng, cfg)
        if exclude and expr in exclude:
            continue
        if exclude is None and expr in seen:  # eval split: unique
            continue
        seen.add(expr)
        out.append((expr, calls, ans))
    return out


@register_benchmark("calc_tool")
def build(cfg_map: Mapping[str, Any], seed: int):
    from datasets import Dataset

    from crs.benchmarks import Benchmark

    cfg = CalcConfig.from_mapping(cfg_map)
    ev = _problems(cfg, cfg.n_eval, f"calc-eval-{cfg.eval_seed}")
    ev_exprs = {e for e, _, _ in ev}
    tr = _problems(cfg, cfg.n_train, f"calc-train-{seed}", exclude=ev_exprs)

    def ds(items):
        return Dataset.from_dict(
            {
                "prompt": [[{"role": "user", "content": f"calc {e}"}] for e, _, _ in items],
                "gold_calls": [json.dumps(c) for _, c, _ in items],
                "answer": [str(a) for _, _, a in items],
            }
        )

    def sft(n: int, s: int, err: float):
        rng = random.Random(f"calc-sft-{s}")
        return [
            expert_messages(e, c, a, rng, err)
            for e, c, a in _problems(cfg, n, f"calc-sftp-{s}", exclude=ev_exprs)
        ]

    return Benchmark(
        name="calc_tool",
        train=ds(tr),
        eval=ds(ev),
        reward_funcs=[correct_reward],
        verify=lambda text, answer: final_answer(text) == str(answer),
        info={
            "environment_factory": lambda: CalcEnv(cfg),
            "max_turns": cfg.max_turns,
            "success": lambda env: final_answer(getattr(env, "conversation", [])) == str(env.answer),
            "sft_conversations": sft,
        },
    )
