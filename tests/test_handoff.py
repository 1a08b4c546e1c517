"""The hand-off thread for writes asked for inside an event loop: bounded, ordered, alive."""

from __future__ import annotations

import logging
import threading

import pytest

from taskstate import handoff as handoff_module
from taskstate.handoff import _Handoff


@pytest.fixture
def handoff() -> _Handoff:
    """A hand-off of its own, so the process's shared one is left as it was."""
    return _Handoff()


def test_flush_before_anything_was_handed_over_returns_at_once(handoff):
    assert handoff.flush(0.01)


def test_a_write_that_raises_is_logged_and_the_next_one_still_runs(handoff, caplog):
    ran: list[str] = []

    def fails() -> None:
        raise ValueError("the write failed")

    with caplog.at_level(logging.ERROR, logger="taskstate"):
        handoff.submit(fails)
        handoff.submit(lambda: ran.append("after"))
        assert handoff.flush(10)
    assert ran == ["after"]
    [record] = [r for r in caplog.records if "write from async code failed" in r.getMessage()]
    assert record.exc_info and record.exc_info[0] is ValueError


def test_a_full_queue_drops_new_writes_logs_once_and_takes_them_again_once_drained(
    handoff, monkeypatch, caplog
):
    monkeypatch.setattr(handoff_module, "MAX_PENDING", 5)
    ran: list[int] = []

    def outage(first: int) -> threading.Event:
        """The thread is held by a hung write; 20 more are handed over meanwhile."""
        taken, release = threading.Event(), threading.Event()
        handoff.submit(lambda: (taken.set(), release.wait(10)))
        assert taken.wait(10)
        for n in range(first, first + 20):
            handoff.submit(lambda n=n: ran.append(n))
        return release

    with caplog.at_level(logging.ERROR, logger="taskstate"):
        outage(0).set()
        assert handoff.flush(10)
        # The queue held 5: those ran, in order; the 15 after them were dropped.
        assert ran == [0, 1, 2, 3, 4]
        assert len([r for r in caplog.records if "dropping new ones" in r.getMessage()]) == 1

        handoff.submit(lambda: ran.append(99))
        assert handoff.flush(10)
        assert ran[-1] == 99

        # Accepting again reset the warning: the next outage is logged again, once.
        outage(100).set()
        assert handoff.flush(10)
    assert ran[-5:] == [100, 101, 102, 103, 104]
    assert len([r for r in caplog.records if "dropping new ones" in r.getMessage()]) == 2
