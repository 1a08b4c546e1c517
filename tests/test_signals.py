"""Announcing a committed write: every receiver runs, and each one that raises is logged once."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
from django.utils import timezone

import taskstate
from taskstate.core import control
from taskstate.core.group_refresh import group_refresher
from taskstate.core.models import Kind, Status, Task
from taskstate.core.signals import (
    Bar,
    announce,
    announce_progress,
    progress_committed,
    task_changed,
    task_committed,
)
from taskstate.worker.middleware import StateMiddleware
from tests.support.factories import make_task
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)


def _errors(caplog: pytest.LogCaptureFixture, word: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and word in r.getMessage()]


def test_each_failing_receiver_is_logged_exactly_once_with_its_traceback(user, caplog):
    task = Task.objects.create(message_id="sig", actor_name="a", status=Status.DONE, user=user)
    heard: list[str] = []

    def changed_breaks(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("a project's task_changed receiver is broken")

    def committed_breaks(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("a project's task_committed receiver is broken")

    def progress_breaks(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("a project's progress receiver is broken")

    def listens(sender: Any, task: Task, **kwargs: Any) -> None:
        heard.append(task.message_id)

    task_changed.connect(changed_breaks)
    task_committed.connect(committed_breaks)
    task_committed.connect(listens)
    progress_committed.connect(progress_breaks)
    try:
        with caplog.at_level(logging.DEBUG):
            announce(task, committed=True)
            announce_progress(Bar(task.pk, 5, None), user_pk=user.pk)
    finally:
        task_changed.disconnect(changed_breaks)
        task_committed.disconnect(committed_breaks)
        task_committed.disconnect(listens)
        progress_committed.disconnect(progress_breaks)
    assert heard == ["sig"]  # a receiver that raised stopped no other
    for name in ("changed_breaks", "committed_breaks", "progress_breaks"):
        [record] = _errors(caplog, name)
        assert record.exc_info is not None and "is broken" in str(record.exc_info[1])


@pytest.fixture
def changed() -> Iterator[list[tuple[Any, str, str]]]:
    """Every (sender, kind, status) task_changed carried."""
    seen: list[tuple[Any, str, str]] = []

    def receiver(sender: Any, task: Task, **kwargs: Any) -> None:
        seen.append((sender, task.kind, task.status))

    task_changed.connect(receiver)
    yield seen
    task_changed.disconnect(receiver)


def test_task_changed_has_one_sender_whichever_part_wrote_the_row(run_all, user, changed):
    # A worker's writes, a group's row (written by track_group, then refreshed as its
    # children end) and a cancel that ends a scheduled task at once.
    actors.noop.send(for_state={"user_pk": user.pk})
    batch = dramatiq.group(actors.noop.message() for _ in range(2))
    taskstate.track_group(batch, for_state={"user_pk": user.pk}).run()
    run_all()
    assert group_refresher.flush(5.0)
    # A row scheduled an hour ahead (no message: none is left for later tests' workers).
    later = make_task(status=Status.DELAYED, due_at=timezone.now() + timedelta(hours=1))
    cancelled = control.cancel(later)
    assert cancelled is not None and cancelled.status == Status.CANCELLED

    heard = {(kind, status) for _, kind, status in changed}
    assert {(Kind.TASK, Status.DONE), (Kind.TASK, Status.CANCELLED)} <= heard
    assert (Kind.GROUP, Status.DONE) in heard
    assert {sender for sender, _, _ in changed} == {StateMiddleware}
