"""A job that waits on another process's model build says so (instead of minutes of silence).

The jobs of a sweep that need the same missing model wait for the first builder on
``<cache>/.<name>.lock`` (:func:`crs.cache.publish`); the waiting ones printed "building the embedded
model once" and then nothing. :func:`crs.embedded._say_if_waiting` prints one line while the lock is held
by a live process — here a real second process holding the real lock — and stays quiet otherwise.

    python -m pytest tests/test_progress_waiting.py -q
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from crs.embedded import _say_if_waiting

HOLD = textwrap.dedent(
    """
    import sys, time
    from filelock import FileLock
    with FileLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_says_it_waits_while_another_process_builds(tmp_path, capsys):
    final = tmp_path / "embedded-0123456789ab"
    lock = tmp_path / f".{final.name}.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _say_if_waiting(final, "crs_pretrain.json")
        out = capsys.readouterr().out
        assert out.count("\n") == 1, out
        assert (
            "waiting for another process that is building embedded-0123456789ab" in out and str(lock) in out
        )
    finally:
        holder.kill()
        holder.wait()
    # the builder is gone (its lock file stays behind): no line
    _say_if_waiting(final, "crs_pretrain.json")
    assert capsys.readouterr().out == ""


def test_quiet_when_built_or_nobody_builds(tmp_path, capsys):
    final = tmp_path / "envpolicy-maze-0123456789ab"
    _say_if_waiting(final, "crs_pretrain.json")  # no lock file at all
    final.mkdir()
    (final / "crs_pretrain.json").write_text("{}")
    (tmp_path / f".{final.name}.lock").touch()
    _say_if_waiting(final, "crs_pretrain.json")  # built already
    assert capsys.readouterr().out == ""
