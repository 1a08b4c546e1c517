"""Announcing a committed write: every receiver runs, and each one that raises is logged once."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from taskstate.models import Status, Task
from taskstate.signals import (
    announce,
    announce_progress,
    progress_committed,
    task_changed,
    task_committed,
)

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
            announce(task, sender=Task, committed=True)
            announce_progress(
                sender=Task, task_pk=task.pk, user_pk=user.pk, percent=5, message=None
            )
    finally:
        task_changed.disconnect(changed_breaks)
        task_committed.disconnect(committed_breaks)
        task_committed.disconnect(listens)
        progress_committed.disconnect(progress_breaks)
    assert heard == ["sig"]  # a receiver that raised stopped no other
    for name in ("changed_breaks", "committed_breaks", "progress_breaks"):
        [record] = _errors(caplog, name)
        assert record.exc_info is not None and "is broken" in str(record.exc_info[1])
