"""The Django admin for ``Task``: a read-only list that reads well and costs little."""

from __future__ import annotations

import itertools
import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from taskstate.core.models import ACTIVE_STATUSES, COMPLETE_STATUSES, Status, Task
from tests.support.drain import flush
from tests.support.factories import make_task

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:taskstate_task_changelist"
_ids = itertools.count(1)


def make_owned_tasks(django_user_model: Any, count: int) -> None:
    """``count`` tasks, each of its own user, started and finished: every column filled."""
    now = timezone.now()
    for _ in range(count):
        n = next(_ids)
        owner = django_user_model.objects.create_user(f"owner{n}")
        make_task(
            user=owner,
            description=f"Report {n}",
            progress=n % 101,
            attempts=1,
            started_at=now - timedelta(seconds=90),
            finished_at=now,
        )


def changelist_queries(client: Any) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    return len(queries)


def cells(html: str, column: str) -> list[str]:
    """The contents of one column's cells in a changelist, in row order."""
    return re.findall(rf'class="field-{column}[^"]*">(.*?)</t[dh]>', html, re.DOTALL)


def listed(response: Any) -> set[int]:
    return {task.pk for task in response.context["cl"].result_list}


def test_changelist_shows_task_columns(admin_client, user):
    make_task(
        user=user,
        description="Monthly export",
        progress=42,
        started_at=timezone.now() - timedelta(seconds=125),
        finished_at=timezone.now(),
    )
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    assert re.sub("<[^>]+>", "", cells(html, "description_or_actor")[0]) == "Monthly export"
    assert cells(html, "status") == ["Done"]
    assert cells(html, "user") == ["alice"]
    assert cells(html, "progress_bar")[0].startswith('<progress max="100" value="42"')
    assert cells(html, "duration_display") == ["2 min 5 s"]


def test_changelist_shows_actor_when_a_task_has_no_description(admin_client):
    make_task(actor_name="rebuild_index", description="")
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert re.sub("<[^>]+>", "", cells(html, "description_or_actor")[0]) == "rebuild_index"


def test_changelist_query_count_does_not_grow_with_the_number_of_tasks(
    admin_client, django_user_model
):
    make_owned_tasks(django_user_model, 5)
    with_5 = changelist_queries(admin_client)
    make_owned_tasks(django_user_model, 25)
    with_30 = changelist_queries(admin_client)
    assert with_30 == with_5


def test_search_finds_tasks_by_description(admin_client):
    wanted = make_task(description="Quarterly invoices")
    make_task(description="Nightly backup")
    response = admin_client.get(reverse(CHANGELIST), {"q": "invoices"})
    assert listed(response) == {wanted.pk}


def test_search_finds_tasks_by_owner_username(admin_client, user, other_user):
    mine = make_task(user=user)
    make_task(user=other_user)
    response = admin_client.get(reverse(CHANGELIST), {"q": "alice"})
    assert listed(response) == {mine.pk}


def test_status_filter_lists_only_that_status(admin_client):
    failed = make_task(status=Status.FAILED)
    make_task(status=Status.DONE)
    make_task(status=Status.RUNNING)
    response = admin_client.get(reverse(CHANGELIST), {"status__exact": "failed"})
    assert listed(response) == {failed.pk}


def test_status_filter_offers_cancelled_and_lists_only_the_cancelled(admin_client):
    cancelled = make_task(status=Status.CANCELLED)
    make_task(status=Status.FAILED)
    make_task(status=Status.RUNNING)
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    [link] = re.findall(r'<a href="([^"]*status__exact=cancelled[^"]*)"[^>]*>(.*?)</a>', page)
    assert link[1].strip() == "Cancelled"
    response = admin_client.get(reverse(CHANGELIST) + link[0].replace("&amp;", "&"))
    assert listed(response) == {cancelled.pk}


def test_change_page_shows_the_task_read_only(admin_client):
    task = make_task(description="Monthly export", error_message="disk full")
    response = admin_client.get(reverse("admin:taskstate_task_change", args=[task.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Monthly export" in html
    assert "disk full" in html
    assert 'name="_save"' not in html
    assert 'name="_continue"' not in html
    # Values are shown as text, not as form fields.
    assert 'name="description"' not in html
    assert 'name="status"' not in html


def test_change_page_refuses_a_post(admin_client):
    task = make_task(description="Monthly export", status=Status.DONE)
    response = admin_client.post(
        reverse("admin:taskstate_task_change", args=[task.pk]),
        {"description": "tampered", "status": "failed"},
    )
    assert response.status_code == 403
    task.refresh_from_db()
    assert (task.description, task.status) == ("Monthly export", Status.DONE)


def test_add_page_is_forbidden(admin_client):
    assert admin_client.get(reverse("admin:taskstate_task_add")).status_code == 403
    response = admin_client.post(
        reverse("admin:taskstate_task_add"), {"message_id": "forged", "actor_name": "x"}
    )
    assert response.status_code == 403
    assert not Task.objects.filter(message_id="forged").exists()


def test_mark_seen_action_marks_the_selected_completed_tasks(admin_client):
    completed = [make_task(status=s) for s in COMPLETE_STATUSES]
    running = make_task(status=Status.RUNNING)
    not_selected = make_task(status=Status.DONE)

    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "mark_seen", "_selected_action": [t.pk for t in [*completed, running]]},
        follow=True,
    )

    assert response.status_code == 200
    assert "4 tasks marked seen." in response.content.decode()
    assert set(Task.objects.filter(seen=True).values_list("pk", flat=True)) == {
        t.pk for t in completed
    }
    running.refresh_from_db()
    not_selected.refresh_from_db()
    assert not running.seen
    assert not not_selected.seen


def test_delete_completed_action_keeps_active_tasks(admin_client):
    completed = [make_task(status=s) for s in COMPLETE_STATUSES]
    active = [make_task(status=s) for s in ACTIVE_STATUSES]
    not_selected = make_task(status=Status.DONE)

    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "delete_completed", "_selected_action": [t.pk for t in completed + active]},
        follow=True,
    )

    assert response.status_code == 200
    assert "4 completed tasks deleted." in response.content.decode()
    assert set(Task.objects.values_list("pk", flat=True)) == {t.pk for t in [*active, not_selected]}


def test_description_html_is_escaped_in_the_changelist(admin_client):
    make_task(description='<script>alert("x")</script>')
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert '<script>alert("x")' not in html
    assert (
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
        in cells(html, "description_or_actor")[0]
    )


def test_changelist_needs_staff(client, user):
    client.force_login(user)
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def staff_with(django_user_model: Any, *codenames: str) -> Any:
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user(f"staff{next(_ids)}", is_staff=True)
    staff.user_permissions.set(
        Permission.objects.filter(content_type__app_label="taskstate", codename__in=codenames)
    )
    return staff


def test_mark_seen_action_needs_the_change_permission(client, django_user_model, user):
    """Security II, case 5: view_task alone ran the action on someone else's task."""
    task = make_task(user=user, status=Status.DONE)
    client.force_login(staff_with(django_user_model, "view_task"))
    page = client.get(reverse(CHANGELIST))
    assert page.status_code == 200
    assert "mark_seen" not in page.content.decode()
    response = client.post(
        reverse(CHANGELIST), {"action": "mark_seen", "_selected_action": [task.pk]}
    )
    assert response.status_code in (200, 302, 403)
    task.refresh_from_db()
    assert not task.seen


def test_mark_seen_action_with_the_change_permission_works(client, django_user_model, user):
    task = make_task(user=user, status=Status.DONE)
    client.force_login(staff_with(django_user_model, "view_task", "change_task"))
    assert "mark_seen" in client.get(reverse(CHANGELIST)).content.decode()
    client.post(reverse(CHANGELIST), {"action": "mark_seen", "_selected_action": [task.pk]})
    task.refresh_from_db()
    assert task.seen


def test_mark_seen_action_removes_the_rows_from_their_owners_pages(
    admin_client, user, other_user, capture_events, django_capture_on_commit_callbacks
):
    from taskstate.web.channels import user_channel

    mine = make_task(user=user, status=Status.DONE)
    theirs = make_task(user=other_user, status=Status.FAILED)
    already = make_task(user=user, status=Status.DONE, seen=True)
    running = make_task(user=user, status=Status.RUNNING)
    alice = capture_events(user_channel(user.pk))
    bob = capture_events(user_channel(other_user.pk))
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse(CHANGELIST),
            {
                "action": "mark_seen",
                "_selected_action": [t.pk for t in (mine, theirs, already, running)],
            },
        )
    assert [d for _, _, d in alice.events()] == [
        f'<hx-partial hx-target="#taskstate-task-{mine.pk}" hx-swap="delete"></hx-partial>'
    ]
    assert [d for _, _, d in bob.events()] == [
        f'<hx-partial hx-target="#taskstate-task-{theirs.pk}" hx-swap="delete"></hx-partial>'
    ]


def test_delete_completed_action_removes_the_rows_from_their_owners_pages(
    admin_client, user, other_user, capture_events, django_capture_on_commit_callbacks
):
    """The rows were deleted but stayed on their owners' open pages."""
    from taskstate.web.channels import user_channel

    mine = make_task(user=user, status=Status.DONE)
    seen = make_task(user=user, status=Status.DONE, seen=True)
    theirs = make_task(user=other_user, status=Status.FAILED)
    running = make_task(user=user, status=Status.RUNNING)
    alice = capture_events(user_channel(user.pk))
    bob = capture_events(user_channel(other_user.pk))
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse(CHANGELIST),
            {
                "action": "delete_completed",
                "_selected_action": [t.pk for t in (mine, seen, theirs, running)],
            },
        )
    assert set(Task.objects.values_list("pk", flat=True)) == {running.pk}
    assert [d for _, _, d in alice.events()] == [
        f'<hx-partial hx-target="#taskstate-task-{mine.pk}" hx-swap="delete"></hx-partial>'
        f'<hx-partial hx-target="#taskstate-task-{seen.pk}" hx-swap="delete"></hx-partial>'
    ]
    assert [d for _, _, d in bob.events()] == [
        f'<hx-partial hx-target="#taskstate-task-{theirs.pk}" hx-swap="delete"></hx-partial>'
    ]


# --- owner control from the admin -------------------------------------------------------


def test_staff_with_the_change_permission_cancel_selected_active_tasks(admin_client, user):
    waiting = make_task(status=Status.ENQUEUED, user=user)
    running = make_task(status=Status.RUNNING, user=user, attempts=1)
    done = make_task(status=Status.DONE, user=user)
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "cancel_tasks", "_selected_action": [waiting.pk, running.pk, done.pk]},
        follow=True,
    )
    assert "2 tasks asked to cancel." in response.content.decode()
    waiting.refresh_from_db()
    running.refresh_from_db()
    done.refresh_from_db()
    # A queued task is ended by the worker that takes its message (docs/owner-control.md).
    assert waiting.status == Status.ENQUEUED and waiting.is_cancelling
    assert running.status == Status.RUNNING and running.is_cancelling
    assert done.status == Status.DONE and done.cancel_requested_at is None


def test_staff_without_the_change_permission_get_no_cancel_or_retry_action(
    client, django_user_model
):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(
        Permission.objects.get(codename="view_task", content_type__app_label="taskstate")
    )
    client.force_login(viewer)
    task = make_task(status=Status.RUNNING)
    page = client.get(reverse(CHANGELIST)).content.decode()
    assert 'value="cancel_tasks"' not in page and 'value="retry_tasks"' not in page
    response = client.post(
        reverse(CHANGELIST), {"action": "cancel_tasks", "_selected_action": [task.pk]}
    )
    task.refresh_from_db()
    assert task.cancel_requested_at is None
    assert response.status_code in (200, 302)


@pytest.mark.django_db(transaction=True)
def test_staff_retry_selected_retryable_failed_tasks(admin_client, user, broker):
    retryable = make_task(
        status=Status.FAILED,
        user=user,
        retry_message={
            "actor_name": "noop",
            "args": [],
            "kwargs": {"for_state": {"user_pk": user.pk}},
            "options": {},
        },
    )
    plain = make_task(status=Status.FAILED, user=user)
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "retry_tasks", "_selected_action": [retryable.pk, plain.pk]},
        follow=True,
    )
    assert "1 task sent again." in response.content.decode()
    # Sent: its row (enqueued) links to the retried one.
    assert Task.objects.filter(retry_of=retryable, actor_name="noop").count() == 1
    retryable.refresh_from_db()
    plain.refresh_from_db()
    assert retryable.seen and not plain.seen


@pytest.mark.django_db(transaction=True)
def test_retry_selected_retries_a_group_once_and_never_its_children_on_their_own(
    admin_client, user, worker, run_all
):
    import dramatiq

    import taskstate
    from tests.testapp import tasks as actors

    failing, fine = f"admin-fails-{next(_ids)}", f"admin-fine-{next(_ids)}"
    batch = dramatiq.group(
        [actors.runs_once.message(fine), actors.fails_on_first_run.message(failing, [2])]
    )
    old = taskstate.track_group(batch, for_state={"user_pk": user.pk, "retryable": True}).run()
    run_all()
    flush()
    # status=failed, select all: the group and its failed child.
    failed = admin_client.get(reverse(CHANGELIST), {"status__exact": "failed"})
    assert listed(failed) == {old.task.pk, Task.objects.get(parent=old.task, status="failed").pk}

    response = admin_client.post(
        reverse(CHANGELIST) + "?status__exact=failed",
        {"action": "retry_tasks", "_selected_action": sorted(listed(failed))},
        follow=True,
    )
    run_all()
    flush()

    page = response.content.decode()
    assert "1 task sent again." in page
    assert "1 task of a group or pipeline left alone: it is retried with its group." in page
    # One new run of the failed work, none of the work that was done.
    assert (actors.RUNS[failing], actors.RUNS[fine]) == (2, 1)
    new = Task.objects.get(retry_of=old.task)
    assert (new.status, new.children_total) == (Status.DONE, 1)
    assert Task.objects.filter(retry_of__isnull=False).count() == 2  # the group and its child


def test_cancel_selected_leaves_a_child_to_its_group(admin_client, user):
    group = make_task(kind="group", status=Status.RUNNING, user=user)
    child = make_task(parent=group, position=1, status=Status.RUNNING, user=user)
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "cancel_tasks", "_selected_action": [child.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "0 tasks asked to cancel." in page
    assert "1 task of a group or pipeline left alone: it is cancelled with its group." in page
    child.refresh_from_db()
    assert child.cancel_requested_at is None
