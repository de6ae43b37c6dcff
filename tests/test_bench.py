"""crs.perf's bookkeeping: variant parsing and paired per-round ratios (no training here; `make bench`
and scripts/gpu_check.sh run the real thing)."""

import argparse

import pytest

from crs.perf import PHASES, parse_variant, summarize


def test_variants_parse_and_bad_ones_fail():
    assert parse_variant("trl") == {"method": "trl", "generation": "hf", "diagnostics": False}
    assert parse_variant("grpo+static+diagnostics") == {
        "method": "grpo",
        "generation": "static",
        "diagnostics": True,
    }
    with pytest.raises(SystemExit, match="unknown benchmark variant"):
        parse_variant("grpo+turbo")


def _run(s):
    return {
        "s_per_step": s,
        "tokens_per_s": 100 / s,
        "tokens_per_step": 100,
        "peak_rss_mb": 1.0,
        "phases": {p: 0.0 for p in PHASES},
    }


def test_ratios_are_paired_per_round():
    # round 2 is twice as slow for everyone: paired ratios stay exact, unpaired medians would not
    results = {"trl": [_run(1.0), _run(2.0), _run(1.1)], "fast": [_run(0.25), _run(0.5), _run(0.3)]}
    rep = summarize(results, ["trl", "fast"], argparse.Namespace(device="cpu"))
    fast = rep["variants"]["fast"]
    assert fast["ratio_min"] == pytest.approx(0.25) and fast["ratio_max"] == pytest.approx(0.3 / 1.1)
    assert fast["speedup_vs_baseline"] == pytest.approx(4.0)
    assert rep["baseline_round_spread"] == pytest.approx(1.0)
