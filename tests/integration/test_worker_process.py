"""A separate ``rundramatiq`` process on the Redis broker, PostgreSQL underneath."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from taskstate.core.models import Status, Task
from tests.testapp import tasks as actors


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def final(message_id: str, timeout: float = 30.0) -> Task:
    return wait_for(
        lambda: Task.objects.filter(
            message_id=message_id, status__in=["done", "failed", "skipped"]
        ).first(),
        timeout,
        f"task {message_id} to finish",
    )


def test_worker_process_records_a_whole_lifecycle(worker_process, user):
    message = actors.with_progress.send(
        5, for_state={"user_pk": user.pk, "description": "in another process"}
    )
    task = final(message.message_id)
    assert task.status == Status.DONE
    assert (task.user_id, task.description, task.result, task.progress) == (
        user.pk,
        "in another process",
        5,
        100,
    )
    assert task.progress_message == "step 5"
    assert task.attempts == 1 and task.started_at and task.finished_at


def test_worker_process_retries_then_fails(worker_process, user):
    message = actors.always_fails.send(for_state={"user_pk": user.pk})
    task = final(message.message_id)
    assert (task.status, task.attempts, task.error_type) == (Status.FAILED, 3, "ValueError")


def test_worker_that_wins_the_race_against_the_senders_commit_leaves_one_right_row(
    worker_process, user
):
    with transaction.atomic():
        message = actors.noop.send(for_state={"user_pk": user.pk, "description": "race"})
        # The sender's transaction is still open while the worker finishes the message.
        wait_for(
            lambda: Task.objects.filter(message_id=message.message_id, status="done").exists(),
            what="the worker to finish before the sender commits",
        )
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.description == "race"
    assert Task.objects.filter(message_id=message.message_id).count() == 1


def test_many_messages_through_the_worker_process_each_keep_their_own_data(
    worker_process, django_user_model
):
    users = [django_user_model.objects.create_user(f"p{i}") for i in range(4)]
    sent = {}
    for i in range(120):
        owner = users[i % 4]
        message = actors.labelled.send(for_state={"user_pk": owner.pk, "description": f"p-{i}"})
        sent[message.message_id] = (owner.pk, f"p-{i}")
        actors.untracked_noop.send()
    wait_for(lambda: Task.objects.filter(status="done").count() == len(sent), 60, "all tasks done")
    for task in Task.objects.all():
        owner_pk, label = sent[task.message_id]
        assert (task.user_id, task.description, task.result, task.progress_message) == (
            owner_pk,
            label,
            label,
            label,
        )


@pytest.mark.parametrize("kill_after", [0.5])
def test_killed_worker_leaves_running_and_cleanup_fails_it(
    process_env, broker, own_processes, user, settings, kill_after
):
    """SIGKILL mid-task: the row stays running until the cleanup's dead-worker rule."""
    from taskstate.cleanup import cleanup
    from tests.support.processes import start_worker

    worker = start_worker(process_env)
    try:
        message = actors.sleeps.send(30, for_state={"user_pk": user.pk})
        wait_for(
            lambda: Task.objects.filter(message_id=message.message_id, status="running").exists(),
            what="the task to start",
        )
        worker.kill()
    finally:
        worker.stop()
    assert Task.objects.get(message_id=message.message_id).status == Status.RUNNING
    settings.TASKSTATE = {"RUNNING_TIMEOUT": 60}
    # A minute passes without a word from the dead worker.
    Task.objects.filter(message_id=message.message_id).update(
        updated_at=timezone.now() - timedelta(seconds=61)
    )
    assert cleanup().abandoned_failed == 1
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.FAILED and task.error_type == "taskstate.WorkerLost"
