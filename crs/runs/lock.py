"""File locks: the first use of a sqlite MLflow store, and a job's hold on its run folder.

Two ``crs train`` started at once in a fresh folder both ran MLflow's first-use migration on the same
``mlflow.db`` and corrupted it (``table _alembic_tmp_tags already exists``). :func:`store_lock` makes
the first connection (which creates/migrates the schema) and experiment creation one-at-a-time;
:class:`RunLock` is held by a job for its whole life, so another process can tell a live run from a
dead one (``flock`` is released by the kernel when the process dies, even on ``kill -9``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_TIMEOUT_S = 120


def sqlite_path(uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else ``None``."""
    if uri and uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


@contextlib.contextmanager
def store_lock(uri: str | None, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold ``<db>.lock`` (a sqlite store) while the block runs; no-op for servers."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


class RunLock:
    """An exclusive ``flock`` on ``<run home>/.crs_run.lock`` held while the job lives."""

    NAME = ".crs_run.lock"

    def __init__(self, home: Path | str):
        self.path = Path(home) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True if this process now holds the run (nobody else alive holds it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    @classmethod
    def held(cls, home: Path | str) -> bool | None:
        """Is a live process holding the run? ``None`` when the folder is not reachable from here."""
        path = Path(home) / cls.NAME
        if not path.exists():
            return None if not Path(home).exists() else False
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops our lock if we got it
        return False
