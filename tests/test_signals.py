"""Kill signals never cut a store write (crs/runs/signals.py): the write finishes, then the run unwinds.

Mutation tried: drop ``@shield`` from ``MlflowTracker.log_metrics`` → the first test fails (JobKilled is
raised inside ``log_batch``, the metric never lands)."""

import os
import signal

import pytest

from crs.runs import signals
from crs.runs.signals import JobKilled


@pytest.fixture
def handlers():
    previous = signals.install()
    yield
    signals.restore(previous)


def test_signal_inside_a_store_write_is_raised_after_it(tmp_path, handlers):
    from crs.metric_layout import ui_key
    from crs.tracking import MlflowTracker

    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "crs")
    tracker.start(run_name="r")
    real = tracker.client.log_batch
    seen = []

    def log_batch_hit_by_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the write
        seen.append("after-signal")
        return real(*args, **kwargs)

    tracker.client.log_batch = log_batch_hit_by_sigterm
    with pytest.raises(JobKilled) as info:
        tracker.log_metrics({"loss": 1.5}, step=1)
    assert info.value.signum == signal.SIGTERM
    assert seen == ["after-signal"]
    tracker.client.log_batch = real
    assert [m.value for m in tracker.client.get_metric_history(tracker.run_id, ui_key("loss"))] == [1.5]
    tracker.end("KILLED", "JobKilled: signal SIGTERM")
    assert tracker.client.get_run(tracker.run_id).info.status == "KILLED"


def test_signal_outside_a_write_raises_at_once(handlers):
    with pytest.raises(JobKilled):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**6):  # the handler raises at the next bytecode boundary
            pass


def _let_the_handler_run():
    for _ in range(10**5):  # Python runs a signal handler at the next bytecode boundary
        pass


def test_held_signal_can_be_dropped_while_closing(handlers):
    ran = []
    with signals.shielded(raise_held=False):
        os.kill(os.getpid(), signal.SIGINT)
        _let_the_handler_run()
        assert signals._pending == signal.SIGINT  # held, not raised, inside the block
        ran.append("after-signal")
    # the block ran to its end, nothing was raised, and the held signal was dropped (not left pending)
    assert ran == ["after-signal"]
    assert signals._pending is None and signals._depth == 0
    with signals.shielded():  # a later write does not raise the dropped signal
        pass
    # the handlers are still in place: a new signal outside a write raises at once
    with pytest.raises(JobKilled) as info:
        os.kill(os.getpid(), signal.SIGTERM)
        _let_the_handler_run()
    assert info.value.signum == signal.SIGTERM
    # the same held signal without raise_held=False is raised right after the block
    with pytest.raises(JobKilled) as info:
        with signals.shielded():
            os.kill(os.getpid(), signal.SIGINT)
            _let_the_handler_run()
            ran.append("after-second-signal")
    assert info.value.signum == signal.SIGINT and ran[-1] == "after-second-signal"
    assert signals._pending is None
