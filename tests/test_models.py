"""``Task`` and its queryset API: what each query selects, deletes or changes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone

from taskstate.core.models import ACTIVE_STATUSES, COMPLETE_STATUSES, Status, Task
from tests.support.factories import ago, make_task

pytestmark = pytest.mark.django_db


def pks(queryset: Any) -> set[int]:
    return set(queryset.values_list("pk", flat=True))


# --- completed(), active() -------------------------------------------------------------


def test_every_status_is_either_complete_or_active():
    assert set(COMPLETE_STATUSES) | set(ACTIVE_STATUSES) == set(Status)
    assert not set(COMPLETE_STATUSES) & set(ACTIVE_STATUSES)


def test_completed_selects_done_failed_skipped_and_cancelled_only():
    by_status = {status: make_task(status=status) for status in Status}
    assert {t.status for t in Task.objects.completed()} == {
        "done",
        "failed",
        "skipped",
        "cancelled",
    }
    assert pks(Task.objects.completed()) == {
        by_status[s].pk for s in (Status.DONE, Status.FAILED, Status.SKIPPED, Status.CANCELLED)
    }


def test_active_selects_queued_scheduled_running_and_retrying_only():
    for status in Status:
        make_task(status=status)
    assert {t.status for t in Task.objects.active()} == {
        "enqueued",
        "delayed",
        "running",
        "retrying",
    }


# --- for_user() --------------------------------------------------------------------------


def test_for_user_gives_nothing_to_anonymous_user_or_none(user):
    make_task(user=user)
    make_task(user=None)
    assert list(Task.objects.for_user(AnonymousUser())) == []
    assert list(Task.objects.for_user(None)) == []


def test_for_user_excludes_other_users_and_ownerless_tasks(user, other_user):
    mine = make_task(user=user)
    make_task(user=other_user)
    make_task(user=None)
    assert list(Task.objects.for_user(user)) == [mine]


def test_for_user_of_unsaved_user_gives_nothing(django_user_model):
    unsaved = django_user_model(username="ghost")
    make_task(user=None)
    assert list(Task.objects.for_user(unsaved)) == []


# --- for_display() -----------------------------------------------------------------------


def test_for_display_shows_unseen_tasks_whatever_their_status(user):
    done = make_task(user=user, status=Status.DONE)
    running = make_task(user=user, status=Status.RUNNING)
    assert pks(Task.objects.for_user(user).for_display(30)) == {done.pk, running.pk}


def test_for_display_shows_task_seen_within_the_window(user):
    recent = make_task(user=user, seen=True, seen_at=ago(10))
    assert list(Task.objects.for_user(user).for_display(30)) == [recent]


def test_for_display_hides_task_seen_before_the_window(user):
    make_task(user=user, seen=True, seen_at=ago(31))
    assert list(Task.objects.for_user(user).for_display(30)) == []


def test_for_display_with_zero_window_hides_a_task_seen_a_moment_ago(user):
    make_task(user=user, seen=True, seen_at=ago(0.01))
    assert list(Task.objects.for_user(user).for_display(0)) == []


def test_for_display_window_defaults_to_the_setting(user, settings):
    make_task(user=user, seen=True, seen_at=ago(60))
    settings.TASKSTATE = {"DISPLAY_SECONDS_SINCE_SEEN": 120}
    assert Task.objects.for_user(user).for_display().count() == 1
    settings.TASKSTATE = {"DISPLAY_SECONDS_SINCE_SEEN": 30}
    assert Task.objects.for_user(user).for_display().count() == 0


def test_for_display_lists_newest_first(user):
    old = make_task(user=user, created_at=ago(300))
    new = make_task(user=user, created_at=ago(1))
    middle = make_task(user=user, created_at=ago(60))
    assert list(Task.objects.for_user(user).for_display(30)) == [new, middle, old]


def test_for_display_of_a_user_with_50_tasks_is_one_query(user, django_assert_num_queries):
    for i in range(50):
        # Unseen, seen a moment ago (shown), seen long ago (hidden), in turn.
        kind = i % 3
        make_task(user=user, seen=kind > 0, seen_at=(None, ago(5), ago(500))[kind])
    with django_assert_num_queries(1):
        tasks = list(Task.objects.for_user(user).for_display(30))
        # Everything a row shows is on the task itself: no query per row.
        rendered = [(t.status, t.description, t.progress, t.duration, t.is_complete) for t in tasks]
    assert len(rendered) == 34  # 17 unseen + 17 seen in the last 30 s


# --- delete_old() -----------------------------------------------------------------------


def test_delete_old_only_if_seen_counts_age_from_seen_at():
    long_seen = make_task(seen=True, seen_at=ago(120), finished_at=ago(10_000))
    just_seen = make_task(seen=True, seen_at=ago(30), finished_at=ago(10_000))
    unseen = make_task(seen=False, finished_at=ago(10_000))

    assert Task.objects.delete_old(60) == 1

    remaining = pks(Task.objects.all())
    assert long_seen.pk not in remaining
    assert remaining == {just_seen.pk, unseen.pk}


def test_delete_old_not_only_if_seen_counts_age_from_finished_at():
    old_unseen = make_task(status=Status.FAILED, finished_at=ago(120))
    old_seen = make_task(status=Status.SKIPPED, finished_at=ago(120), seen=True, seen_at=ago(1))
    recent = make_task(status=Status.DONE, finished_at=ago(30))

    assert Task.objects.delete_old(60, only_if_seen=False) == 2

    assert pks(Task.objects.all()) == {recent.pk}
    assert not Task.objects.filter(pk__in=[old_unseen.pk, old_seen.pk]).exists()


@pytest.mark.parametrize("only_if_seen", [True, False])
def test_delete_old_never_deletes_active_tasks(only_if_seen):
    long_ago = ago(100_000)
    for status in ACTIVE_STATUSES:
        make_task(
            status=status,
            created_at=long_ago,
            started_at=long_ago,
            updated_at=long_ago,
            # A retried task carries the times of its earlier attempt.
            finished_at=long_ago if status == Status.RETRYING else None,
        )

    assert Task.objects.delete_old(60, only_if_seen=only_if_seen) == 0
    assert Task.objects.count() == len(ACTIVE_STATUSES)


def test_delete_old_only_if_seen_never_deletes_an_active_task_flagged_seen():
    # mark_seen() never flags an active task, but a project's own update() can; the
    # docstring promises that only completed tasks are deleted.
    running = make_task(status=Status.RUNNING, seen=True, seen_at=ago(100_000))
    assert Task.objects.delete_old(60) == 0
    assert Task.objects.filter(pk=running.pk).exists()


def test_delete_old_returns_zero_when_nothing_is_old_enough():
    make_task(finished_at=ago(5), seen=True, seen_at=ago(5))
    assert Task.objects.delete_old(60) == 0
    assert Task.objects.delete_old(60, only_if_seen=False) == 0
    assert Task.objects.count() == 1


def test_delete_old_applies_to_the_queryset_it_is_called_on(user, other_user):
    make_task(user=user, seen=True, seen_at=ago(120))
    theirs = make_task(user=other_user, seen=True, seen_at=ago(120))
    assert Task.objects.for_user(user).delete_old(60) == 1
    assert list(Task.objects.all()) == [theirs]


def test_delete_old_deletes_every_row_when_there_are_more_than_one_batch(monkeypatch):
    monkeypatch.setattr("taskstate.core.models._DELETE_BATCH", 3)
    for _ in range(10):
        make_task(seen=True, seen_at=ago(120))
    keep = make_task(seen=True, seen_at=ago(1))

    assert Task.objects.delete_old(60) == 10
    assert list(Task.objects.all()) == [keep]


# --- delete_stale() ---------------------------------------------------------------------


def test_delete_stale_deletes_only_enqueued_tasks_unchanged_for_max_age():
    stale = make_task(status=Status.ENQUEUED, updated_at=ago(1300))
    fresh = make_task(status=Status.ENQUEUED, updated_at=ago(60))
    # Old, but not enqueued: delayed ones wait on purpose, the rest have their own rules.
    others = [
        make_task(status=status, updated_at=ago(100_000))
        for status in Status
        if status != Status.ENQUEUED
    ]

    assert Task.objects.delete_stale(1200) == 1

    assert not Task.objects.filter(pk=stale.pk).exists()
    assert pks(Task.objects.all()) == {fresh.pk} | {t.pk for t in others}


def test_delete_stale_counts_age_from_updated_at_not_created_at():
    requeued = make_task(status=Status.ENQUEUED, created_at=ago(100_000), updated_at=ago(10))
    assert Task.objects.delete_stale(1200) == 0
    assert Task.objects.filter(pk=requeued.pk).exists()


def test_delete_stale_default_max_age_is_twenty_minutes():
    make_task(status=Status.ENQUEUED, updated_at=ago(1190))
    assert Task.objects.delete_stale() == 0
    Task.objects.update(updated_at=ago(1210))
    assert Task.objects.delete_stale() == 1


def test_delete_stale_deletes_every_row_when_there_are_more_than_one_batch(monkeypatch):
    monkeypatch.setattr("taskstate.core.models._DELETE_BATCH", 3)
    for _ in range(7):
        make_task(status=Status.ENQUEUED, updated_at=ago(5000))
    assert Task.objects.delete_stale(1200) == 7
    assert Task.objects.count() == 0


# --- fail_abandoned() -------------------------------------------------------------------


def test_fail_abandoned_fails_running_task_with_no_change_for_max_age():
    started = ago(4000)
    task = make_task(status=Status.RUNNING, started_at=started, updated_at=ago(3700), attempts=1)

    before = timezone.now()
    assert Task.objects.fail_abandoned(3600) == 1

    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.is_complete
    assert task.error_type == "taskstate.WorkerLost"
    assert "3600 seconds" in task.error_message
    assert "RUNNING_TIMEOUT" in task.error_message
    assert task.finished_at is not None
    assert task.finished_at >= before
    assert task.updated_at >= before
    assert task.duration is not None
    assert task.duration >= timedelta(seconds=4000)


def test_fail_abandoned_leaves_recently_updated_running_task_alone():
    task = make_task(status=Status.RUNNING, updated_at=ago(60))
    assert Task.objects.fail_abandoned(3600) == 0
    task.refresh_from_db()
    assert task.status == Status.RUNNING
    assert task.error_type == ""
    assert task.finished_at is None


def test_fail_abandoned_leaves_other_statuses_alone():
    finished = ago(100_000)
    tasks = [
        make_task(status=status, updated_at=ago(100_000), finished_at=finished)
        for status in Status
        if status != Status.RUNNING
    ]
    assert Task.objects.fail_abandoned(3600) == 0
    for task in tasks:
        before = (task.status, task.finished_at, task.error_type)
        task.refresh_from_db()
        assert (task.status, task.finished_at, task.error_type) == before


def test_abandoned_task_cannot_be_moved_back_to_running_by_a_late_progress_write():
    from taskstate.core.for_state import Origin, TaskIdentity
    from tests.support.writes import progress_one

    task = make_task(status=Status.RUNNING, attempts=1, progress=10, updated_at=ago(7200))
    Task.objects.fail_abandoned(3600)

    identity = TaskIdentity(user_pk=None, description="", app_name="", model_name="")
    origin = Origin(task.message_id, task.actor_name, "default", task.created_at, identity)
    assert progress_one(origin, 1, 90, "late") is None
    task.refresh_from_db()
    assert (task.status, task.progress) == (Status.FAILED, 10)


# --- mark_seen() ------------------------------------------------------------------------


def test_mark_seen_marks_only_completed_tasks():
    completed = [make_task(status=s) for s in COMPLETE_STATUSES]
    active = [make_task(status=s) for s in ACTIVE_STATUSES]

    before = timezone.now()
    assert Task.objects.mark_seen() == len(completed)

    for task in completed:
        task.refresh_from_db()
        assert task.seen
        assert task.seen_at is not None
        assert task.seen_at >= before
    for task in active:
        task.refresh_from_db()
        assert not task.seen
        assert task.seen_at is None


def test_mark_seen_keeps_the_first_seen_time_of_an_already_seen_task():
    first_seen = ago(600)
    task = make_task(seen=True, seen_at=first_seen)
    assert Task.objects.mark_seen() == 0
    task.refresh_from_db()
    assert task.seen_at == first_seen


# --- is_complete, duration, str ---------------------------------------------------------


@pytest.mark.parametrize("status", list(Status))
def test_is_complete_is_true_exactly_for_done_failed_skipped_and_cancelled(status):
    assert Task(status=status).is_complete is (status in ("done", "failed", "skipped", "cancelled"))


def test_duration_is_none_before_the_task_started():
    assert Task(status=Status.ENQUEUED).duration is None


def test_duration_runs_from_start_to_finish():
    start = ago(100)
    task = Task(status=Status.DONE, started_at=start, finished_at=start + timedelta(seconds=42))
    assert task.duration == timedelta(seconds=42)


def test_duration_of_running_task_counts_up_to_now():
    task = Task(status=Status.RUNNING, started_at=ago(90))
    assert timedelta(seconds=90) <= task.duration < timedelta(seconds=100)


def test_str_shows_description_or_actor_and_readable_status():
    assert str(Task(description="Export", actor_name="export", status=Status.DELAYED)) == (
        "Export (Scheduled)"
    )
    assert str(Task(actor_name="export", status=Status.ENQUEUED)) == "export (Queued)"


def test_status_display_is_the_label_in_the_active_language_and_the_value_when_unknown():
    from django.utils import translation

    task = Task(status=Status.RUNNING)
    assert task.get_status_display() == "Running"
    with translation.override("de"):
        assert task.get_status_display() == str(Status.RUNNING.label) != "Running"
    assert Task(status="lost").get_status_display() == "lost"
