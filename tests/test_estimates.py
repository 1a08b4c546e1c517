"""Time left (taskstate.core.estimates), on a fake clock: no sleeps, no wall-clock asserts."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.template.loader import render_to_string

from taskstate.core.estimates import HISTORY_WEIGHT, Estimator, describe_seconds
from taskstate.core.groups import refresh_group
from taskstate.core.models import Kind, Status, Task
from taskstate.worker.writer import writer
from tests.support.factories import make_task
from tests.testapp import tasks as actors

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _running(pk: int = 1, progress: int = 0, actor: str = "export") -> Task:
    return Task(pk=pk, status=Status.RUNNING, progress=progress, actor_name=actor, started_at=T0)


def _finished(pk: int, seconds: float, actor: str = "export") -> Task:
    return Task(
        pk=pk,
        status=Status.DONE,
        actor_name=actor,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=seconds),
    )


def test_no_estimate_until_enough_progress_and_time(clock: FakeClock) -> None:
    estimator = Estimator(clock)
    task = _running(progress=5)
    clock.advance(10)
    assert estimator.seconds_left(task) is None  # 5 %: too little to tell
    task.progress = 20
    assert estimator.seconds_left(task) == pytest.approx(40)  # 10 s for 20 %: 40 s to go
    assert estimator.describe(task) == "about 40 s left"


def test_an_early_fast_start_is_not_trusted_before_two_seconds(clock: FakeClock) -> None:
    estimator = Estimator(clock)
    clock.advance(0.5)
    assert estimator.seconds_left(_running(progress=50)) is None


def test_the_estimate_is_smoothed_and_never_jumps_wildly_or_goes_negative(
    clock: FakeClock,
) -> None:
    estimator = Estimator(clock)
    task = _running(progress=10)
    clock.advance(60)
    first = estimator.seconds_left(task)
    assert first == pytest.approx(540)  # 60 s for 10 %
    # A burst: 90 % done 5 s later. The raw rate says 7 s; the shown estimate moves only
    # part of the way from where it had counted down to.
    clock.advance(5)
    task.progress = 90
    burst = estimator.seconds_left(task)
    assert burst is not None and 300 < burst < 535
    # News every 30 s that barely moves: it counts down between them, never below zero
    # and never above what the task's own pace says.
    for step in range(1, 101):
        clock.advance(30)
        task.progress = 99
        value = estimator.seconds_left(task)
        own_pace = (65 + 30 * step) / 99
        assert value is not None and 0 <= value <= max(own_pace, burst)


def test_recent_durations_of_the_same_actor_give_an_estimate_before_progress_does(
    clock: FakeClock,
) -> None:
    estimator = Estimator(clock)
    for pk, seconds in ((10, 100), (11, 120)):
        estimator.observe(_finished(pk, seconds))
    task = _running(pk=2)
    estimator.observe(task)
    clock.advance(30)
    left = estimator.seconds_left(task)
    # A typical run takes about 106 s (moving average); 30 s in: about 76 s to go.
    assert left == pytest.approx(106 - 30, abs=1)
    # Another actor's history says nothing about this one.
    assert estimator.seconds_left(_running(pk=3, actor="other")) is None


def test_history_blends_with_the_task_s_own_pace_as_it_progresses(clock: FakeClock) -> None:
    estimator = Estimator(clock)
    for pk in (10, 11, 12):
        estimator.observe(_finished(pk, 100))
    task = _running(pk=2, progress=50)
    clock.advance(20)  # twice as fast as usual: own pace says 20 s, history 50 s
    left = estimator.seconds_left(task)
    assert left == pytest.approx(0.5 * 20 + 0.5 * 50)


def test_a_progress_bar_without_start_or_actor_uses_what_its_row_said(clock: FakeClock) -> None:
    estimator = Estimator(clock)
    estimator.observe(_running(pk=5))
    clock.advance(10)
    bar = Task(pk=5, status=Status.RUNNING, progress=50)  # what publish_progress renders
    assert estimator.seconds_left(bar) == pytest.approx(10)


def test_only_running_tasks_get_an_estimate(clock: FakeClock) -> None:
    estimator = Estimator(clock)
    clock.advance(10)
    for status in ("enqueued", "done", "failed", "retrying"):
        task = _running(progress=50)
        task.status = status
        assert estimator.seconds_left(task) is None


@pytest.mark.django_db
def test_a_group_gets_an_estimate_from_its_combined_progress(clock: FakeClock) -> None:
    parent = make_task(kind=Kind.GROUP, status=Status.ENQUEUED, state_order=1)
    for position, (status, progress) in enumerate(
        (("done", 100), ("running", 50), ("running", 0), ("enqueued", 0)), start=1
    ):
        make_task(
            parent=parent,
            position=position,
            status=status,
            progress=progress,
            started_at=None if status == "enqueued" else T0,
            state_order=15,
        )
    refreshed = refresh_group(parent.pk)
    assert refreshed is not None
    group = refreshed.task
    # Its progress is its children's, (100 + 50) / 4; it started with its first child.
    assert (group.status, group.progress, group.started_at) == (Status.RUNNING, 37, T0)
    estimator = Estimator(clock)
    clock.advance(30)
    assert estimator.seconds_left(group) == pytest.approx(30 * 63 / 37)
    assert estimator.describe(group) == "about 50 s left"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (3, "a few seconds left"),
        (42, "about 40 s left"),
        (119, "about 2 min left"),
        (45 * 60, "about 45 min left"),
        (3 * 3600, "about 3 h left"),
    ],
)
def test_time_left_reads_roughly(seconds: float, text: str) -> None:
    assert describe_seconds(seconds) == text


def test_the_progress_partial_shows_the_estimate(monkeypatch: Any, clock: FakeClock) -> None:
    from taskstate.core import estimates

    estimator = Estimator(clock)
    monkeypatch.setattr(estimates, "estimator", estimator)
    monkeypatch.setattr("taskstate.templatetags.taskstate.estimator", estimator)
    task = _running(pk=9, progress=25)
    clock.advance(40)
    html = render_to_string("taskstate/_progress.html", {"task": task})
    assert "about 2 min left" in html  # 40 s for 25 %: 120 s to go


@pytest.mark.django_db(transaction=True)
def test_time_left_and_history_of_a_retried_task_leave_out_its_back_off_and_earlier_attempt(
    run_all: Any, user: Any
) -> None:
    # Two tasks whose first attempt fails; 0.5 to 2 s of back-off; the second attempt reports
    # 50 % and waits for the test.
    keys = [f"time-left-after-retry-{n}" for n in range(2)]
    for key in keys:
        actors.HALFWAY[key], actors.FINISH[key] = threading.Event(), threading.Event()
    messages = [
        actors.fails_then_reports_half.send(key, for_state={"user_pk": user.pk}) for key in keys
    ]
    clock = FakeClock()
    try:
        for key in keys:
            assert actors.HALFWAY[key].wait(20)
        assert writer.flush(10)
        row = Task.objects.get(message_id=messages[0].message_id)
        assert (row.status, row.attempts, row.progress) == (Status.RUNNING, 2, 50)
        # As the list view reads it, 10 s into the second attempt: the first attempt and
        # the back-off are no work of this one, so half-way means about 10 s to go.
        clock.now = actors.SECOND_ATTEMPT_BEGAN[keys[0]] + timedelta(seconds=10)
        assert Estimator(clock).seconds_left(row) == pytest.approx(10, abs=0.5)
    finally:
        for key in keys:
            actors.FINISH[key].set()
    run_all()
    rows = [Task.objects.get(message_id=message.message_id) for message in messages]
    assert all(row.status == Status.DONE for row in rows)
    # Whole lives, first start to end, hold their back-off (at least half of the 1 s
    # min_backoff: Dramatiq's jitter may halve it) ...
    assert min((row.finished_at - row.started_at).total_seconds() for row in rows) >= 0.5
    # ... but the actor's history learns how long a run takes: the last attempt's own.
    own = [
        (row.finished_at - actors.SECOND_ATTEMPT_BEGAN[key]).total_seconds()
        for row, key in zip(rows, keys, strict=True)
    ]
    typical = own[0] + HISTORY_WEIGHT * (own[1] - own[0])
    learned = Estimator(clock)
    for row in rows:
        learned.observe(row)
    new = Task(pk=99, status=Status.RUNNING, progress=0, actor_name=rows[0].actor_name)
    new.started_at = clock.now
    assert learned.seconds_left(new) == pytest.approx(typical, abs=0.3)
