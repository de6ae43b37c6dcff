"""Without vllm installed (the main .venv), asking for TRL's vLLM path is one line, exit 2, nothing loaded.

The vLLM path itself is tested in its own venv: make test-vllm (tests_vllm/, docs/gpu.md 'vLLM on CPU').

pytest tests/test_vllm_missing.py
"""

import pytest
from conftest import run_crs

from crs.rollout import vllm_available

pytestmark = pytest.mark.skipif(vllm_available(), reason="vllm is installed here (make test-vllm covers it)")


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_generation_vllm_without_vllm_is_one_line_exit_2(tmp_path, mode):
    r = run_crs("train", "trainer.generation=vllm", f"trainer.vllm_mode={mode}", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("crs: error:"), r.stderr
    assert "trainer.generation=vllm needs the vllm package" in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


def test_trl_spelling_use_vllm_is_one_line_exit_2(tmp_path):
    """TRL's own field name is not a crs key: the error lists the keys (trainer.generation among them)."""
    r = run_crs("train", "trainer.use_vllm=true", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.use_vllm is not a config key" in lines[0] and "generation" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()
