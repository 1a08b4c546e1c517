"""The cleanup: retention settings applied to the rows, and the ``cleanup_tasks`` actor."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone

from taskstate.cleanup import CleanupReport, cleanup
from taskstate.middleware import StateMiddleware
from taskstate.models import Status, Task
from taskstate.signals import task_changed
from taskstate.tasks import cleanup_tasks
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
