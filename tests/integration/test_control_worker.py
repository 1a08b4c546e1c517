"""Owner control on a real ``rundramatiq`` process, Redis broker, PostgreSQL underneath."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from django.urls import reverse

from taskstate.core.models import Status, Task
from tests.support.faults import wait_for
from tests.support.processes import Process, start_worker
from tests.testapp import tasks as actors

_keys = itertools.count(1)


def row_when(message: Any, what: str, **fields: Any) -> Task:
    return wait_for(
        lambda: Task.objects.filter(message_id=message.message_id, **fields).first(),
        timeout=30,
        what=what,
    )


@pytest.fixture
def owner(client, user):
    client.force_login(user)
    return client


def test_cancel_on_a_worker_process_stops_a_task_reporting_progress(worker_process, owner, user):
    message = actors.counts_until_cancelled.send(f"w{next(_keys)}", for_state={"user_pk": user.pk})
    task = row_when(message, "progress", status=Status.RUNNING, progress__gt=0)
    assert owner.post(reverse("taskstate:cancel", args=[task.pk])).status_code == 302
    task = row_when(message, "the cancel", status=Status.CANCELLED)
    assert task.attempts == 1 and task.progress < 100


def test_cancel_of_a_delayed_message_on_a_worker_process_skips_it(worker_process, owner, user):
    message = actors.runs_once.send_with_options(
        args=(f"w{next(_keys)}",), kwargs={"for_state": {"user_pk": user.pk}}, delay=1500
    )
    task = row_when(message, "the delayed row", status=Status.DELAYED)
    owner.post(reverse("taskstate:cancel", args=[task.pk]))
    # Due in under a minute: the request is recorded ("Cancelling"), the worker ends it.
    asked = Task.objects.get(pk=task.pk)
    assert asked.status == Status.DELAYED and asked.is_cancelling
    # Past its eta the worker takes it, finds the cancel and skips it: the body never
    # runs (a run would write running, then done).
    worker_process.wait_for_output("was skipped", timeout=30)
    task = row_when(message, "the skip", status=Status.CANCELLED)
    assert (task.status, task.attempts, task.started_at) == (Status.CANCELLED, 0, None)


@pytest.fixture
def abort_worker(process_env, broker, own_processes) -> Iterator[Process]:
    """A worker with dramatiq-abort's Abortable; this process sends aborts through it."""
    from tests.testapp.abort import TestAbortable

    abortable = TestAbortable()
    broker.middleware.append(abortable)
    worker = start_worker({**process_env, "TASKSTATE_TEST_ABORT": "1"})
    yield worker
    worker.stop()
    broker.middleware.remove(abortable)


@override_settings(TASKSTATE={"PROGRESS_INTERVAL": 0.5, "HARD_CANCEL_AFTER": 1.0})
def test_hard_cancel_interrupts_a_task_that_never_reports(abort_worker, owner, user):
    message = actors.never_reports.send(f"w{next(_keys)}", for_state={"user_pk": user.pk})
    task = row_when(message, "the task to run", status=Status.RUNNING)
    owner.post(reverse("taskstate:cancel", args=[task.pk]))
    assert Task.objects.get(pk=task.pk).is_cancelling
    task = row_when(message, "the hard cancel", status=Status.CANCELLED)
    # Interrupted by dramatiq-abort's Abort: not retried (max_retries=3), no result.
    assert (task.attempts, task.result) == (1, None)
