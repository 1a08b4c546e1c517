"""The JSON form of the tasks about an object: its list and its stream under the rules of
the object's HTML list, cancel and retry through it for whom the policy lets, and a
dismissed task leaving every page of the object at once (the JSON ones and the htmx
ones). The object is a ``django.contrib.auth`` group (see tests/test_object_tasks.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core import signing
from django.db import connections
from django.test import AsyncClient
from django.urls import reverse

from taskstate.core import conf
from taskstate.core.models import Status, Task
from taskstate.core.signals import Bar
from taskstate.web.channels import (
    TaskstateChannelManager,
    admit,
    json_channel,
    may_read,
    object_channels,
    user_channel,
)
from taskstate.web.publish import on_progress_committed, publish_object_change
from tests.conftest import with_perm
from tests.support.drain import flush
from tests.test_object_tasks import about, logged_in, render_list, token_of
from tests.test_task_json import validate
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

#: The shapes of the object's JSON stream's events, by event type.
SHAPES = {"changed": "ChangedEvent", "progress": "ProgressEvent", "removed": "RemovedEvent"}
RETRYABLE = {"actor_name": "noop", "args": [], "kwargs": {}}


def channels_of(team: Group) -> tuple[str, str]:
    """The object's HTML channel and its JSON channel."""
    return object_channels("auth.group", str(team.pk))


def json_events(events: list[tuple[str, str, str]], channel: str) -> list[tuple[str, Any]]:
    """(event type, data) of the captured events on ``channel``, each validated by its
    shape."""
    out = []
    for on, event_type, data in events:
        if on != channel:
            continue
        assert event_type in SHAPES, f"an event the schema does not describe: {event_type!r}"
        payload = json.loads(data)
        validate(payload, SHAPES[event_type])
        out.append((event_type, payload))
    return out


def list_url(team: Group) -> str:
    return reverse("taskstate:json-object-list", args=[token_of(team)])


def refused(response: Any, status: int) -> str:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    validate(response.json(), "ErrorAnswer")
    return str(response.json()["error"])


# --- the list ------------------------------------------------------------------------------


def test_the_json_list_holds_the_objects_tasks_newest_first_and_validates(
    user, other_user, viewer, team
):
    tasks = [
        about(team, owner=owner, status=s) for owner, s in ((user, "done"), (other_user, "running"))
    ]
    nobodys = about(team, status=Status.ENQUEUED)  # a task about the object with no owner
    Task.objects.create(message_id="own", actor_name="a", user=user)  # about no object
    about(Group.objects.create(name="Team Lyra"), owner=user)
    response = logged_in(viewer).get(list_url(team))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    page = response.json()
    validate(page, "TaskPage")
    assert [t["id"] for t in page["tasks"]] == [nobodys.pk, tasks[1].pk, tasks[0].pk]
    assert (page["count"], page["pages"], page["next"], page["previous"]) == (3, 1, None, None)


def test_the_json_list_filters_and_pages_as_the_users_list_does(viewer, user, team):
    done = [about(team, owner=user, status=Status.DONE) for _ in range(5)]
    about(team, owner=user, status=Status.RUNNING)
    client = logged_in(viewer)
    first = client.get(list_url(team) + "?status=done&per_page=2").json()
    validate(first, "TaskPage")
    assert (first["count"], first["pages"], first["page"], first["previous"]) == (5, 3, 1, None)
    ids, link = [t["id"] for t in first["tasks"]], first["next"]
    while link:
        assert link.startswith(list_url(team)) and "status=done" in link
        page = client.get(link).json()
        validate(page, "TaskPage")
        ids, link = ids + [t["id"] for t in page["tasks"]], page["next"]
    assert ids == [t.pk for t in reversed(done)]
    assert "lost" in refused(client.get(list_url(team) + "?status=lost"), 400)
    refused(client.get(list_url(team) + "?page=9"), 404)
    refused(client.get(list_url(team) + "?page=x"), 400)


def test_the_json_list_refuses_as_the_html_list_does_in_json(
    client, settings, stranger, viewer, team
):
    about(team, description="Import the secret team")
    for response, status in (
        (logged_in(stranger).get(list_url(team)), 403),
        (client.get(list_url(team)), 403),  # anonymous: 403 in JSON, no login redirect
        (logged_in(viewer).get(reverse("taskstate:json-object-list", args=["x:y"])), 404),
    ):
        assert "secret" not in refused(response, status)
    assert logged_in(viewer).post(list_url(team)).status_code == 405
    # Another site's token (its own SECRET_KEY) names nothing here.
    theirs = signing.Signer(
        key="another-site-secret-key", salt="taskstate.web.channels.object_token"
    )
    token = theirs.sign_object(["auth.group", str(team.pk)])
    refused(logged_in(viewer).get(reverse("taskstate:json-object-list", args=[token])), 404)


def test_a_viewer_who_holds_the_object_permission_alone_reads_its_list(
    django_user_model, object_backend, user, team
):
    member = with_perm(django_user_model, "mia")
    task = about(team, owner=user)
    refused(logged_in(member).get(list_url(team)), 403)
    object_backend.add((member.pk, "auth.view_group", team.pk))
    assert [t["id"] for t in logged_in(member).get(list_url(team)).json()["tasks"]] == [task.pk]


def test_the_actions_in_the_list_are_the_viewing_users_own(
    django_user_model, user, viewer, controller, team
):
    running = about(team, owner=user, status=Status.RUNNING)
    failed = about(team, owner=user, status=Status.FAILED, retry_message=RETRYABLE)
    done = about(team, owner=user, status=Status.DONE)
    owner_who_views = with_perm(django_user_model, "olga", "view_group")
    theirs = about(team, owner=owner_who_views, status=Status.DONE)

    def actions(person: Any) -> dict[int, Any]:
        page = logged_in(person).get(list_url(team)).json()
        return {t["id"]: t["actions"] for t in page["tasks"]}

    assert all(a == {} for a in actions(viewer).values())
    assert actions(controller) == {
        running.pk: {"cancel": reverse("taskstate:json-cancel", args=[running.pk])},
        failed.pk: {"retry": reverse("taskstate:json-retry", args=[failed.pk])},
        done.pk: {},  # dismissing is the owner's own mark
        theirs.pk: {},
    }
    assert actions(owner_who_views)[theirs.pk] == {
        "dismiss": reverse("taskstate:json-seen", args=[theirs.pk])
    }
    assert actions(owner_who_views)[done.pk] == {}


def test_the_json_list_reads_a_page_in_the_same_queries_however_many_tasks(
    controller, user, team, django_assert_num_queries
):
    for status in (Status.RUNNING, Status.FAILED, Status.DONE):
        about(team, owner=user, status=status, retry_message=RETRYABLE)
    client = logged_in(controller)
    # The session, the user, their permissions (their own and their groups', read once for
    # the request), the count, the page.
    with django_assert_num_queries(6):
        page = client.get(list_url(team)).json()
    assert [sorted(t["actions"]) for t in page["tasks"]] == [[], ["retry"], ["cancel"]]


@pytest.mark.parametrize("form", ["html", "json"])
def test_an_objects_list_reads_the_object_once_for_a_user_with_object_permissions_only(
    form, django_user_model, user, team, object_backend
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    olga = with_perm(django_user_model, "olga")
    object_backend.update(
        {(olga.pk, "auth.view_group", team.pk), (olga.pk, "auth.change_group", team.pk)}
    )
    client = logged_in(olga)
    url = (
        list_url(team)
        if form == "json"
        else reverse("taskstate:object-list", args=[token_of(team)])
    )

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    about(team, owner=user, status=Status.RUNNING)
    one = queries()
    for status in (Status.FAILED, Status.DONE, Status.RUNNING):
        about(team, owner=user, status=status, retry_message=RETRYABLE)
    assert queries() == one


def test_the_tag_gives_the_json_urls_to_those_who_may_see_the_objects_tasks(viewer, stranger, team):
    source = "{% taskstate_object_json_urls team as urls %}{{ urls.list }} {{ urls.events }}"
    assert render_list(viewer, team, source).split() == [
        list_url(team),
        reverse("taskstate:json-object-events", args=[token_of(team)]),
    ]
    assert render_list(stranger, team, source).strip() == ""
    assert render_list(viewer, Group(name="unsaved"), source).strip() == ""


# --- cancel and retry through the object -----------------------------------------------------


def test_a_user_the_policy_lets_change_the_object_cancels_its_task_in_json(
    broker, user, viewer, controller, stranger, team
):
    message = actors.noop.send(for_state={"user_pk": user.pk, "object": team})
    queued = Task.objects.get(message_id=message.message_id)
    url = reverse("taskstate:json-cancel", args=[queued.pk])
    refused(logged_in(stranger).post(url), 404)  # may not even see it
    refused(logged_in(viewer).post(url), 403)  # sees it, may not change it
    assert Task.objects.get(pk=queued.pk).cancel_requested_at is None
    response = logged_in(controller).post(url)
    assert response.status_code == 200
    answer = response.json()
    validate(answer, "ActionAnswer")
    assert answer["task"]["id"] == queued.pk and answer["removed"] == []
    assert answer["task"]["status"] == "cancelled" or answer["task"]["cancelling"]
    assert answer["task"]["actions"] == {}  # nothing left to do, and no dismiss: not theirs
    assert Task.objects.get(pk=queued.pk).cancel_requested_at is not None


def test_a_user_the_policy_lets_change_the_object_retries_its_task_and_every_page_drops_it(
    run_all, user, viewer, controller, team, capture_events
):
    message = actors.always_fails.send_with_options(
        kwargs={"for_state": {"user_pk": user.pk, "object": team, "retryable": True}},
        max_retries=0,
    )
    run_all()
    failed = Task.objects.get(message_id=message.message_id)
    assert failed.status == Status.FAILED
    html, as_json = channels_of(team)
    capture = capture_events(user_channel(user.pk), json_channel(user.pk), html, as_json)
    capture_events(json_channel(controller.pk))  # the controller's own pages: not theirs
    url = reverse("taskstate:json-retry", args=[failed.pk])
    refused(logged_in(viewer).post(url), 403)
    response = logged_in(controller).post(url)
    assert response.status_code == 200
    validate(response.json(), "ActionAnswer")
    assert response.json() == {"task": None, "removed": [failed.pk]}
    events = capture.events()
    delete = f'hx-target="#taskstate-task-{failed.pk}" hx-swap="delete"'
    for channel in (user_channel(user.pk), html):
        assert any(delete in data for on, _, data in events if on == channel), channel
    for channel in (json_channel(user.pk), as_json):
        removed = [json.loads(d) for on, kind, d in events if on == channel and kind == "removed"]
        assert removed == [{"ids": [failed.pk]}], channel
    run_all()
    again = Task.objects.get(retry_of=failed)
    assert (again.user_id, again.object_type, again.object_pk) == (
        user.pk,
        "auth.group",
        str(team.pk),
    )


def test_a_task_about_no_object_stays_its_owners_alone_in_json(user, controller):
    task = Task.objects.create(message_id="own", actor_name="a", user=user)
    refused(logged_in(controller).post(reverse("taskstate:json-cancel", args=[task.pk])), 404)


# --- the channel -------------------------------------------------------------------------------


def test_the_objects_json_channel_sits_beside_its_html_channel(settings, viewer, team):
    html, as_json = channels_of(team)
    assert as_json.startswith(conf.CHANNEL_PREFIX)
    assert as_json not in (html, object_channels("auth.group", str(team.pk + 1))[1])
    assert as_json not in (user_channel(viewer.pk), json_channel(viewer.pk))
    manager = TaskstateChannelManager()
    assert not manager.can_read_channel(viewer, as_json)  # another door: not admitted
    admit(viewer, html)
    assert not manager.can_read_channel(viewer, as_json)  # admitted to the other form
    admit(viewer, as_json)
    assert manager.can_read_channel(viewer, as_json)
    settings.TASKSTATE = {**settings.TASKSTATE, "CHANNEL_NAMESPACE": "another-site"}
    assert object_channels("auth.group", str(team.pk))[1] != as_json
    assert not may_read(viewer, as_json)  # this site's reader, the other site's name


# --- what the channel carries ----------------------------------------------------------------


def test_a_change_reaches_the_objects_json_channel_as_events_in_the_schema(
    run_all, user, team, capture_events, settings
):
    settings.TASKSTATE = {**settings.TASKSTATE, "PROGRESS_INTERVAL": 0}
    _, as_json = channels_of(team)
    other_team = Group.objects.create(name="Team Lyra")
    capture = capture_events(as_json, channels_of(other_team)[1])
    message = actors.with_progress.send(3, for_state={"user_pk": user.pk, "object": team})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    events = json_events(capture.events(), as_json)
    # No task's JSON: its actions depend on who reads (the list answers each reader). Bars
    # as the worker's writes come (the next test sends one for sure).
    assert {kind for kind, _ in events} <= {"changed", "progress"}
    assert events[-1] == ("changed", {"id": task.pk})
    assert all(p["id"] == task.pk for kind, p in events if kind == "progress")
    assert not json_events(capture.events(), channels_of(other_team)[1])


def test_a_running_tasks_progress_reaches_the_objects_json_channel(user, team, capture_events):
    _, as_json = channels_of(team)
    capture = capture_events(as_json)
    running = about(team, owner=user, status=Status.RUNNING)
    publish_object_change(running)  # its start, as the worker announces it
    bar = Bar(running.pk, 40, "half", order=7, updated=running.updated_at)
    on_progress_committed(None, bar=bar, user_pk=user.pk)
    progress = [p for kind, p in json_events(capture.events(), as_json) if kind == "progress"]
    assert progress == [
        {
            "id": running.pk,
            "status": "running",
            "progress": {"percent": 40, "message": "half"},
            "order": 7,
            "updated": running.updated_at.isoformat(),
        }
    ]


def test_nothing_is_sent_on_an_objects_json_channel_nobody_listens_to(
    run_all, user, team, capture_events, monkeypatch, settings
):
    """Embedded: nothing. With Redis the streams may be in other processes: always."""
    from taskstate.web import publish

    html, as_json = channels_of(team)
    sent: list[str] = []
    send = publish._send
    monkeypatch.setattr(
        publish,
        "_send",
        lambda channel, *args, **kwargs: sent.append(channel) or send(channel, *args, **kwargs),
    )
    capture_events(html)  # an htmx page of the object only
    actors.noop.send(for_state={"user_pk": user.pk, "object": team})
    run_all()
    flush()
    assert html in sent
    assert (as_json in sent) == hasattr(settings, "EVENTSTREAM_REDIS")


# --- a dismissed task leaves the object's pages ------------------------------------------------

DISMISS = pytest.mark.parametrize(
    ("name", "with_pk"),
    [
        ("taskstate:seen", True),
        ("taskstate:seen-all", False),
        ("taskstate:json-seen", True),
        ("taskstate:json-seen-all", False),
    ],
)


@DISMISS
def test_a_dismissed_task_leaves_the_objects_pages_at_once(
    user, viewer, team, capture_events, name, with_pk
):
    done = about(team, owner=user, status=Status.DONE)
    other_team = Group.objects.create(name="Team Lyra")
    elsewhere = about(other_team, owner=user, status=Status.FAILED)
    html, as_json = channels_of(team)
    other_html, other_json = channels_of(other_team)
    capture = capture_events(html, as_json, other_html, other_json)
    args = [done.pk] if with_pk else []
    assert logged_in(user).post(reverse(name, args=args)).status_code in (200, 302)
    events = capture.events()
    assert [d for on, _, d in events if on == html] == [
        f'<hx-partial hx-target="#taskstate-task-{done.pk}" hx-swap="delete"></hx-partial>'
    ]
    assert json_events(events, as_json) == [("removed", {"ids": [done.pk]})]
    # Each object's pages hear of their own tasks alone.
    theirs = [payload["ids"] for _, payload in json_events(events, other_json)]
    assert theirs == ([] if with_pk else [[elsewhere.pk]])
    # Read again, the object's list does not have it either.
    assert [t["id"] for t in logged_in(viewer).get(list_url(team)).json()["tasks"]] == []


@pytest.mark.parametrize("action", ["mark_seen", "delete_completed"])
def test_the_admins_actions_take_the_tasks_off_the_objects_pages_too(
    admin_client, user, team, capture_events, action
):
    done = about(team, owner=user, status=Status.DONE)
    nobodys = about(team, status=Status.FAILED)
    html, as_json = channels_of(team)
    capture = capture_events(html, as_json)
    admin_client.post(
        reverse("admin:taskstate_task_changelist"),
        {"action": action, "_selected_action": [done.pk, nobodys.pk]},
    )
    events = capture.events()
    removed = json_events(events, as_json)
    assert [kind for kind, _ in removed] == ["removed"]
    assert sorted(removed[0][1]["ids"]) == [done.pk, nobodys.pk]
    html_data = "".join(d for on, _, d in events if on == html)
    assert all(f'hx-target="#taskstate-task-{t.pk}"' in html_data for t in (done, nobodys))


def test_dismissing_a_task_about_no_object_tells_no_object_page(user, team, capture_events):
    task = Task.objects.create(message_id="own", actor_name="a", user=user, status=Status.DONE)
    capture = capture_events(*channels_of(team))
    assert logged_in(user).post(reverse("taskstate:json-seen", args=[task.pk])).status_code == 200
    assert capture.events() == []


# --- the stream --------------------------------------------------------------------------------


def test_the_json_stream_of_an_object_carries_its_json_channel(user, viewer, team, settings):
    """Served under ASGI to a permitted viewer: ``stream-open``, then the change of a task
    about the object as a ``changed`` event in the schema (never an HTML message).

    What it carries is asserted where django-eventstream delivers in this process; with
    Redis (the services cells) delivery is asserted against uvicorn instead, in
    tests/integration/test_object_streams.py, and this test checks the stream opens."""
    through_redis = hasattr(settings, "EVENTSTREAM_REDIS")
    url = reverse("taskstate:json-object-events", args=[token_of(team)])
    client = AsyncClient()
    client.force_login(viewer)

    async def in_thread(work: Any, *args: Any) -> Any:
        def run() -> Any:
            try:
                return work(*args)
            finally:
                connections.close_all()

        return await asyncio.to_thread(run)

    async def scenario() -> tuple[int, list[str]]:
        response = await client.get(url)
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/event-stream")
        body = response.streaming_content
        chunks = [(await asyncio.wait_for(body.__anext__(), 30)).decode()]
        assert "stream-open" in chunks[0]
        task = await in_thread(about, team, user, Status.RUNNING)
        if through_redis:
            await body.aclose()
            return task.pk, chunks
        # django-eventstream drops what arrives while a stream is between its first read
        # and its wait (the page's list read after stream-open covers that on a page):
        # tell the change until the stream carries it.
        reading = asyncio.ensure_future(body.__anext__())
        for _ in range(100):
            await in_thread(publish_object_change, task)
            done, _ = await asyncio.wait([reading], timeout=0.1)
            if done:
                chunks.append(reading.result().decode())
                if "event: changed" in chunks[-1]:
                    break
                reading = asyncio.ensure_future(body.__anext__())
        else:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        await body.aclose()
        return task.pk, chunks

    pk, chunks = asyncio.run(scenario())
    if through_redis:
        return
    assert "event: changed" in chunks[-1], chunks
    data = json.loads(chunks[-1].split("data: ", 1)[1].split("\n", 1)[0])
    validate(data, "ChangedEvent")
    assert data == {"id": pk}
    assert "hx-partial" not in "".join(chunks) and "taskstate-task" not in "".join(chunks)
