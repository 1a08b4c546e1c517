"""taskstate.backends: Django's ``django.tasks`` run on Dramatiq, read from the Task rows.

A real in-process Dramatiq worker runs the ``@task`` functions of tests/testapp/jobs.py.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import django
import pytest
from django.utils import timezone

from taskstate.core.models import Task as Row
from taskstate.core.states import Status

if django.VERSION >= (6, 0):
    from django.tasks import TaskResultStatus, task, task_backends
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch
    from django.tasks.signals import task_enqueued, task_finished, task_started

    from taskstate.backends import DramatiqBackend, owned_by
    from tests.testapp import jobs

pytestmark = [pytest.mark.django6, pytest.mark.django_db(transaction=True)]


def test_enqueue_returns_a_ready_result_and_the_row_follows_the_message(broker):
    result = jobs.add.enqueue(2, 3)

    assert result.status == TaskResultStatus.READY
    assert result.backend == "default"
    assert result.args == [2, 3]
    assert result.enqueued_at is not None
    row = Row.objects.get(message_id=result.id)
    assert row.actor_name == "tests.testapp.jobs.add"
    assert row.status == Status.ENQUEUED
    assert jobs.add.get_result(result.id).status == TaskResultStatus.READY


def test_a_worker_runs_the_task_and_get_result_reads_its_return_value(run_all):
    result = jobs.add.enqueue(2, 3)
    run_all()

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.attempts == 1
    assert result.errors == []
    assert result.started_at is not None
    assert result.last_attempted_at == result.started_at
    assert result.finished_at >= result.started_at
    fetched = jobs.add.get_result(result.id)
    assert (fetched.args, fetched.kwargs, fetched.return_value) == ([2, 3], {}, 5)


def test_using_sends_to_another_queue_and_get_result_keeps_the_options(broker, worker):
    result = jobs.echo.using(queue_name="default").enqueue(1, "two", three=[3])
    _run_queue(broker, worker, "default")
    fetched = jobs.echo.get_result(result.id)
    assert fetched.task.queue_name == "default"
    assert fetched.kwargs == {"three": [3]}
    assert fetched.return_value == {"args": [1, "two"], "kwargs": {"three": [3]}}


def _run_queue(broker: Any, worker: Any, queue_name: str) -> None:
    from dramatiq.brokers.stub import StubBroker

    from taskstate.worker.writer import writer

    if isinstance(broker, StubBroker):
        broker.join(queue_name, timeout=30_000, fail_fast=False)
    else:
        broker.join(queue_name, timeout=30_000)
    worker.join()
    assert writer.flush(30)


def test_a_task_on_its_own_queue_runs_there(broker, worker):
    result = jobs.echo.enqueue(7)
    assert Row.objects.get(message_id=result.id).queue_name == "low"
    _run_queue(broker, worker, "low")
    assert jobs.echo.get_result(result.id).return_value == {"args": [7], "kwargs": {}}


def test_run_after_delays_the_message_and_reads_ready_until_due(broker):
    later = timezone.now() + timedelta(hours=1)
    deferred = jobs.add.using(run_after=later).enqueue(1, 1)

    row = Row.objects.get(message_id=deferred.id)
    assert row.status == Status.DELAYED
    assert abs((row.due_at - later).total_seconds()) < 1
    fetched = jobs.add.get_result(deferred.id)
    assert fetched.status == TaskResultStatus.READY
    assert fetched.task.run_after == later


def test_a_deferred_task_runs_once_due(run_all):
    soon = timezone.now() + timedelta(milliseconds=300)
    result = jobs.add.using(run_after=soon).enqueue(2, 2)
    run_all()

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.started_at >= soon


def test_a_failure_reads_failed_with_the_exception_and_its_traceback(run_all):
    result = jobs.fails.enqueue("broken on purpose")
    run_all()

    fetched = jobs.fails.get_result(result.id)
    assert fetched.status == TaskResultStatus.FAILED
    assert fetched.attempts == 1
    assert [e.exception_class_path for e in fetched.errors] == ["builtins.ValueError"]
    assert fetched.errors[0].exception_class is ValueError
    assert "broken on purpose" in fetched.errors[0].traceback
    assert fetched.finished_at is not None
    with pytest.raises(ValueError, match="Task failed"):
        _ = fetched.return_value


def test_last_attempted_at_is_the_last_attempts_start(run_all, monkeypatch):
    import dramatiq

    actor = dramatiq.get_broker().get_actor(jobs.fails_first_attempt.module_path)
    # Dramatiq retries the failed first attempt at once (the backend sets only max_retries).
    monkeypatch.setitem(actor.options, "max_retries", 1)
    monkeypatch.setitem(actor.options, "min_backoff", 10)
    monkeypatch.setitem(actor.options, "max_backoff", 20)
    result = jobs.fails_first_attempt.enqueue()
    run_all()

    fetched = jobs.fails_first_attempt.get_result(result.id)
    row = Row.objects.get(message_id=result.id)
    assert (fetched.status, fetched.return_value, fetched.attempts) == ("SUCCESSFUL", 2, 2)
    assert fetched.started_at == row.started_at
    assert fetched.last_attempted_at == row.attempt_started_at
    assert fetched.started_at < fetched.last_attempted_at <= fetched.finished_at


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Status.ENQUEUED, "READY"),
        (Status.DELAYED, "READY"),
        (Status.RETRYING, "READY"),
        (Status.RUNNING, "RUNNING"),
        (Status.DONE, "SUCCESSFUL"),
        (Status.FAILED, "FAILED"),
        (Status.CANCELLED, "FAILED"),
        (Status.SKIPPED, "FAILED"),
    ],
)
def test_each_row_status_reads_as_a_django_status(broker, status, expected):
    result = jobs.add.enqueue(1, 2)
    Row.objects.filter(message_id=result.id).update(status=status)

    assert jobs.add.get_result(result.id).status == expected


def test_a_cancelled_task_reads_failed_with_taskstates_cancel(broker):
    result = jobs.add.enqueue(1, 2)
    Row.objects.filter(message_id=result.id).update(status=Status.CANCELLED, attempts=1)

    errors = jobs.add.get_result(result.id).errors
    assert [e.exception_class_path for e in errors] == ["taskstate.Cancelled"]
    import taskstate

    assert errors[0].exception_class is taskstate.Cancelled


def test_signals_enqueued_started_and_finished_carry_the_result(run_all):
    seen: list[tuple[str, str, str, Any]] = []

    def on(name: str) -> Any:
        def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, task_result.id, task_result.status, sender))

        return receiver

    receivers = {
        task_enqueued: on("enqueued"),
        task_started: on("started"),
        task_finished: on("finished"),
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    try:
        ok = jobs.add.enqueue(1, 1)
        bad = jobs.fails.enqueue("no")
        run_all()
    finally:
        for signal, receiver in receivers.items():
            signal.disconnect(receiver)

    for result, final in ((ok, "SUCCESSFUL"), (bad, "FAILED")):
        mine = [(name, status) for name, rid, status, _ in seen if rid == result.id]
        # Sent once the broker has the message: the worker may start it first.
        assert ("enqueued", "READY") in mine
        mine.remove(("enqueued", "READY"))
        assert mine == [("started", "RUNNING"), ("finished", final)]
    assert {sender for *_, sender in seen} == {DramatiqBackend}


def test_takes_context_progress_and_an_owner(run_all, user):
    with owned_by(user, description="Counting"):
        result = jobs.with_context.enqueue(3)
    run_all()

    row = Row.objects.get(message_id=result.id)
    assert (row.user_id, row.description, row.progress) == (user.pk, "Counting", 100)
    assert row.progress_message == "step 3"
    assert jobs.with_context.get_result(result.id).return_value == {"id": result.id, "attempt": 1}
    assert list(Row.objects.for_user(user).for_display()) == [row]


def test_without_an_owner_the_row_has_no_user(broker):
    result = jobs.add.enqueue(1, 2)
    assert Row.objects.get(message_id=result.id).user_id is None


def test_async_task_with_aenqueue_and_aget_result(run_all, user):
    async def send() -> Any:
        with owned_by(user.pk, description="From async code"):
            return await jobs.async_double.aenqueue(21)

    result = asyncio.run(_closing(send()))
    _wait_for_row(result.id)
    run_all()

    row = Row.objects.get(message_id=result.id)
    assert (row.user_id, row.description) == (user.pk, "From async code")
    fetched = asyncio.run(_closing(jobs.async_double.aget_result(result.id)))
    assert fetched.return_value == 42
    asyncio.run(_closing(result.arefresh()))
    assert result.status == TaskResultStatus.SUCCESSFUL


async def _closing(work: Any) -> Any:
    """``work``, then the connections of asgiref's thread closed (the test database is
    dropped at the end of the run)."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    try:
        return await work
    finally:
        await sync_to_async(connections.close_all)()


def _wait_for_row(result_id: str) -> None:
    """The sender's row of an async enqueue is written by a thread moments later."""
    from taskstate.core.background import background

    background.flush(10)
    assert Row.objects.filter(message_id=result_id).exists()


def test_get_result_of_an_unknown_id_or_another_task(broker):
    with pytest.raises(TaskResultDoesNotExist):
        jobs.add.get_result("no-such-id")
    result = jobs.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        jobs.fails.get_result(result.id)


def test_a_plain_tracked_actor_is_no_django_task(broker):
    from tests.testapp.tasks import noop

    message = noop.send(for_state={})
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(message.message_id)


def _nested() -> Any:
    def inner() -> None:
        return None

    return inner


def test_invalid_tasks_are_refused_at_definition():
    with pytest.raises(InvalidTask, match="module level"):
        task(_nested())
    with pytest.raises(InvalidTask, match="not valid for backend"):
        jobs.add.using(queue_name="elsewhere")
    with pytest.raises(InvalidTask, match="priority"):
        jobs.add.using(priority=10)
    with pytest.raises(InvalidTask, match="aware"):
        jobs.add.using(run_after=timezone.now().replace(tzinfo=None))


def takes_for_state(for_state: Any = None) -> None:
    return None


def test_a_function_taking_for_state_is_refused():
    with pytest.raises(InvalidTask, match="for_state"):
        task(takes_for_state)


def test_for_state_as_a_keyword_is_refused(broker):
    with pytest.raises(InvalidTask, match="owned_by"):
        jobs.echo.enqueue(for_state={"user_pk": 1})


def unreachable() -> None:
    return None


def test_a_task_not_reachable_by_its_path_is_refused_at_enqueue(broker):
    hidden = task(unreachable)  # not bound to the module's name "unreachable"
    with pytest.raises(InvalidTask, match="dotted path"):
        hidden.enqueue()


def test_checks_name_a_broker_without_state_middleware(broker, settings):
    from taskstate.worker.middleware import StateMiddleware

    backend = task_backends["default"]
    assert [m.id for m in backend.check()] == []
    kept = list(broker.middleware)
    broker.middleware[:] = [m for m in kept if not isinstance(m, StateMiddleware)]
    try:
        assert [m.id for m in backend.check()] == ["taskstate.backends.E001"]
    finally:
        broker.middleware[:] = kept


def test_checks_name_bad_queues_and_results_not_kept(settings):
    settings.TASKS = {
        "default": settings.TASKS["default"],
        "open": {"BACKEND": "taskstate.backends.DramatiqBackend", "QUEUES": []},
        "bad": {"BACKEND": "taskstate.backends.DramatiqBackend", "QUEUES": ["9lives"]},
    }
    settings.TASKSTATE = {**settings.TASKSTATE, "STORE_RESULT": False}

    assert [m.id for m in task_backends["open"].check()] == [
        "taskstate.backends.E002",
        "taskstate.backends.W001",
    ]
    assert [m.id for m in task_backends["bad"].check()] == [
        "taskstate.backends.E003",
        "taskstate.backends.W001",
    ]


def test_owner_cancel_ends_a_running_task_failed(run_all, user):
    import threading

    from taskstate.core import control
    from taskstate.worker.writer import writer

    started = threading.Event()

    def on_start(sender: Any, task_result: Any, **kwargs: Any) -> None:
        started.set()

    task_started.connect(on_start)
    try:
        with owned_by(user):
            result = jobs.until_cancelled.enqueue()
        assert started.wait(30)
    finally:
        task_started.disconnect(on_start)
    assert writer.flush(30)
    control.cancel(Row.objects.get(message_id=result.id))
    run_all()

    fetched = jobs.until_cancelled.get_result(result.id)
    assert fetched.status == TaskResultStatus.FAILED
    assert Row.objects.get(message_id=result.id).status == Status.CANCELLED


def test_owner_retry_sends_the_task_again(run_all, user):
    from taskstate.core import control

    with owned_by(user):
        result = jobs.fails.enqueue("once")
    run_all()
    control.retry(Row.objects.get(message_id=result.id))
    run_all()

    again = Row.objects.get(retry_of__message_id=result.id)
    fetched = jobs.fails.get_result(again.message_id)
    assert fetched.status == TaskResultStatus.FAILED
    assert fetched.args == ["once"]
    assert again.user_id == user.pk


def clash() -> None:
    return None


def test_a_task_named_like_an_existing_actor_is_refused(broker):
    import dramatiq

    dramatiq.actor(lambda: None, actor_name="tests.test_backends.clash", broker=broker)
    try:
        with pytest.raises(InvalidTask, match="actor named"):
            task(clash)
    finally:
        del broker.actors["tests.test_backends.clash"]


def test_checks_name_queues_the_broker_does_not_know(broker):
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from taskstate.worker.middleware import StateMiddleware

    backend = task_backends["default"]
    other = StubBroker(middleware=[StateMiddleware()])
    dramatiq.set_broker(other)
    try:
        ids = [m.id for m in backend.check()]
    finally:
        dramatiq.set_broker(broker)
        other.close()
    assert ids == ["taskstate.backends.E004", "taskstate.backends.E004"]
