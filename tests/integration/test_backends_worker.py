"""taskstate.backends with a separate ``rundramatiq`` on Redis, PostgreSQL underneath."""

from __future__ import annotations

from datetime import timedelta

import django
import pytest
from django.utils import timezone

from taskstate.core.models import Task as Row
from tests.integration.test_worker_process import final, wait_for

if django.VERSION >= (6, 0):
    from django.tasks import TaskResultStatus

    from taskstate.backends import owned_by
    from tests.testapp import jobs

pytestmark = pytest.mark.django6


def test_a_worker_process_runs_a_task_and_the_web_side_reads_its_result(worker_process, user):
    with owned_by(user, description="elsewhere"):
        result = jobs.with_context.enqueue(4)
    final(result.id)

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"id": result.id, "attempt": 1}
    assert result.attempts == 1
    row = Row.objects.get(message_id=result.id)
    assert (row.user_id, row.description, row.progress) == (user.pk, "elsewhere", 100)


def test_a_worker_process_reports_a_failure_with_its_traceback(worker_process):
    result = jobs.fails.enqueue("from the worker process")
    final(result.id)

    fetched = jobs.fails.get_result(result.id)
    assert fetched.status == TaskResultStatus.FAILED
    assert fetched.errors[0].exception_class is ValueError
    assert "from the worker process" in fetched.errors[0].traceback


def test_a_worker_process_runs_other_queues_and_deferred_tasks(worker_process):
    on_low = jobs.echo.enqueue("low")
    soon = timezone.now() + timedelta(seconds=1)
    deferred = jobs.add.using(run_after=soon).enqueue(20, 22)
    assert jobs.add.get_result(deferred.id).status == TaskResultStatus.READY
    final(on_low.id)
    final(deferred.id)

    assert jobs.echo.get_result(on_low.id).return_value == {"args": ["low"], "kwargs": {}}
    fetched = jobs.add.get_result(deferred.id)
    assert fetched.return_value == 42
    assert fetched.started_at >= soon


def test_an_async_task_runs_in_a_worker_process(worker_process):
    result = jobs.async_double.enqueue(8)
    wait_for(lambda: Row.objects.filter(message_id=result.id, status="done").exists())
    assert jobs.async_double.get_result(result.id).return_value == 16
