"""The on-disk cache of the models crs builds itself (embedded policy, environment policies, PRM, judge).

Each entry is a folder ``<cache>/<kind>-<content hash>`` with a marker file written last. :func:`publish`
builds it in a private temporary folder and moves it into place with an atomic ``os.rename``, so a reader
never sees a half-written model; a ``filelock`` on ``<cache>/.<name>.lock`` makes the jobs of a sweep that
all need the same missing model wait for the first builder instead of each building it again (seen: two
jobs of the bifurcation sweep building the same judge side by side, each taking both cores).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

BUILD_LOCK_TIMEOUT_S = 4 * 3600  # a judge build on a loaded 2-core machine took ~1 h


def publish(final: Path, marker: str, build: Callable[[Path], object]) -> Path:
    """Return ``final``, calling ``build(tmp)`` once (across processes) when ``final/marker`` is missing."""
    from filelock import FileLock

    final = Path(final)
    if (final / marker).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f".{final.name}.lock"), timeout=BUILD_LOCK_TIMEOUT_S):
        if (final / marker).exists():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            build(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / marker).exists():  # not a lost race: a real error
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
