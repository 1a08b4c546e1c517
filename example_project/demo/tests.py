"""The demo's own tests, written as a project that uses taskstate writes them
(docs/testing.md shows each one). Run: ``cd example_project && pytest``."""

from __future__ import annotations

from unittest.mock import ANY

import dramatiq
import pytest
from django.urls import reverse

import taskstate
from demo import tasks
from taskstate.models import Task
from taskstate.testing import wait_for_status


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("ada", password="pw")


# --- a tracked actor's final row -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_quick_ping_ends_done_with_its_result(taskstate_worker, user):
    message = tasks.quick_ping.send(for_state={"user_pk": user.pk, "description": "Ping"})

    taskstate_worker.drain()  # runs every queued message; returns once every state is written

    task = Task.objects.get(message_id=message.message_id)
    assert task.status == "done"
    assert task.user == user
    assert task.result == {"pong": ANY}  # the time it answered


# --- progress ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_import_reports_progress_to_the_end(taskstate_worker, user):
    message = tasks.flaky_import.send(feed_down=False, for_state={"user_pk": user.pk})

    taskstate_worker.drain()

    task = Task.objects.get(message_id=message.message_id)
    assert (task.status, task.progress, task.result) == ("done", 100, 20)


# --- cancel from the owner's view ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_owner_cancels_a_running_report(taskstate_worker, client, user):
    client.force_login(user)
    message = tasks.build_report.send(for_state={"user_pk": user.pk})
    task = wait_for_status(message, "running")

    response = client.post(reverse("taskstate:cancel", args=[task.pk]))
    taskstate_worker.drain()

    assert response.status_code == 302
    task.refresh_from_db()
    assert task.status == "cancelled"
    assert task.result is None


# --- a group -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_batch_is_one_row_done_with_its_children(taskstate_worker, user):
    batch = dramatiq.group(tasks.batch_item.message(2) for _ in range(3))
    taskstate.track_group(batch, for_state={"user_pk": user.pk, "description": "Batch"}).run()

    taskstate_worker.drain()

    group = Task.objects.get(user=user, parent=None)
    assert (group.kind, group.status, group.progress) == ("group", "done", 100)
    assert [child.status for child in group.children.all()] == ["done"] * 3


# --- the row the user's page receives ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_users_page_receives_the_done_row(taskstate_worker, taskstate_events, user):
    page = taskstate_events(user)  # what a page open on the user's channel receives
    message = tasks.quick_ping.send(for_state={"user_pk": user.pk, "description": "Ping"})

    taskstate_worker.drain()

    task = Task.objects.get(message_id=message.message_id)
    row = page.rows()[task.pk]
    assert 'class="taskstate-task taskstate-status-done' in row
    assert "Ping" in row


# --- a view that sends with for_state (no worker: TestCase is enough) ----------------------


@pytest.mark.django_db
def test_the_ping_button_queues_a_task_owned_by_the_user(
    client, user, django_capture_on_commit_callbacks
):
    client.force_login(user)
    broker = dramatiq.get_broker()
    broker.flush_all()

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("demo:start", args=["ping"]))

    task = Task.objects.get(user=user)
    assert (task.status, task.description, task.actor_name) == (
        "enqueued",
        "Quick ping",
        "quick_ping",
    )
    broker.flush_all()
