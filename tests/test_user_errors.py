"""User errors: one line, exit 2 in every verb, a "did you mean" for near misses, nothing created."""

from __future__ import annotations

import pytest
from conftest import run_crs


@pytest.mark.parametrize(
    "override,needle",
    [
        ("shedule=linear", "shedule is not a config key (did you mean schedule?)"),
        ("trainer.lrr=1", "trainer.lrr is not a config key (did you mean lr?)"),
        ("method=grpp", "method=grpp is not an option (did you mean grpo"),
        ("trainer.lr=-1", "trainer.lr must be > 0"),
    ],
)
def test_config_errors_are_one_line_with_a_suggestion(override, needle, tmp_path):
    out = run_crs("train", override, cwd=tmp_path)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and needle in lines[0], lines
    assert "Traceback" not in out.stderr and "+shedule" not in out.stderr  # no "use +key=" advice
    assert list(tmp_path.iterdir()) == []  # no run folder, no store


def test_unknown_key_lists_the_keys_of_the_chosen_option(tmp_path):
    """The keys offered are those of the option the user picked (gsm8k), not of the default benchmark."""
    out = run_crs("train", "benchmark=gsm8k", "benchmark.data_files=x.jsonl", cwd=tmp_path)
    assert out.returncode == 2 and "question_field" in out.stderr and "max_terms" not in out.stderr


def test_bad_data_path_leaves_no_run_and_no_folder(tmp_path):
    out = run_crs("train", "benchmark=gsm8k", f"benchmark.path={tmp_path / 'nope.jsonl'}", cwd=tmp_path)
    assert out.returncode == 2 and "benchmark.path: no such file" in out.stderr
    assert list(tmp_path.iterdir()) == []
