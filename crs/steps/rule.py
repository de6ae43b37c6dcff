"""Exact process verifiers for crs's synthetic tasks: one 0/1 score per *segmented* step.

The ``rule`` scorer (``method.steps.scorer=rule``) looks the benchmark up here by name. A verifier takes
the decoded text of each step (separator included) and the dataset row, and returns one score per step:

``arithmetic``
    A step ``a op b=c`` scores 1 iff ``c = a op b``, ``a`` is the previous step's written result (the
    prompt's first term for step 1) and ``op b`` is the prompt's next operation; the answer step
    ``Answer: N`` scores 1 iff ``N`` is the last written result and every operation was written. An
    error does not propagate: a later step computed correctly from a wrong value scores 1, so the *first*
    wrong step is the one that scores 0 (PRM800K-style labels). Anything else (empty, garbage) scores 0.
``bifurcation``
    Success is decided by the first step alone (:mod:`crs.benchmarks.bifurcation`): the first step is
    scored as above, every later step is irrelevant to success and scores 1.

Example::

    >>> verify_steps("arithmetic", [" 7+5=12,", " 12-3=8.", " Answer: 8"], {"prompt": "Q: 7+5-3\\nA:"})
    [1.0, 0.0, 1.0]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from crs.benchmarks.arithmetic import _apply, parse_prompt

_STEP_FULL = re.compile(r"(-?\d+)([+\-*])(\d+)=(-?\d+)")
_ANSWER_FULL = re.compile(r"Answer: (-?\d+)")

PROCESS_VERIFIERS: dict[str, Callable[[Sequence[str], Mapping[str, Any]], list[float]]] = {}


def register_process_verifier(name: str):
    def deco(fn):
        PROCESS_VERIFIERS[name] = fn
        return fn

    return deco


def _clean(text: str) -> str:
    return text.strip().rstrip(",.").strip()


@register_process_verifier("arithmetic")
def arithmetic_steps(texts: Sequence[str], row: Mapping[str, Any]) -> list[float]:
    parsed = parse_prompt(str(row.get("prompt", "")))
    if parsed is None:
        return [0.0] * len(texts)
    terms, ops = parsed
    prev, i, out = terms[0], 0, []
    for j, raw in enumerate(texts):
        s = _clean(raw)
        m = _STEP_FULL.fullmatch(s)
        if m:
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            ok = i < len(ops) and a == prev and op == ops[i] and b == terms[i + 1] and c == _apply(a, op, b)
            out.append(1.0 if ok else 0.0)
            prev, i = c, i + 1
            continue
        m = _ANSWER_FULL.fullmatch(s)
        if m and j == len(texts) - 1:
            out.append(1.0 if int(m.group(1)) == prev and i == len(ops) else 0.0)
        else:
            out.append(0.0)
    return out


@register_process_verifier("bifurcation")
def bifurcation_steps(texts: Sequence[str], row: Mapping[str, Any]) -> list[float]:
    if not texts:
        return []
    first = arithmetic_steps(texts[:1], row)[0]
    return [first] + [1.0] * (len(texts) - 1)


def verify_steps(benchmark: str, texts: Sequence[str], row: Mapping[str, Any]) -> list[float]:
    """Scores of ``texts`` (one completion's steps) with the named benchmark's process verifier."""
    if benchmark not in PROCESS_VERIFIERS:
        from crs.errors import ConfigError

        raise ConfigError(
            f"method.steps.scorer=rule: no process verifier for benchmark {benchmark!r} "
            f"(known: {', '.join(sorted(PROCESS_VERIFIERS))}); use scorer=prm or judge"
        )
    return PROCESS_VERIFIERS[benchmark](texts, row)
