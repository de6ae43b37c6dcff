"""Results that regenerate: every committed export under ``results/`` renders, says how it was made,
and its table in ``docs/results.md`` is the export's own markdown; the smallest one, ``results/smoke.json``
(``sweeps/smoke.yaml``: 2 methods × 2 seeds at debug size, one thread per job), is **rebuilt from scratch
by the command it records** in a fresh folder and must equal the committed numbers (within 1e-9; the
provenance, run ids, store paths and wall-clock columns are not compared: ``crs.compare.export.numbers``).

The rebuild takes ~20–60 s on a 2-core CPU (the debug model is built once and cached), so it runs in
``make test``. When it fails after an intended change of the numbers, regenerate the export:
``make results SWEEP=smoke`` (and commit it).

    python -m pytest tests/test_results.py -q
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from crs.compare.export import differences, numbers, read_export

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
DOC = REPO / "docs" / "results.md"
EXPORTS = sorted(RESULTS.glob("*.json"))


def crs(*args: str, cwd: Path, timeout: int = 600) -> str:
    """Run ``crs`` as a user does (a new process), in ``cwd``; fail with its output's tail."""
    out = subprocess.run(
        [sys.executable, "-m", "crs.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, (
        f"crs {' '.join(args)} exited {out.returncode}:\n{(out.stdout + out.stderr)[-3000:]}"
    )
    return out.stdout


def markdown_table(path: Path) -> list[str]:
    from crs.compare.export import from_export
    from crs.compare.render import to_markdown

    md = to_markdown(from_export(read_export(path)))
    return [ln for ln in md.splitlines() if ln.startswith("|")]


def test_there_are_exports():
    assert (RESULTS / "smoke.json").is_file() and len(EXPORTS) >= 2, [p.name for p in EXPORTS]


@pytest.mark.parametrize("path", EXPORTS, ids=[p.stem for p in EXPORTS])
def test_export_says_how_it_was_made(path):
    data = read_export(path)
    prov = data["provenance"]
    assert len(prov["git_commit"]) == 40 and prov["config_hash"] and prov["date"]
    assert {"crs", "trl", "torch"} <= set(prov["versions"])
    cmd = shlex.split(prov["rebuild"])
    if cmd[:3] == ["crs", "pipeline", "sweep"]:  # a pipeline grid (sweeps/pipelines/), e.g. results/s2d.json
        cmd = cmd[1:]
        assert (REPO / "sweeps" / "pipelines" / f"{cmd[2]}.yaml").is_file(), prov["rebuild"]
    else:
        assert cmd[:2] == ["crs", "sweep"] and (REPO / "sweeps" / f"{cmd[2]}.yaml").is_file(), prov["rebuild"]
    assert all(not a.startswith("root=") for a in cmd)
    assert all(not a.startswith("tracking.uri=") for a in cmd)  # the store is not part of the result
    cells = data["table"]["cells"]
    assert cells and all(c["n_finished"] >= 2 for c in cells)  # intervals need two seeds


@pytest.mark.parametrize("path", EXPORTS, ids=[p.stem for p in EXPORTS])
def test_docs_show_the_exports_own_table(path):
    """A page of docs/ (docs/results.md for the README's tables) names the export and its rebuild
    command, and holds the table ``crs compare --from <export> --markdown`` renders, line for line."""
    rel = f"results/{path.name}"
    pages = [p for p in sorted((REPO / "docs").glob("*.md")) if rel in p.read_text()]
    assert pages, f"no page of docs/ names {rel}"
    doc = "\n".join(p.read_text() for p in pages)
    assert f"make results SWEEP={path.stem}" in doc, f"{pages[0].name} does not say how to rebuild {rel}"
    missing = [ln for ln in markdown_table(path) if ln not in doc.splitlines()]
    assert not missing, f"the table for {rel} is not `crs compare --from {rel} --markdown`: {missing[:2]}"


def test_readme_results_are_in_docs_results():
    """The README keeps no results table: it points at docs/results.md, which names the exports it shows."""
    assert "docs/results.md" in (REPO / "README.md").read_text()
    for name in ("first", "smoke"):
        assert f"results/{name}.json" in DOC.read_text()


def test_smoke_table_regenerates_from_its_command(tmp_path):
    committed = read_export(RESULTS / "smoke.json")
    cmd = shlex.split(committed["provenance"]["rebuild"])
    assert cmd[0] == "crs"
    crs(*cmd[1:], cwd=tmp_path)  # a fresh folder: its own ./mlflow.db, outputs/
    crs("compare", "--last", "--export", str(tmp_path / "again.json"), cwd=tmp_path)
    again = json.loads((tmp_path / "again.json").read_text())
    diff = differences(numbers(committed), numbers(again), tol=1e-9)
    why = ""
    if committed["provenance"]["config_hash"] != again["provenance"]["config_hash"]:
        why = (
            " (the jobs' resolved config changed since the export: regenerate with make results SWEEP=smoke)"
        )
    assert not diff, f"results/smoke.json does not regenerate{why}: " + "; ".join(diff[:8])


def test_readme_headlines_are_the_exports_numbers():
    """Each README headline line names an export; every ``m [lo, hi]`` it quotes is a cell of that export's
    table (``crs compare --from`` renders it ``m ± sd [lo, hi]``), so a re-made export cannot leave the
    README behind."""
    import re

    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if ln.startswith("- [`results/")]
    assert len(lines) >= 4
    for ln in lines:
        rel = re.match(r"- \[`(results/[^`]+)`\]", ln).group(1)
        table = "\n".join(markdown_table(REPO / rel))
        quoted = re.findall(r"(\d+\.\d+) \[(\d+\.\d+), (\d+\.\d+)\]", ln)
        assert quoted, ln
        for m, lo, hi in quoted:
            assert re.search(rf"{re.escape(m)} ± [\d.]+ \[{re.escape(lo)}, {re.escape(hi)}\]", table), (
                rel,
                m,
                lo,
                hi,
            )
