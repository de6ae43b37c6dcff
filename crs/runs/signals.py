"""Kill signals end a run KILLED — but never in the middle of a write to the MLflow store.

SIGTERM (a SLURM time limit, ``scancel``), SIGHUP (a closed terminal) and SIGINT (Ctrl-C) raise
:class:`JobKilled` in the main thread, so the training loop unwinds through ``train``'s ``finally``,
which writes the summary and closes the run as KILLED. Raising at an arbitrary bytecode can land inside
a SQLAlchemy commit of ``log_batch``; the interrupted connection can then refuse the closing
``set_terminated`` and the run stays RUNNING (seen once in CI on a loaded machine). Store writes
therefore run under :func:`shielded`: a signal that arrives inside one is held and raised as soon as
the write returns. Only the main thread is shielded (signals are delivered there); the heartbeat
thread's writes need no shield.
"""

from __future__ import annotations

import contextlib
import signal
import threading

KILL_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

_depth = 0  # nesting of shielded() on the main thread
_pending: int | None = None  # a signal received inside a shielded block


class JobKilled(KeyboardInterrupt):
    """SIGTERM/SIGHUP/SIGINT (a SLURM time limit, scancel, a closed terminal, Ctrl-C): the run ends KILLED."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"signal {signal.Signals(signum).name}")


def _on_signal(signum, frame) -> None:
    global _pending
    if _depth > 0:
        _pending = signum  # raised when the write returns
        return
    raise JobKilled(signum)


@contextlib.contextmanager
def shielded(raise_held: bool = True):
    """Hold kill signals while the block runs (main thread only); raise the held one right after, or
    drop it (``raise_held=False``: closing the run, where a second Ctrl-C means the same thing)."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        if raise_held:
            raise JobKilled(signum)


def install() -> dict:
    """Route the kill signals to :class:`JobKilled`; returns the previous handlers for :func:`restore`."""
    global _pending
    _pending = None
    previous = {}
    for sig in KILL_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread (e.g. a thread-based launcher): keep the default
            pass
    return previous


def restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def shield(fn):
    """Decorator form of :func:`shielded` (the tracker's store writes)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with shielded():
            return fn(*args, **kwargs)

    return wrapper
