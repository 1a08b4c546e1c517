"""``progress()`` and ``track()`` as units, without a broker: what reaches the row, when.

Reports go through the background writer (its own thread and connection): ``row()``
flushes it before it reads.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.utils import timezone

import taskstate
from taskstate.core import conf
from taskstate.core import transitions as t
from taskstate.core.for_state import Origin, TaskIdentity
from taskstate.core.models import Status, Task
from taskstate.core.states import TERMINAL_ORDER, running_order
from taskstate.worker.tracking import MessageRun, _current, current_run, held_back, progress, track
from taskstate.worker.writer import cancels, writer

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE_ID = "progress-message"
progress_module = importlib.import_module("taskstate.worker.tracking")


@dataclass
class Clock:
    """Stands in for the ``time`` module inside taskstate.worker.tracking: time moves when told."""

    now: float = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module, "time", fake)
    return fake


def make_run(interval: float = 0.5, attempt: int = 1) -> MessageRun:
    identity = TaskIdentity(user_pk=None, description="", app_name="", model_name="")
    origin = Origin(
        message_id=MESSAGE_ID,
        actor_name="export",
        queue_name="default",
        sent_at=timezone.now(),
        identity=identity,
    )
    return MessageRun(origin=origin, attempt=attempt, interval=interval)


@pytest.fixture
def task() -> Task:
    """The row of a message in its first attempt, as the middleware leaves it."""
    return Task.objects.create(
        message_id=MESSAGE_ID,
        actor_name="export",
        status=Status.RUNNING,
        state_order=running_order(1),
        attempts=1,
        started_at=timezone.now(),
    )


@pytest.fixture
def run(task: Task, clock: Clock) -> Iterator[MessageRun]:
    """A tracked message being run in this thread, throttled to one write per 0.5 s."""
    current = make_run(interval=0.5)
    token = _current.set(current)
    try:
        yield current
    finally:
        _current.reset(token)


def row() -> tuple[int, str]:
    assert writer.flush(10)
    task = Task.objects.get(message_id=MESSAGE_ID)
    return task.progress, task.progress_message


# --- outside a tracked message ----------------------------------------------------------


def test_progress_outside_a_tracked_message_does_nothing(django_assert_num_queries):
    assert current_run() is None
    with django_assert_num_queries(0):
        progress(50)
        progress(5, 10, message="half")
        taskstate.progress(1)


def test_track_outside_a_tracked_message_yields_every_item_without_queries(
    django_assert_num_queries,
):
    with django_assert_num_queries(0):
        assert list(track(range(5))) == [0, 1, 2, 3, 4]
        assert list(taskstate.track(iter("abc"))) == ["a", "b", "c"]


# --- writes and the throttle ------------------------------------------------------------


def test_first_report_is_queued_at_once(run, monkeypatch):
    monkeypatch.setattr(conf, "WRITE_MAX_DELAY", 60)  # the batch waits for row()'s flush
    progress(10, message="starting")
    assert writer.unwritten() == 1
    assert run.written == (10, "starting")
    assert run.pending is None
    assert row() == (10, "starting")


def test_report_within_the_interval_is_held_back_not_queued(run, clock):
    progress(10)
    assert row() == (10, "")
    clock.advance(0.4)
    progress(20, message="later")
    assert writer.unwritten() == 0
    assert row() == (10, "")
    assert run.pending == (20, "later")


def test_report_after_the_interval_is_written(run, clock):
    progress(10)
    clock.advance(0.2)
    progress(20)
    clock.advance(0.3)
    progress(30)
    assert row() == (30, "")
    assert run.pending is None


def test_unchanged_value_queues_nothing(run, clock):
    progress(10, message="copying")
    assert row() == (10, "copying")
    clock.advance(0.9)
    progress(10)
    progress(10, message="copying")
    progress(1, 10)
    assert writer.unwritten() == 0
    assert run.pending is None


def test_many_looks_within_the_check_interval_read_cancel_requests_once(run, cancel_reads):
    for _ in range(50):
        progress(10)
    # One read for the whole process (CancelWatch), then answers from what it knows
    # until it is older than conf.CANCEL_CHECK_INTERVAL.
    assert cancel_reads.count == 1


def test_done_of_total_is_a_percentage(run):
    progress(4, 10)
    assert row()[0] == 40


def test_fractions_round_down(run, clock):
    progress(1, 3)
    assert row()[0] == 33
    clock.advance(1)
    progress(99.9)
    assert row()[0] == 99


@pytest.mark.parametrize(("args", "expected"), [((150,), 100), ((-5,), 0), ((12, 10), 100)])
def test_values_are_clamped_to_0_to_100(run, clock, args, expected):
    progress(50)
    clock.advance(1)
    progress(*args)
    assert row()[0] == expected


@pytest.mark.parametrize(
    "args",
    [("abc",), (None,), (5, 0), (5, "10"), (float("nan"),), (float("inf"),), ([1],)],
    ids=["text", "none", "zero-total", "text-total", "nan", "inf", "list"],
)
def test_bad_values_are_ignored_with_a_warning(run, clock, caplog, args):
    progress(30, message="ok so far")
    clock.advance(1)
    with caplog.at_level(logging.WARNING, logger="taskstate"):
        progress(*args)  # must not raise
    assert row() == (30, "ok so far")
    assert run.pending is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "ignored" in caplog.records[0].getMessage()


def test_message_none_keeps_the_previous_message(run, clock):
    progress(10, message="copying files")
    clock.advance(1)
    progress(20)
    assert row() == (20, "copying files")


def test_message_none_keeps_a_message_that_was_held_back(run, clock):
    progress(10)
    progress(20, message="phase two")  # held back
    progress(30)  # still held back; keeps "phase two"
    assert run.pending == (30, "phase two")
    clock.advance(1)
    progress(40)
    assert row() == (40, "phase two")


def test_long_message_is_cut_to_the_column_length(run):
    progress(10, message="x" * 300)
    assert row() == (10, "x" * 254 + "\u2026")


def test_report_for_another_attempt_changes_nothing(task, clock):
    # The row belongs to a later attempt (a redelivery); this run is a leftover.
    Task.objects.filter(pk=task.pk).update(attempts=2, progress=5, state_order=running_order(2))
    stale = make_run(interval=0, attempt=1)
    token = _current.set(stale)
    try:
        progress(90, message="from the old attempt")
    finally:
        _current.reset(token)
    assert row() == (5, "")
    # Refused: the attempt's next look reads the row (the refusal may be a cancel).
    assert stale.read_row


def test_report_after_the_task_finished_changes_nothing(run, task):
    Task.objects.filter(pk=task.pk).update(
        status=Status.DONE, progress=100, state_order=TERMINAL_ORDER
    )
    progress(50, message="late")
    assert row() == (100, "")


# --- held_back() ------------------------------------------------------------------------


def test_held_back_gives_the_pending_value_once_then_the_last_queued(run):
    progress(10, message="started")
    progress(70, message="almost")
    assert held_back(run) == {"progress": 70, "progress_message": "almost"}
    assert run.pending is None
    assert held_back(run) == {"progress": 10, "progress_message": "started"}


def test_held_back_without_a_message_names_the_message_the_running_write_cleared(run):
    # The final change has the columns of the attempt's other changes: one statement.
    progress(10)
    progress(70)
    assert held_back(run) == {"progress": 70, "progress_message": ""}


# --- track() ----------------------------------------------------------------------------


def test_track_yields_every_item_and_ends_at_100(task, clock):
    unthrottled = make_run(interval=0)
    token = _current.set(unthrottled)
    try:
        items = list(track(list(range(10))))
    finally:
        _current.reset(token)
    assert items == list(range(10))
    assert row()[0] == 100


def test_track_holds_back_the_final_100_for_the_final_write(run):
    assert list(track(["a", "b", "c", "d"])) == ["a", "b", "c", "d"]
    assert row()[0] == 25  # the first item, written at once
    assert held_back(run) == {"progress": 100, "progress_message": ""}


def test_track_reports_after_each_item_not_before(task, clock):
    unthrottled = make_run(interval=0)
    token = _current.set(unthrottled)
    seen: list[int] = []
    try:
        for _ in track(range(4)):
            seen.append(row()[0])
    finally:
        _current.reset(token)
    assert seen == [0, 25, 50, 75]
    assert row()[0] == 100


def test_track_of_a_generator_without_total_counts_items_in_the_message(task, clock):
    unthrottled = make_run(interval=0)
    token = _current.set(unthrottled)
    try:
        items = list(track(str(i) for i in range(7)))
    finally:
        _current.reset(token)
    assert items == [str(i) for i in range(7)]
    assert row() == (0, "7 done")


def test_track_of_a_generator_with_total_reports_percent(task, clock):
    unthrottled = make_run(interval=0)
    token = _current.set(unthrottled)
    try:
        assert sum(track((i for i in range(1, 6)), total=5)) == 15
    finally:
        _current.reset(token)
    assert row()[0] == 100


def test_track_that_stops_early_leaves_the_last_item_reported(task, clock):
    unthrottled = make_run(interval=0)
    token = _current.set(unthrottled)
    try:
        for item in track(range(10)):
            if item == 2:
                break
    finally:
        _current.reset(token)
    assert row()[0] == 20


def test_progress_never_raises_even_when_the_row_is_gone(run, task):
    Task.objects.filter(pk=task.pk).delete()
    progress(50)  # queued: the writer upserts a running row, as the running change would
    assert row() == (50, "")


# --- cancel requests ---------------------------------------------------------------------


def test_progress_raises_cancelled_once_the_row_is_asked_to_cancel(run, task, clock):
    run.options = {}
    progress(10)
    assert row() == (10, "")
    assert t.request_cancel(task.pk)
    cancels.forget()  # what this process knows is older than CANCEL_CHECK_INTERVAL
    clock.advance(1)
    with pytest.raises(taskstate.Cancelled):
        progress(20)
    # The write did not land, and the attempt is marked so that Retries leaves it alone.
    assert row()[0] == 10
    assert run.options["throws"] == (BaseException,)
    with pytest.raises(taskstate.Cancelled):
        progress(30)


def test_a_refused_report_makes_the_next_look_read_the_row(run, task, clock, cancel_reads):
    progress(10)
    assert row() == (10, "")
    assert t.request_cancel(task.pk)  # the watch does not know yet: read before this
    assert not taskstate.cancel_requested()
    clock.advance(1)
    progress(20)  # refused by the row asked to cancel
    assert row() == (10, "")
    reads = cancel_reads.count
    with pytest.raises(taskstate.Cancelled):
        progress(30)
    assert cancel_reads.count == reads  # the row was read, not the watch


def test_track_raises_cancelled_between_items(run, task, clock):
    assert t.request_cancel(task.pk)
    clock.advance(5)
    seen = []
    with pytest.raises(taskstate.Cancelled):
        for item in track(range(10)):
            seen.append(item)
    assert seen == [0]


def test_cancel_requested_reads_at_most_once_per_interval(run, task, monkeypatch, cancel_reads):
    assert not taskstate.cancel_requested()  # first look
    assert t.request_cancel(task.pk)
    assert not taskstate.cancel_requested()  # within the interval: not read again
    assert cancel_reads.count == 1
    monkeypatch.setattr(cancels, "age", lambda: 5.0)  # older than CANCEL_CHECK_INTERVAL
    assert taskstate.cancel_requested()
    assert cancel_reads.count == 2


def test_cancel_requested_outside_a_tracked_message_is_false():
    assert taskstate.cancel_requested() is False
