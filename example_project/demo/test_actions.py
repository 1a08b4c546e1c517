"""The demo's buttons do what their explanations say, on a loaded machine too."""

from __future__ import annotations

import time

import pytest

import taskstate.core.control
from demo import actions
from taskstate.models import Task


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("grace", password="pw")


@pytest.mark.django_db(transaction=True)
def test_the_flaky_import_fails_however_late_its_retries_run(taskstate_worker, user, monkeypatch):
    actions.ACTIONS["flaky"].start(user.pk)
    # A loaded machine: its retries run long after the click.
    clock = time.time
    monkeypatch.setattr(time, "time", lambda: clock() + 3600)

    taskstate_worker.drain()

    task = Task.objects.get(user=user)
    assert (task.status, task.attempts) == ("failed", 3)
    assert "503" in task.error_message


@pytest.mark.django_db(transaction=True)
def test_a_failed_import_retried_from_its_row_goes_through_and_says_so(taskstate_worker, user):
    actions.ACTIONS["flaky"].start(user.pk)
    taskstate_worker.drain()
    failed = Task.objects.get(user=user)
    assert failed.status == "failed"

    taskstate.core.control.retry(failed)
    taskstate_worker.drain()

    again = Task.objects.filter(user=user).exclude(pk=failed.pk).get()
    assert (again.status, again.progress) == ("done", 100)
    assert "Connecting" not in again.progress_message
