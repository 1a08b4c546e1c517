"""The background thread for database work no caller may wait for: bounded, ordered, on time, alive."""

from __future__ import annotations

import logging
import threading

import pytest

from taskstate.core import background as background_module
from taskstate.core.background import Background
from taskstate.core.group_refresh import GroupRefresher


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def handoff() -> Background:
    """A background thread of its own, so the process's shared one is left as it was."""
    return Background()


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
    [record] = [r for r in caplog.records if "background database job failed" in r.getMessage()]
    assert record.exc_info and record.exc_info[0] is ValueError


def test_a_full_queue_drops_new_writes_logs_once_and_takes_them_again_once_drained(
    handoff, monkeypatch, caplog
):
    monkeypatch.setattr(background_module, "MAX_PENDING", 5)
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


def test_a_job_for_later_runs_at_its_time_and_a_flush_leaves_it_until_then():
    clock = Clock()
    runner = Background(clock=clock)
    ran: list[str] = []
    runner.submit_at(clock.now + 5, lambda: ran.append("later"))
    runner.submit(lambda: ran.append("now"))
    assert runner.flush(10)
    assert ran == ["now"]
    clock.now += 5
    assert runner.flush(10)
    assert ran == ["now", "later"]


def test_a_job_for_later_runs_without_being_asked_once_due():
    runner = Background()
    done = threading.Event()
    runner.submit_at(runner.clock() + 0.2, done.set)
    assert done.wait(10)


def test_a_busy_group_is_refreshed_at_once_then_once_its_interval_is_over(monkeypatch):
    from taskstate.core import conf

    monkeypatch.setattr(conf, "GROUP_INTERVAL", 30.0)
    clock = Clock()
    refreshed: list[int] = []
    refresher = GroupRefresher(refresh=lambda pk: refreshed.append(pk), runner=Background(clock))
    refresher.changed(7)
    assert refresher._runner.flush(10)
    assert refreshed == [7]
    # Changes within the interval wait for its end: one refresh for all of them.
    for _ in range(100):
        refresher.changed(7)
    clock.now += 29
    assert refresher._runner.flush(10)
    assert refreshed == [7]
    clock.now += 1
    assert refresher._runner.flush(10)
    assert refreshed == [7, 7]
    # A flush of the refresher runs what is pending at once, and only once.
    refresher.changed(7)
    assert refresher.flush(10)
    assert refreshed == [7, 7, 7]
    clock.now += 30
    assert refresher._runner.flush(10)
    assert refreshed == [7, 7, 7]


@pytest.mark.django_db(transaction=True)
def test_a_worker_process_runs_at_most_four_kinds_of_taskstate_thread(run_all, user):
    """Every part of a worker's path in use (the writer, events, the background thread for
    async actors and group refreshes, the statement watchdog): one thread each, four at
    most. (A web process's stream check runs on a thread of its own instead of the writer's.)"""
    import dramatiq

    import taskstate
    from taskstate.core.group_refresh import group_refresher
    from tests.testapp import tasks as actors

    actors.noop.send(for_state={"user_pk": user.pk})
    actors.async_steps.send(3, for_state={"user_pk": user.pk})
    taskstate.track_group(
        dramatiq.group(actors.noop.message() for _ in range(3)), for_state={"user_pk": user.pk}
    ).run()
    run_all()
    assert group_refresher.flush(10)
    ours = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("taskstate-") and not t.name.startswith("taskstate-stream-check")
    ]
    # Kinds, not threads: other tests of this process start couriers of their own.
    assert len(set(ours)) <= 4, ours
    assert {"taskstate-writer", "taskstate-background"} <= set(ours), ours


def test_a_job_for_later_submitted_while_the_thread_lets_go_of_its_connections_runs(
    monkeypatch,
):
    runner = Background()
    ran = threading.Event()
    injected: list[bool] = []

    def close_idle_connections() -> None:
        # Another thread (a worker's commit telling the group refresher) takes the lock
        # while this one closes its connections.
        if not injected:
            injected.append(True)
            other = threading.Thread(target=runner.submit_at, args=(runner.clock() + 0.05, ran.set))
            other.start()
            other.join()

    monkeypatch.setattr(background_module, "close_idle_connections", close_idle_connections)
    runner.submit(lambda: None)
    assert ran.wait(5), "the job for later never ran"


def test_a_refresh_is_never_dropped_with_the_queue_full_and_the_group_refreshed_after(
    monkeypatch,
):
    from taskstate.core import conf

    monkeypatch.setattr(background_module, "MAX_PENDING", 2)
    monkeypatch.setattr(conf, "GROUP_INTERVAL", 0.0)
    refreshed: list[int] = []
    runner = Background()
    refresher = GroupRefresher(refresh=lambda pk: refreshed.append(pk), runner=runner)
    taken, release = threading.Event(), threading.Event()
    runner.submit(lambda: (taken.set(), release.wait(10)))
    assert taken.wait(5)
    runner.submit(lambda: None)
    runner.submit(lambda: None)  # the queue is full
    refresher.changed(7)
    release.set()
    assert runner.flush(5)
    assert refreshed == [7]
    refresher.changed(7)  # not taken for a refresh still to come
    assert runner.flush(5)
    assert refreshed == [7, 7]


def test_at_exit_a_refresh_due_later_is_run_and_then_its_events_sent(monkeypatch):
    from taskstate import shutdown
    from taskstate.core import conf

    monkeypatch.setattr(conf, "GROUP_INTERVAL", 30.0)
    steps: list[str] = []
    runner = Background()
    refresher = GroupRefresher(refresh=lambda pk: steps.append(f"refresh {pk}"), runner=runner)
    refresher.changed(7)
    assert refresher.flush(5)
    refresher.changed(7)  # the group's last change, within its interval

    class Courier:
        def flush(self, timeout: float) -> bool:
            steps.append("events sent")
            return True

    monkeypatch.setattr(shutdown, "group_refresher", refresher)
    monkeypatch.setattr(shutdown, "background", runner)
    monkeypatch.setattr(shutdown, "courier", Courier())
    shutdown.at_exit()
    assert steps == ["refresh 7", "refresh 7", "events sent"]


def test_a_job_asked_for_now_goes_before_jobs_for_later_that_came_due():
    clock = Clock()
    runner = Background(clock=clock)
    ran: list[str] = []
    taken, release = threading.Event(), threading.Event()
    runner.submit(lambda: (taken.set(), release.wait(10)))
    assert taken.wait(5)
    for n in range(3):
        runner.submit_at(clock.now, lambda n=n: ran.append(f"refresh {n}"))
    runner.submit(lambda: ran.append("async write"))
    release.set()
    done = threading.Event()
    runner.submit_at(clock.now, done.set)
    assert done.wait(5)
    assert ran == ["async write", "refresh 0", "refresh 1", "refresh 2"]
