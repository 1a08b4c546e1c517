"""The cleanup: retention settings applied to the rows, and the ``cleanup_tasks`` actor."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone

from taskstate.cleanup import CleanupReport, cleanup
from taskstate.core import conf
from taskstate.core.models import Status, Task
from taskstate.core.signals import task_changed
from taskstate.tasks import cleanup_tasks
from taskstate.worker.middleware import StateMiddleware
from tests.support.factories import ago, make_task

pytestmark = pytest.mark.django_db


RETENTION = {
    "DELETE_SEEN_AFTER": 100,
    "DELETE_UNSEEN_AFTER": 1000,
    "STALE_ENQUEUED_AFTER": 500,
    "RUNNING_TIMEOUT": 300,
}


@pytest.fixture
def retention(settings: Any) -> dict[str, int]:
    settings.TASKSTATE = dict(RETENTION)
    return RETENTION


@pytest.fixture
def changes() -> Iterator[list[tuple[Any, str, str]]]:
    """Every (sender, message id, status) announced by task_changed."""
    seen: list[tuple[Any, str, str]] = []

    def receiver(sender: Any, task: Task, **kwargs: Any) -> None:
        seen.append((sender, task.message_id, task.status))

    task_changed.connect(receiver)
    yield seen
    task_changed.disconnect(receiver)


def make_mixed_rows() -> dict[str, list[Task]]:
    """Rows for every rule of RETENTION, some past their limit and some not."""
    return {
        "seen_old": [
            make_task(seen=True, seen_at=ago(200), finished_at=ago(250)),
            make_task(status=Status.FAILED, seen=True, seen_at=ago(150), finished_at=ago(160)),
        ],
        "unseen_old": [
            make_task(finished_at=ago(2000)),
            make_task(status=Status.FAILED, finished_at=ago(5000)),
            make_task(status=Status.SKIPPED, finished_at=ago(1001)),
        ],
        "stale": [make_task(status=Status.ENQUEUED, updated_at=ago(600))],
        "abandoned": [
            make_task(status=Status.RUNNING, attempts=1, started_at=ago(900), updated_at=ago(400)),
            make_task(status=Status.RUNNING, attempts=2, started_at=ago(900), updated_at=ago(301)),
        ],
        "kept": [
            make_task(seen=True, seen_at=ago(50), finished_at=ago(60)),
            make_task(finished_at=ago(500)),
            make_task(status=Status.ENQUEUED, updated_at=ago(100)),
            # Delayed messages wait on purpose, however long.
            make_task(status=Status.DELAYED, updated_at=ago(100_000)),
            make_task(status=Status.RUNNING, attempts=1, updated_at=ago(10)),
            make_task(status=Status.RETRYING, attempts=1, updated_at=ago(100_000)),
        ],
    }


def test_cleanup_reports_what_it_deleted_and_failed(retention):
    rows = make_mixed_rows()

    report = cleanup()

    assert report == CleanupReport(
        seen_deleted=2, unseen_deleted=3, stale_deleted=1, abandoned_failed=2
    )
    assert report.as_dict() == {
        "seen_deleted": 2,
        "unseen_deleted": 3,
        "stale_deleted": 1,
        "abandoned_failed": 2,
        "lost_failed": 0,
        "groups_refreshed": 0,
    }
    expected = {t.pk for t in rows["kept"] + rows["abandoned"]}
    assert set(Task.objects.values_list("pk", flat=True)) == expected


def test_cleanup_twice_does_nothing_the_second_time(retention):
    make_mixed_rows()
    cleanup()
    assert cleanup() == CleanupReport(0, 0, 0, 0)


def test_cleanup_of_an_empty_table_reports_zeros(retention):
    assert cleanup().as_dict() == dict.fromkeys(
        (
            "seen_deleted",
            "unseen_deleted",
            "stale_deleted",
            "abandoned_failed",
            "lost_failed",
            "groups_refreshed",
        ),
        0,
    )


def test_cleanup_reads_the_settings_at_call_time(settings):
    task = make_task(status=Status.ENQUEUED, updated_at=ago(600))
    settings.TASKSTATE = {"STALE_ENQUEUED_AFTER": 1200}
    assert cleanup().stale_deleted == 0
    settings.TASKSTATE = {"STALE_ENQUEUED_AFTER": 500}
    assert cleanup().stale_deleted == 1
    assert not Task.objects.filter(pk=task.pk).exists()


def test_cleanup_with_default_settings_keeps_a_day_old_unseen_task(settings):
    settings.TASKSTATE = {}
    task = make_task(finished_at=ago(86_400 + 60))
    assert cleanup() == CleanupReport(0, 0, 0, 0)
    assert Task.objects.filter(pk=task.pk).exists()


def test_task_of_a_dead_worker_ends_failed_and_says_why(retention, user, changes):
    task = make_task(
        status=Status.RUNNING,
        user=user,
        attempts=1,
        progress=30,
        started_at=ago(1000),
        updated_at=ago(400),
    )

    before = timezone.now()
    assert cleanup().abandoned_failed == 1

    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.error_type == "taskstate.WorkerLost"
    assert "300 seconds" in task.error_message
    assert "RUNNING_TIMEOUT" in task.error_message
    assert task.finished_at is not None
    assert task.finished_at >= before
    # What the worker reported before it died stays visible.
    assert task.progress == 30
    assert changes == [(StateMiddleware, task.message_id, "failed")]


def test_cleanup_announces_only_the_tasks_it_failed(retention, changes):
    rows = make_mixed_rows()
    cleanup()
    assert sorted(changes) == sorted(
        (StateMiddleware, t.message_id, "failed") for t in rows["abandoned"]
    )


def test_cleanup_that_changes_nothing_sends_no_signal(retention, changes):
    make_task(status=Status.RUNNING, attempts=1, updated_at=ago(10))
    cleanup()
    assert changes == []


def test_cleanup_logs_what_it_did_and_stays_quiet_otherwise(retention, caplog):
    with caplog.at_level(logging.INFO, logger="taskstate"):
        cleanup()
        assert caplog.records == []
        make_task(status=Status.ENQUEUED, updated_at=ago(600))
        cleanup()
    assert len(caplog.records) == 1
    assert "'stale_deleted': 1" in caplog.records[0].getMessage()


def test_seen_task_is_kept_for_delete_seen_after_even_when_unseen_ones_go_sooner(settings):
    settings.TASKSTATE = {"DELETE_SEEN_AFTER": 86_400, "DELETE_UNSEEN_AFTER": 600}
    seen = make_task(seen=True, seen_at=ago(3000), finished_at=ago(3600))
    unseen = make_task(finished_at=ago(3600))

    report = cleanup()

    assert not Task.objects.filter(pk=unseen.pk).exists()
    assert Task.objects.filter(pk=seen.pk).exists()
    assert report.unseen_deleted == 1


# --- the cleanup_tasks actor -------------------------------------------------------------


def test_cleanup_tasks_actor_returns_the_report_as_a_dict(retention):
    make_mixed_rows()
    assert cleanup_tasks.fn() == {
        "seen_deleted": 2,
        "unseen_deleted": 3,
        "stale_deleted": 1,
        "abandoned_failed": 2,
        "lost_failed": 0,
        "groups_refreshed": 0,
    }


@pytest.mark.django_db(transaction=True)
def test_cleanup_tasks_sent_to_a_worker_cleans_up_the_rows(retention, run_all):
    rows = make_mixed_rows()

    cleanup_tasks.send()
    run_all()

    expected = {t.pk for t in rows["kept"] + rows["abandoned"]}
    # The cleanup message itself is not tracked: it has no for_state.
    assert set(Task.objects.values_list("pk", flat=True)) == expected
    assert set(
        Task.objects.filter(pk__in=[t.pk for t in rows["abandoned"]]).values_list(
            "status", flat=True
        )
    ) == {Status.FAILED}


# --- what a message still on its way needs: a cancel outlives the cleanup ---------------
#
# A worker refuses a cancelled message by its row (CancelWatch reads the requests): the
# cleanup keeps every row a message still on its
# way needs, and a group while one of its children may still get its message.

HTMX = {"HTTP_HX_REQUEST": "true"}


def _retention(settings: Any, **more: Any) -> None:
    settings.TASKSTATE = {**settings.TASKSTATE, **RETENTION, **more}


def _start_worker(broker: Any, workers: list[Any]) -> Any:
    import dramatiq

    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=4)
    w.start()
    workers.append(w)
    return w


def _join(broker: Any, worker: Any) -> None:
    from dramatiq.brokers.stub import StubBroker

    from taskstate.worker.writer import writer

    if isinstance(broker, StubBroker):
        broker.join("default", timeout=30_000, fail_fast=False)
    else:
        broker.join("default", timeout=30_000)
    worker.join()
    assert writer.flush(30)


@pytest.fixture
def later_workers(broker: Any) -> Iterator[list[Any]]:
    """Workers a test starts after its cleanup ("restarted as in a deploy"), stopped after."""
    from tests.support.workers import stop_worker

    workers: list[Any] = []
    yield workers
    for w in workers:
        stop_worker(broker, w)


@pytest.fixture
def owner(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def _restart_workers() -> None:
    """What a new worker process knows of cancel requests: nothing until it reads."""
    from taskstate.worker.writer import cancels

    cancels.forget()


@pytest.mark.django_db(transaction=True)
def test_cancelled_scheduled_task_dismissed_and_cleaned_up_never_runs_when_due(
    broker, later_workers, owner, user, settings, monkeypatch
):
    from django.urls import reverse

    from taskstate.core import states
    from tests.testapp import tasks as actors

    # Scheduled "well ahead" means here: more than 0.1 s ahead (the margin made small, so
    # the message comes due within the test).
    monkeypatch.setattr(states, "CANCEL_AT_ONCE_MARGIN", 0.0)
    _retention(settings)
    monkeypatch.setattr(conf, "CANCEL_CHECK_INTERVAL", 0.05)
    key = "scheduled-cancelled-dismissed"
    message = actors.runs_once.send_with_options(
        args=(key,), kwargs={"for_state": {"user_pk": user.pk}}, delay=1_000
    )
    task = Task.objects.get(message_id=message.message_id)
    owner.post(reverse("taskstate:cancel", args=[task.pk]), **HTMX)
    task.refresh_from_db()
    assert task.status == Status.CANCELLED  # at once: its message is still on its way
    owner.post(reverse("taskstate:seen", args=[task.pk]), **HTMX)
    Task.objects.filter(pk=task.pk).update(seen_at=ago(200))  # dismissed long ago

    report = cleanup()

    assert report.seen_deleted == 0
    _restart_workers()
    _join(broker, _start_worker(broker, later_workers))  # about 1 s: it comes due
    assert actors.RUNS.get(key) is None
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_task_cancelled_before_its_message_came_is_deleted_once_a_worker_refused_it(
    broker, later_workers, owner, user, settings, monkeypatch
):
    from django.urls import reverse

    from taskstate.core import states
    from tests.testapp import tasks as actors

    monkeypatch.setattr(states, "CANCEL_AT_ONCE_MARGIN", 0.0)
    _retention(settings)
    monkeypatch.setattr(conf, "CANCEL_CHECK_INTERVAL", 0.05)
    key = "scheduled-cancelled-refused"
    message = actors.runs_once.send_with_options(
        args=(key,), kwargs={"for_state": {"user_pk": user.pk}}, delay=1_000
    )
    task = Task.objects.get(message_id=message.message_id)
    owner.post(reverse("taskstate:cancel", args=[task.pk]), **HTMX)
    owner.post(reverse("taskstate:seen", args=[task.pk]), **HTMX)
    Task.objects.filter(pk=task.pk).update(seen_at=ago(200))  # dismissed long ago
    assert cleanup().seen_deleted == 0  # its message is still on its way

    _join(broker, _start_worker(broker, later_workers))  # it comes due and is refused

    assert actors.RUNS.get(key) is None
    assert Task.objects.get(pk=task.pk).status == Status.CANCELLED
    assert cleanup().seen_deleted == 1
    assert not Task.objects.filter(pk=task.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_cancelling_task_behind_a_backlog_longer_than_stale_is_kept_and_never_runs(
    broker, later_workers, owner, user, settings
):
    from django.urls import reverse

    from tests.testapp import tasks as actors

    _retention(settings)
    key = "queued-cancelling-backlog"
    message = actors.runs_once.send(key, for_state={"user_pk": user.pk})
    task = Task.objects.get(message_id=message.message_id)
    owner.post(reverse("taskstate:cancel", args=[task.pk]), **HTMX)
    # The backlog ahead of it outlasts STALE_ENQUEUED_AFTER (500 s here).
    Task.objects.filter(pk=task.pk).update(updated_at=ago(600))
    assert Task.objects.get(pk=task.pk).is_cancelling

    report = cleanup()

    assert report.stale_deleted == 0
    _restart_workers()
    _join(broker, _start_worker(broker, later_workers))
    assert actors.RUNS.get(key) is None
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.CANCELLED


def _scheduled_group(user: Any, keys: list[str], delay: int) -> Task:
    import dramatiq

    import taskstate
    from tests.testapp import tasks as actors

    batch = dramatiq.group([actors.runs_once.message(key) for key in keys])
    tracked = taskstate.track_group(batch, for_state={"user_pk": user.pk}).run(delay=delay)
    assert tracked.task is not None
    # Scheduled further ahead than STALE_ENQUEUED_AFTER (500 s here): nothing changed since.
    Task.objects.filter(pk=tracked.task.pk).update(updated_at=ago(600))
    Task.objects.filter(parent_id=tracked.task.pk).update(updated_at=ago(600))
    return tracked.task


@pytest.mark.django_db(transaction=True)
def test_scheduled_group_is_not_stale_and_its_children_run_under_it(
    broker, later_workers, user, settings
):
    from tests.testapp import tasks as actors

    _retention(settings)
    keys = [f"scheduled-group-{n}" for n in range(3)]
    group = _scheduled_group(user, keys, delay=300)

    report = cleanup()

    assert report.stale_deleted == 0
    _join(broker, _start_worker(broker, later_workers))
    assert all(actors.RUNS.get(key) == 1 for key in keys)
    assert list(Task.objects.top_level().values_list("pk", flat=True)) == [group.pk]
    assert Task.objects.filter(parent_id=group.pk, status=Status.DONE).count() == 3


@pytest.mark.django_db(transaction=True)
def test_scheduled_group_cleaned_up_can_still_be_cancelled_and_never_runs(
    broker, later_workers, owner, user, settings
):
    from django.urls import reverse

    from tests.testapp import tasks as actors

    _retention(settings)
    keys = [f"scheduled-group-cancelled-{n}" for n in range(3)]
    group = _scheduled_group(user, keys, delay=300)
    cleanup()

    response = owner.post(reverse("taskstate:cancel", args=[group.pk]), **HTMX)

    assert response.status_code == 200
    _join(broker, _start_worker(broker, later_workers))
    assert all(actors.RUNS.get(key) is None for key in keys)
    assert list(Task.objects.top_level().values_list("pk", flat=True)) == [group.pk]
    assert set(Task.objects.filter(parent_id=group.pk).values_list("status", flat=True)) == {
        Status.CANCELLED
    }


def test_delete_old_keeps_a_task_cancelled_before_its_message_came(retention):
    waiting = make_task(
        status=Status.CANCELLED,
        cancel_requested_at=ago(5000),
        finished_at=ago(5000),
        due_at=timezone.now() + timezone.timedelta(days=2),
        seen=True,
        seen_at=ago(4000),
    )
    # The worker that took its message ended it: the message is gone.
    ended = make_task(
        status=Status.CANCELLED,
        cancel_requested_at=ago(5000),
        finished_at=ago(4500),
        seen=True,
        seen_at=ago(4000),
    )

    assert Task.objects.delete_old(100, only_if_seen=True) == 1
    assert Task.objects.delete_old(1000, only_if_seen=False) == 0
    assert set(Task.objects.values_list("pk", flat=True)) == {waiting.pk}
    assert not Task.objects.filter(pk=ended.pk).exists()


def test_delete_old_keeps_a_group_while_a_child_may_still_get_its_message(retention):
    group = make_task(kind="group", status=Status.CANCELLED, finished_at=ago(5000))
    make_task(parent=group, status=Status.DONE, finished_at=ago(5000))
    make_task(
        parent=group,
        status=Status.CANCELLED,
        cancel_requested_at=ago(5000),
        finished_at=ago(5000),
        due_at=timezone.now() + timezone.timedelta(days=2),
    )
    cancelling = make_task(kind="group", status=Status.CANCELLED, finished_at=ago(5000))
    make_task(
        parent=cancelling,
        status=Status.ENQUEUED,
        cancel_requested_at=ago(5000),
        updated_at=ago(5000),
    )

    assert Task.objects.delete_old(1000, only_if_seen=False) == 0
    assert Task.objects.delete_stale(500) == 0
    assert Task.objects.filter(parent__isnull=True).count() == 2


def test_rows_the_cleanup_deletes_leave_the_owners_open_pages(retention, user, capture_events):
    from taskstate.web.channels import user_channel

    stale = make_task(user=user, status=Status.ENQUEUED, updated_at=ago(600))
    unseen_old = make_task(user=user, finished_at=ago(2000))
    make_task(user=user, seen=True, seen_at=ago(200), finished_at=ago(250))  # on no page
    capture = capture_events(user_channel(user.pk))

    report = cleanup()

    assert (report.seen_deleted, report.unseen_deleted, report.stale_deleted) == (1, 1, 1)
    removed = "".join(data for _, _, data in capture.events())
    for task in (stale, unseen_old):
        assert f'hx-target="#taskstate-task-{task.pk}" hx-swap="delete"' in removed
    assert removed.count('hx-swap="delete"') == 2


def test_task_asked_to_cancel_and_failed_as_lost_is_kept_for_its_message(retention):
    # Due soon when it was asked (so not cancelled at once), then overdue: its message may
    # still come, behind a backlog, and must find the request.
    asked = make_task(
        status=Status.DELAYED,
        due_at=ago(2 * 3600),
        cancel_requested_at=ago(2 * 3600 + 30),
        seen=False,
    )
    plain = make_task(status=Status.DELAYED, due_at=ago(2 * 3600))

    assert cleanup().lost_failed == 2
    Task.objects.update(finished_at=ago(5000))  # long after, nobody dismissed them

    assert cleanup().unseen_deleted == 1
    assert list(Task.objects.values_list("pk", "status")) == [(asked.pk, Status.FAILED)]
    assert not Task.objects.filter(pk=plain.pk).exists()


def test_rows_the_cleanup_deletes_leave_the_pages_of_the_object_they_are_about(
    retention, user, capture_events
):
    from taskstate.web.channels import object_channels

    about = {"object_type": "auth.group", "object_pk": "7"}
    stale = make_task(user=user, status=Status.ENQUEUED, updated_at=ago(600), **about)
    unseen_old = make_task(user=user, finished_at=ago(2000), **about)
    html_channel, json_channel = object_channels(**about)
    capture = capture_events(html_channel, json_channel)

    cleanup()

    events = capture.events()
    html = "".join(data for channel, _, data in events if channel == html_channel)
    for task in (stale, unseen_old):
        assert f'hx-target="#taskstate-task-{task.pk}" hx-swap="delete"' in html
    as_json = [data for channel, _, data in events if channel == json_channel]
    removed_ids = {pk for data in as_json for pk in json.loads(data)["ids"]}
    assert removed_ids == {stale.pk, unseen_old.pk}
