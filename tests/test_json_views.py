"""The JSON list and action endpoints: the HTML views' rules, answers in the schema's shapes."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from taskstate.core.models import Status, Task
from taskstate.web.channels import json_channel, user_channel
from tests.test_task_json import validate

pytestmark = pytest.mark.django_db


def make_task(user: Any, status: str = Status.DONE, **fields: Any) -> Task:
    n = Task.objects.count() + 1
    return Task.objects.create(
        message_id=f"jv-{n}",
        actor_name="export",
        status=status,
        user=user,
        description=fields.pop("description", f"task {n}"),
        **fields,
    )


@pytest.fixture
def alice(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def test_the_list_holds_my_tasks_only_and_validates(alice, user, other_user):
    mine = [make_task(user, status) for status in Status.values]
    make_task(other_user, Status.RUNNING, description="not yours")
    response = alice.get(reverse("taskstate:json-list"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    page = response.json()
    validate(page, "TaskPage")
    assert [t["id"] for t in page["tasks"]] == [t.pk for t in reversed(mine)]
    assert page["count"] == len(mine) and page["pages"] == 1
    assert page["next"] is None and page["previous"] is None
    assert "not yours" not in response.content.decode()


def test_the_list_is_the_html_lists_set_of_tasks(alice, user):
    shown = make_task(user)
    make_task(user, seen=True, seen_at=timezone.now() - timezone.timedelta(hours=1))
    group = make_task(user, Status.RUNNING, kind="group", children_total=1)
    make_task(user, Status.RUNNING, parent=group, position=1)
    ids = [t["id"] for t in alice.get(reverse("taskstate:json-list")).json()["tasks"]]
    assert ids == [group.pk, shown.pk]


def test_the_list_filters_by_status(alice, user):
    running = make_task(user, Status.RUNNING)
    retrying = make_task(user, Status.RETRYING)
    make_task(user, Status.DONE)
    url = reverse("taskstate:json-list")
    for query in ("?status=running&status=retrying", "?status=running,retrying"):
        ids = {t["id"] for t in alice.get(url + query).json()["tasks"]}
        assert ids == {running.pk, retrying.pk}
    bad = alice.get(url + "?status=running,lost")
    assert bad.status_code == 400
    validate(bad.json(), "ErrorAnswer")
    assert "lost" in bad.json()["error"]


def test_the_list_is_paginated_with_links_that_keep_the_filter(alice, user):
    tasks = [make_task(user, Status.DONE) for _ in range(5)]
    url = reverse("taskstate:json-list")
    first = alice.get(url + "?status=done&per_page=2").json()
    validate(first, "TaskPage")
    assert (first["count"], first["pages"], first["page"]) == (5, 3, 1)
    assert first["previous"] is None
    seen = [t["id"] for t in first["tasks"]]
    link = first["next"]
    while link:
        assert "status=done" in link
        page = alice.get(link).json()
        validate(page, "TaskPage")
        seen += [t["id"] for t in page["tasks"]]
        link = page["next"]
    assert seen == [t.pk for t in reversed(tasks)]
    assert alice.get(url + "?page=9").status_code == 404
    assert alice.get(url + "?page=x").status_code == 400


def test_the_list_caps_the_page_size_at_list_max_rows(alice, user, settings):
    settings.TASKSTATE = {"LIST_MAX_ROWS": 3}
    for _ in range(4):
        make_task(user)
    page = alice.get(reverse("taskstate:json-list") + "?per_page=100").json()
    assert len(page["tasks"]) == 3 and page["pages"] == 2


def test_anonymous_requests_get_403_in_json(client, user):
    make_task(user)
    for method, name, args in [
        ("get", "taskstate:json-list", []),
        ("post", "taskstate:json-seen", [1]),
        ("post", "taskstate:json-seen-all", []),
        ("post", "taskstate:json-cancel", [1]),
        ("post", "taskstate:json-retry", [1]),
    ]:
        response = getattr(client, method)(reverse(name, args=args))
        assert response.status_code == 403, name
        validate(response.json(), "ErrorAnswer")


def test_the_list_answers_get_only(alice):
    assert alice.post(reverse("taskstate:json-list")).status_code == 405


def test_dismiss_answers_json_and_tells_my_other_pages_after_commit(
    alice, user, django_capture_on_commit_callbacks
):
    task = make_task(user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = alice.post(reverse("taskstate:json-seen", args=[task.pk]))
    assert response.status_code == 200
    validate(response.json(), "ActionAnswer")
    assert response.json() == {"task": None, "removed": [task.pk]}
    assert Task.objects.get(pk=task.pk).seen
    assert len(callbacks) == 1  # the removal goes out once the mark is committed


def test_someone_elses_task_is_404_for_every_action(alice, other_user):
    theirs = [
        make_task(other_user, Status.DONE),
        make_task(other_user, Status.RUNNING),
        make_task(other_user, Status.FAILED, retry_message={"actor_name": "x", "args": []}),
    ]
    for name, task in zip(
        ("taskstate:json-seen", "taskstate:json-cancel", "taskstate:json-retry"),
        theirs,
        strict=True,
    ):
        response = alice.post(reverse(name, args=[task.pk]))
        assert response.status_code == 404, name
        validate(response.json(), "ErrorAnswer")
    fresh = {t.pk: t for t in Task.objects.all()}
    assert all(not fresh[t.pk].seen and fresh[t.pk].cancel_requested_at is None for t in theirs)


def test_dismiss_all_takes_only_my_finished_tasks(alice, user, other_user):
    done, failed = make_task(user), make_task(user, Status.FAILED)
    running = make_task(user, Status.RUNNING)
    theirs = make_task(other_user)
    answer = alice.post(reverse("taskstate:json-seen-all")).json()
    validate(answer, "ActionAnswer")
    assert sorted(answer["removed"]) == sorted([done.pk, failed.pk])
    assert not Task.objects.get(pk=running.pk).seen
    assert not Task.objects.get(pk=theirs.pk).seen


def test_cancel_answers_the_row_as_it_is_now(alice, user):
    task = make_task(user, Status.ENQUEUED)
    response = alice.post(reverse("taskstate:json-cancel", args=[task.pk]))
    assert response.status_code == 200
    answer = response.json()
    validate(answer, "ActionAnswer")
    assert answer["task"]["id"] == task.pk
    assert answer["task"]["status"] == "cancelled" or answer["task"]["cancelling"]
    assert "cancel" not in answer["task"]["actions"]


def test_cancel_of_a_child_of_a_group_is_409_saying_why(alice, user):
    group = make_task(user, Status.RUNNING, kind="group", children_total=1)
    child = make_task(user, Status.RUNNING, parent=group, position=1)
    response = alice.post(reverse("taskstate:json-cancel", args=[child.pk]))
    assert response.status_code == 409
    validate(response.json(), "ErrorAnswer")
    assert "Cancel the group" in response.json()["error"]


def test_the_policy_refusing_looks_like_no_task(alice, user, settings):
    settings.TASKSTATE = {"CONTROL_POLICY": "tests.test_task_json.nobody"}
    task = make_task(user, Status.RUNNING)
    assert alice.post(reverse("taskstate:json-cancel", args=[task.pk])).status_code == 404
    assert Task.objects.get(pk=task.pk).cancel_requested_at is None


def test_retry_of_a_task_without_its_message_is_404(alice, user):
    task = make_task(user, Status.FAILED)
    assert alice.post(reverse("taskstate:json-retry", args=[task.pk])).status_code == 404


def test_posts_need_a_csrf_token(user):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    task = make_task(user)
    assert strict.post(reverse("taskstate:json-seen", args=[task.pk])).status_code == 403
    assert not Task.objects.get(pk=task.pk).seen


def test_the_html_urls_are_unchanged(alice, user):
    task = make_task(user)
    assert reverse("taskstate:seen", args=[task.pk]) == f"/taskstate/seen/{task.pk}/"
    assert reverse("taskstate:events") == "/taskstate/events/"
    assert alice.post(reverse("taskstate:seen", args=[task.pk])).status_code == 302


def test_the_json_events_refuse_anonymous_users(client):
    assert client.get(reverse("taskstate:json-events")).status_code == 403


def test_the_json_channel_sits_beside_the_users_channel(user, other_user, settings):
    from django.contrib.auth.models import AnonymousUser

    from taskstate.web.channels import may_read

    settings.TASKSTATE = {"CHANNEL_NAMESPACE": "site-a"}
    assert json_channel(7) == "taskstate-user-site-a.json-7"
    assert json_channel(7) != user_channel(7)
    mine = json_channel(user.pk)
    assert may_read(user, mine)
    assert not may_read(other_user, mine)
    assert not may_read(AnonymousUser(), mine)
    settings.TASKSTATE = {"CHANNEL_NAMESPACE": "elsewhere"}
    assert not may_read(user, mine)


def test_the_list_reads_a_page_in_two_queries_however_many_tasks(
    alice, user, django_assert_num_queries
):
    for status in (Status.RUNNING, Status.FAILED, Status.DONE):
        make_task(user, status, retry_message={"actor_name": "x", "args": []})
    with django_assert_num_queries(4):  # the session, the user, the count, the page
        page = alice.get(reverse("taskstate:json-list")).json()
    assert len(page["tasks"]) == 3


def test_dismissing_a_task_seen_already_takes_it_off_this_page_and_tells_no_one(
    alice, user, django_capture_on_commit_callbacks
):
    task = make_task(user, seen=True, seen_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        answer = alice.post(reverse("taskstate:json-seen", args=[task.pk])).json()
    assert answer == {"task": None, "removed": [task.pk]}
    assert callbacks == []
