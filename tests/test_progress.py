"""The end-of-run summary table on an 80-column terminal: no cell is cut.

The store row ("open with: crs ui (store sqlite:////…/mlflow.db)") holds one long word, the store
path; rich's default overflow cuts such a word with "…" at the column edge, so on an 80-column
terminal the one row a user copies lost its end. The value column folds instead.

    python -m pytest tests/test_progress.py -q
"""

from __future__ import annotations

import io

from rich.console import Console

from crs.progress import summary_table

URI = "sqlite:////home/a_researcher_with_a_long_name/projects/credit-assignment/runs/2026-12/mlflow.db"


def _render(monkeypatch, summary: dict) -> str:
    monkeypatch.setenv("COLUMNS", "80")  # what a terminal of 80 columns tells rich
    console = Console(file=io.StringIO(), highlight=False)
    assert console.width == 80
    console.print(summary_table(summary, "grpo (seed 0)"))
    return console.file.getvalue()


def _value_cells(text: str) -> str:
    """The value column's text, its wrapped lines joined (``│ metric │ value │`` rows)."""
    cells = [line.split("│")[2].strip() for line in text.splitlines() if line.count("│") == 3]
    return "".join(cells)


def test_store_row_is_whole_at_80_columns(monkeypatch):
    summary = {
        "steps": 6,
        "wall_time_s": 1.2,
        "verdict": "mean reward rose 0.000 → 0.625",
        "mlflow_run_id": "8e54af3c2e554bb5b3d5e593581d7160",
        "mlflow_uri": URI,
    }
    text = _render(monkeypatch, summary)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    values = _value_cells(text)
    assert f"(store{URI})" in values.replace(" ", "")  # the whole path, folded over lines
    assert "8e54af3c2e554bb5b3d5e593581d7160" in values


def test_short_rows_stay_on_one_line(monkeypatch):
    text = _render(
        monkeypatch, {"steps": 6, "wall_time_s": 3.0, "mlflow_run_id": "abc", "mlflow_uri": "sqlite:///m.db"}
    )
    assert "crs ui  (store sqlite:///m.db)" in text
