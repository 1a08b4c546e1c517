"""Owner control's refusals and degraded paths, called directly (no worker needed)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import dramatiq
import pytest

from taskstate.core import control
from taskstate.core.control import RetryRefused
from taskstate.core.models import Status, Task
from tests.testapp import tasks  # noqa: F401  (declares the actors retried here)

pytestmark = pytest.mark.django_db


def failed(user: Any, **fields: Any) -> Task:
    values: dict[str, Any] = {
        "message_id": f"m-{Task.objects.count()}",
        "actor_name": "runs_once",
        "status": Status.FAILED,
        "user": user,
        "retry_message": {"actor_name": "runs_once", "args": ["k"], "kwargs": {}},
    }
    values.update(fields)
    return Task.objects.create(**values)


def test_retry_without_a_stored_message_is_refused(user):
    task = failed(user, retry_message=None)
    with pytest.raises(RetryRefused, match="no stored message"):
        control.retry(task)
    task.refresh_from_db()
    assert not task.seen


def test_retry_of_an_actor_this_process_does_not_declare_is_refused_and_names_it(user):
    task = failed(user, retry_message={"actor_name": "gone_in_the_last_deploy", "args": []})
    with pytest.raises(RetryRefused, match="'gone_in_the_last_deploy' is not declared"):
        control.retry(task)
    task.refresh_from_db()
    assert not task.seen  # still offered: the owner can retry once the actor is back


def test_a_second_retry_of_one_row_is_refused_and_sends_nothing(user, sent):
    task = failed(user)
    first = control.retry(task)
    assert isinstance(first, dramatiq.Message)
    with pytest.raises(RetryRefused, match="retried already"):
        control.retry(task)  # the stale copy a second tab still holds
    assert sent.actors == ["runs_once"]


def test_hard_cancel_without_dramatiq_abort_installed_warns_and_stays_cooperative(
    user, settings, monkeypatch, caplog
):
    settings.TASKSTATE = {"HARD_CANCEL_AFTER": 2}
    monkeypatch.setitem(sys.modules, "dramatiq_abort", None)  # as if not installed
    task = failed(user, status=Status.RUNNING)
    with caplog.at_level(logging.WARNING, logger="taskstate"):
        written = control.cancel(task)
    assert written is not None and written.is_cancelling
    assert any("dramatiq-abort is not installed" in r.getMessage() for r in caplog.records)


def test_hard_cancel_that_dramatiq_abort_refuses_is_logged_and_the_cancel_stands(
    user, settings, caplog
):
    # The test broker has no Abortable middleware: dramatiq-abort's abort() raises.
    settings.TASKSTATE = {"HARD_CANCEL_AFTER": 2}
    task = failed(user, status=Status.RUNNING)
    with caplog.at_level(logging.ERROR, logger="taskstate"):
        written = control.cancel(task)
    assert written is not None and written.is_cancelling
    [record] = [r for r in caplog.records if "could not ask dramatiq-abort" in r.getMessage()]
    assert record.exc_info is not None


def test_retry_of_a_group_whose_child_actor_is_gone_is_refused_and_dismisses_nothing(user):
    group = Task.objects.create(
        message_id="g-1", actor_name="group", status=Status.FAILED, user=user, kind="group"
    )
    failed(user, parent=group, position=0, retry_message={"actor_name": "nowhere", "args": []})
    with pytest.raises(RetryRefused, match="'nowhere' is not declared"):
        control.retry(group)
    assert not Task.objects.filter(seen=True).exists()


def test_cancel_of_a_task_that_has_ended_changes_nothing(user):
    task = failed(user, status=Status.DONE)
    assert control.cancel(task) is None
    task.refresh_from_db()
    assert task.cancel_requested_at is None


def group_of(user: Any, status: str, *children: str) -> Task:
    group = Task.objects.create(
        message_id=f"g-{Task.objects.count()}",
        actor_name="group",
        status=status,
        user=user,
        kind="group",
    )
    for position, child_status in enumerate(children):
        failed(user, parent=group, position=position, status=child_status)
    return group


def test_cancel_of_a_group_that_has_ended_changes_nothing(user):
    group = group_of(user, Status.DONE, Status.DONE)
    assert control.cancel(group) is None
    assert not Task.objects.filter(cancel_requested_at__isnull=False).exists()


def test_hard_cancel_of_a_group_asks_dramatiq_abort_for_each_running_child(user, settings, caplog):
    # The test broker has no Abortable middleware: each ask is refused and logged.
    settings.TASKSTATE = {"HARD_CANCEL_AFTER": 2}
    group = group_of(user, Status.RUNNING, Status.RUNNING, Status.RUNNING, Status.ENQUEUED)
    with caplog.at_level(logging.ERROR, logger="taskstate"):
        written = control.cancel(group)
    assert written is not None and written.is_cancelling
    running = Task.objects.filter(parent=group, status=Status.RUNNING)
    asked = [r for r in caplog.records if "could not ask dramatiq-abort" in r.getMessage()]
    assert sorted(r.args[0] for r in asked) == sorted(running.values_list("pk", flat=True))


def test_retry_of_a_group_with_nothing_to_send_again_is_refused(user):
    group = group_of(user, Status.FAILED, Status.DONE)
    with pytest.raises(RetryRefused, match="no child to send again"):
        control.retry(group)


def test_a_second_retry_of_one_group_is_refused_and_sends_nothing_more(
    user, sent, django_capture_on_commit_callbacks
):
    group = group_of(user, Status.FAILED, Status.DONE, Status.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        new_group = control.retry(group)
    assert isinstance(new_group, Task) and new_group.retry_of_id == group.pk
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RetryRefused, match="retried already"),
    ):
        control.retry(group)
    assert sent.actors == ["runs_once"]
