"""Graders: read a completion's final answer first (an *extraction*), then compare it with the reference.

Extraction and correctness are kept apart so that ``crs eval`` can count answer-extraction failures
separately from wrong answers (a format problem is not a reasoning problem):

- :class:`MathGrader` — HF's ``math-verify`` (verl#829): ``parse`` the completion (last ``\\boxed{}``,
  else the last LaTeX/number); nothing parsed = extraction failure; ``verify`` against the parsed
  reference (MATH-500, AIME, AMC, Minerva, OlympiadBench, DAPO-Math).
- :class:`ChoiceGrader` — multiple choice (GPQA-Diamond): the letter in the last ``\\boxed{}``, else the
  last ``Answer: X`` / ``answer is (X)``; correct iff it is exactly the reference letter.
- :class:`TaskGrader` — crs's own tasks (arithmetic, bifurcation): the task module's ``extract_answer``
  (when it has one) and its strict ``verify``.

    from crs.eval.graders import MathGrader
    MathGrader().grade("so \\\\boxed{\\\\frac12}", "0.5")   # (True, True): extracted, correct
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class MathGrader:
    """math-verify: extraction = ``parse(completion)`` is non-empty; correct = ``verify(gold, pred)``."""

    name = "math-verify"

    def __init__(self) -> None:
        self._gold: dict[str, Any] = {}

    def _parse_gold(self, gold: str):
        if gold not in self._gold:
            from math_verify import parse

            self._gold[gold] = parse(gold if "\\boxed" in gold or "$" in gold else f"${gold}$")
        return self._gold[gold]

    def grade(self, completion: str, gold: str) -> tuple[bool, bool]:
        """``(extracted, correct)`` for one completion."""
        from math_verify import parse, verify

        try:
            pred = parse(completion)
        except Exception:  # math-verify's own timeouts/parse errors: nothing extracted
            pred = []
        if not pred:
            return False, False
        gold_parsed = self._parse_gold(gold)
        try:
            return True, bool(gold_parsed) and bool(verify(gold_parsed, pred))
        except Exception:
            return True, False


_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text\s*\{)?\s*\(?([A-Za-z])\)?\s*\}?\s*\}")
_ANSWER = re.compile(r"(?:answer\s*(?:is|:)\s*\(?\$?)([A-Da-d])\b", re.IGNORECASE)


class ChoiceGrader:
    """Exact choice letter: the last ``\\boxed{X}`` (``\\boxed{\\text{X}}``, ``\\boxed{(X)}``), else the last
    ``Answer: X`` / ``the answer is (X)``; compared case-insensitively with the reference letter."""

    name = "choice"

    def __init__(self, letters: str = "ABCD") -> None:
        self.letters = letters

    def extract(self, completion: str) -> str | None:
        for pattern in (_BOXED, _ANSWER):
            found = [m.upper() for m in pattern.findall(completion) if m.upper() in self.letters]
            if found:
                return found[-1]
        return None

    def grade(self, completion: str, gold: str) -> tuple[bool, bool]:
        got = self.extract(completion)
        return got is not None, got is not None and got == gold.strip().upper()


class TaskGrader:
    """A crs task's own checker; ``extract`` (``completion -> answer | None``) when the task has one."""

    def __init__(self, verify: Callable[[str, str], bool], extract: Callable[[str], Any] | None, name: str):
        self.verify, self.extract, self.name = verify, extract, name

    def grade(self, completion: str, gold: str) -> tuple[bool, bool]:
        correct = bool(self.verify(completion, gold))
        extracted = correct or (self.extract(completion) is not None if self.extract else True)
        return extracted, correct
