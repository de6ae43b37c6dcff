"""Names shown to the user: the console progress line."""


def test_progress_line_shows_rho_only_when_a_knob_is_driven():
    from crs.progress import RichProgressCallback

    logs = {"reward": 0.5, "accuracy": 0.5, "schedule/rho": 1.0, "entropy/all": 0.2}
    plain, driven = RichProgressCallback("grpo", show_rho=False), RichProgressCallback("tp")
    plain.last, driven.last = logs, logs
    assert "ρ" not in plain._stats() and "ρ 1.00" in driven._stats()
