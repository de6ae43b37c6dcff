"""Behaviour unchanged: the methods' metric histories equal the fixture recorded before the structural
refactor (``scripts/regression_histories.py``; debug=fast, seed 0, bit-identical on CPU).

The fast test covers one method of each substrate hook (plain GRPO, a mask-phase method with a verifier
cut, a step method with a producer, a turn method); the slow one runs all fifteen.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "regression_histories.json"


def _check(methods: list[str]) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "regression_histories.py"),
            "--check",
            str(FIXTURE),
            "--methods",
            *methods,
        ],
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 differing histories" in out.stdout


@pytest.mark.timeout(1200)
def test_histories_unchanged_one_method_per_hook():
    _check(["grpo", "tp_schedule", "pure", "gigpo"])


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_histories_unchanged_every_method():
    _check([])  # empty = all (the script's default list)
