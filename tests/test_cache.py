"""crs/cache.py: concurrent jobs that need the same missing model build it once.

Mutation tried: drop the FileLock in ``publish`` → ``builds == 2`` and the test fails."""

import multiprocessing as mp
import time
from pathlib import Path

from crs.cache import publish


def _build(tmp: Path) -> None:
    with open(tmp.parent / "builds.log", "a") as f:
        f.write("x\n")
    time.sleep(1.0)
    (tmp / "done.json").write_text("{}")


def _worker(final: str) -> None:
    publish(Path(final), "done.json", _build)


def test_two_processes_build_once(tmp_path):
    final = tmp_path / "judge-abc"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(final),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert (final / "done.json").exists()
    assert (tmp_path / "builds.log").read_text().count("x") == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no half-built folders left
