"""Every row ends: a retrying or delayed task whose message never comes is failed.

The row records when its message is due (``due_at``: the eta of a delayed message, the
time of the next retry); the cleanup fails the rows still waiting ``OVERDUE_AFTER``
seconds after that, as ``taskstate.MessageLost``, and their owners can dismiss them.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from taskstate.cleanup import cleanup
from taskstate.core.models import Status, Task
from taskstate.core.signals import task_changed
from tests.support.factories import ago, make_task
from tests.testapp import tasks as actors


def _later(seconds: float) -> Any:
    return timezone.now() + timedelta(seconds=seconds)


@pytest.mark.django_db(transaction=True)
def test_delayed_message_records_when_it_is_due(broker, user):
    before = timezone.now()
    message = actors.noop.send_with_options(
        kwargs={"for_state": {"user_pk": user.pk}}, delay=60_000
    )
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DELAYED
    assert task.due_at is not None
    assert before + timedelta(seconds=59) <= task.due_at <= _later(61)


@pytest.mark.django_db(transaction=True)
def test_retrying_task_records_when_its_next_attempt_is_due(run_all, user):
    message = actors.fails_then_waits.send(for_state={"user_pk": user.pk})
    rows = Task.objects.filter(message_id=message.message_id, status=Status.RETRYING)
    deadline = time.monotonic() + 20
    while not rows.exists():  # the worker's first attempt, then its retrying write
        assert time.monotonic() < deadline, "no retrying row"
        time.sleep(0.02)
    task = rows.get()
    assert task.due_at is not None
    # Dramatiq's backoff: half the 3 s, plus up to half again of jitter.
    assert _later(0.5) <= task.due_at <= _later(3.1)
    run_all()  # the retry runs (and fails for good): nothing left in the queues
    task.refresh_from_db()
    assert task.status == Status.FAILED


def _overdue_rows() -> dict[str, Task]:
    return {
        "retrying_overdue": make_task(
            status=Status.RETRYING, attempts=1, due_at=ago(120), updated_at=ago(200)
        ),
        "delayed_overdue": make_task(status=Status.DELAYED, due_at=ago(61), updated_at=ago(9_000)),
        "retrying_waiting": make_task(status=Status.RETRYING, attempts=1, due_at=ago(30)),
        "delayed_far_ahead": make_task(status=Status.DELAYED, due_at=_later(86_400 * 30)),
        # Written before due_at existed: when it is due is unknown, so it is left alone.
        "delayed_unknown": make_task(status=Status.DELAYED, updated_at=ago(100_000)),
    }


@pytest.mark.django_db
def test_cleanup_fails_retrying_and_delayed_rows_whose_message_is_overdue(settings, user):
    settings.TASKSTATE = {"OVERDUE_AFTER": 60}
    rows = _overdue_rows()
    changed: list[str] = []

    def receiver(sender: Any, task: Task, **kwargs: Any) -> None:
        changed.append(task.message_id)

    task_changed.connect(receiver)
    try:
        report = cleanup()
    finally:
        task_changed.disconnect(receiver)

    assert report.lost_failed == 2
    lost = {rows["retrying_overdue"].pk, rows["delayed_overdue"].pk}
    for name, row in rows.items():
        row.refresh_from_db()
        if row.pk in lost:
            assert row.status == Status.FAILED, name
            assert row.error_type == "taskstate.MessageLost"
            assert "OVERDUE_AFTER" in row.error_message
            assert row.finished_at is not None
        else:
            assert row.status in (Status.RETRYING, Status.DELAYED), name
    assert sorted(changed) == sorted(
        rows[n].message_id for n in ("retrying_overdue", "delayed_overdue")
    )
    assert cleanup().lost_failed == 0


@pytest.mark.django_db
def test_a_lost_task_once_failed_can_be_dismissed(settings, user):
    settings.TASKSTATE = {"OVERDUE_AFTER": 60}
    task = make_task(status=Status.RETRYING, user=user, attempts=1, due_at=ago(3600))
    cleanup()
    client = Client()
    client.force_login(user)
    response = client.post(reverse("taskstate:seen", args=[task.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    task.refresh_from_db()
    assert (task.status, task.seen) == (Status.FAILED, True)


@pytest.mark.django_db
def test_overdue_after_defaults_to_an_hour(settings):
    settings.TASKSTATE = {}
    waiting = make_task(status=Status.RETRYING, attempts=1, due_at=ago(3_500))
    lost = make_task(status=Status.RETRYING, attempts=1, due_at=ago(3_700))
    assert cleanup().lost_failed == 1
    waiting.refresh_from_db()
    lost.refresh_from_db()
    assert (waiting.status, lost.status) == (Status.RETRYING, Status.FAILED)
