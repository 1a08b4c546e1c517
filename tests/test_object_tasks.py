"""Tasks about an object: named in ``for_state``, listed live for everyone the policy lets
see the object, and controlled by whoever it lets change it. The object here is a
``django.contrib.auth`` group (a team whose data a task imports)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core import signing
from django.db import connections, transaction
from django.template import Context, Template, TemplateSyntaxError
from django.test import AsyncClient, Client, RequestFactory
from django.urls import reverse

from taskstate.core import conf
from taskstate.core.models import Status, Task
from taskstate.core.policy import VIEW, allowed, may_see_object
from taskstate.core.signals import Bar
from taskstate.web import streams
from taskstate.web.channels import (
    TaskstateChannelManager,
    admit,
    may_read,
    object_channels,
    object_of_token,
    object_token,
    user_channel,
)
from taskstate.web.publish import OBJECT_CHANGED_EVENT, on_progress_committed, publish_object_change
from tests.conftest import with_perm
from tests.support.drain import stop_checks
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HTTP_HX_REQUEST": "true"}
_ids = itertools.count(1)


def about(team: Group, owner: Any = None, status: str = Status.RUNNING, **fields: Any) -> Task:
    return Task.objects.create(
        message_id=f"object-{next(_ids)}",
        actor_name="import_team",
        description=fields.pop("description", "Import the team"),
        user=owner,
        status=status,
        object_type="auth.group",
        object_pk=str(team.pk),
        **fields,
    )


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def token_of(team: Group) -> str:
    return object_token("auth.group", str(team.pk))


# --- naming the object in for_state ----------------------------------------------------


def test_a_task_names_its_object_and_the_message_carries_text(run_all, user, team):
    message = actors.noop.send(for_state={"user_pk": user.pk, "object": team})
    assert message.kwargs["for_state"]["object"] == {"model": "auth.group", "pk": str(team.pk)}
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert (task.status, task.object_type, task.object_pk) == (
        Status.DONE,
        "auth.group",
        str(team.pk),
    )
    assert list(Task.objects.about("auth.group", str(team.pk))) == [task]


def test_tasks_about_different_objects_sent_together_each_keep_their_own(broker, user):
    # Sends inside one transaction are written by one statement at commit: each row of it
    # must carry its own object, or viewers of one object would see another's tasks.
    teams = [Group.objects.create(name=f"team {n}") for n in range(3)]
    with transaction.atomic():
        messages = [actors.noop.send(for_state={"user_pk": user.pk, "object": t}) for t in teams]
        plain = actors.noop.send(for_state={"user_pk": user.pk})
    for message, team in zip(messages, teams, strict=True):
        task = Task.objects.get(message_id=message.message_id)
        assert (task.object_type, task.object_pk) == ("auth.group", str(team.pk))
    assert Task.objects.get(message_id=plain.message_id).object_type == ""


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        (lambda team: Group(name="unsaved"), "unsaved Group"),
        (lambda team: team.pk, "not a saved model instance"),
        (lambda team: {"model": "nowhere.nothing", "pk": "1"}, "does not have"),
        (lambda team: "auth.group:1", "not a saved model instance"),
    ],
)
def test_a_bad_object_is_logged_and_the_task_runs_about_no_object(
    run_all, user, team, caplog, bad, said
):
    caplog.set_level(logging.WARNING, logger="taskstate")
    message = actors.noop.send(for_state={"user_pk": user.pk, "object": bad(team)})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE and task.user_id == user.pk
    assert (task.object_type, task.object_pk) == ("", "")
    assert said in caplog.text


# --- the policy ----------------------------------------------------------------------------


def test_the_default_policy_lets_the_owner_and_permission_holders_see_and_control(
    user, viewer, controller, stranger, team
):
    task = about(team, owner=user, retry_message={"actor_name": "noop"}, status=Status.FAILED)
    running = about(team, owner=user)
    assert allowed(user, task, VIEW) and allowed(user, task, "retry")
    assert allowed(viewer, task, VIEW)
    assert not allowed(viewer, task, "retry") and not allowed(viewer, running, "cancel")
    assert allowed(controller, task, "retry") and allowed(controller, running, "cancel")
    assert not allowed(stranger, task, VIEW) and not allowed(stranger, running, "cancel")
    assert not allowed(None, task, VIEW)
    object_key = ("auth.group", str(team.pk))
    assert may_see_object(viewer, *object_key) and may_see_object(controller, *object_key)
    assert not may_see_object(user, *object_key)  # owning one task is not seeing the object
    assert not may_see_object(stranger, *object_key)


def test_object_permissions_count_through_has_perm_with_the_object(
    django_user_model, object_backend, team
):
    other_team = Group.objects.create(name="Team Lyra")
    member = with_perm(django_user_model, "mia")
    object_backend.add((member.pk, "auth.view_group", team.pk))
    assert may_see_object(member, "auth.group", str(team.pk))
    assert not may_see_object(member, "auth.group", str(other_team.pk))
    assert not allowed(member, about(team), "cancel")
    object_backend.add((member.pk, "auth.change_group", team.pk))
    member = django_user_model.objects.get(pk=member.pk)
    assert allowed(member, about(team), "cancel")


def test_a_custom_policy_decides_who_sees_an_objects_tasks(settings, viewer, stranger, team):
    settings.TASKSTATE = {
        **settings.TASKSTATE,
        "CONTROL_POLICY": "tests.test_object_tasks.only_sam",
    }
    assert may_see_object(stranger, "auth.group", str(team.pk))
    assert not may_see_object(viewer, "auth.group", str(team.pk))


def only_sam(user: Any, task: Task, action: str) -> bool:
    return getattr(user, "username", "") == "sam"


# --- the list and its tag ---------------------------------------------------------------


def render_list(user: Any, team: Any, source: str = "{% taskstate_list for=team %}") -> str:
    request = RequestFactory().get("/teams/1/")
    request.user = user
    return Template("{% load taskstate %}" + source).render(
        Context({"request": request, "team": team})
    )


def test_the_tag_lists_an_objects_tasks_for_those_who_may_see_them(user, viewer, stranger, team):
    mine = about(team, owner=user, description="Import by alice")
    elsewhere = Task.objects.create(message_id="unrelated", actor_name="a", user=user)
    html = render_list(viewer, team)
    assert f'id="taskstate-task-{mine.pk}"' in html
    assert f'id="taskstate-task-{elsewhere.pk}"' not in html
    assert reverse("taskstate:object-events", args=[token_of(team)]) in html
    assert "Tasks about Team Orion" in html
    assert "taskstate-task" not in render_list(stranger, team)
    assert render_list(stranger, team).strip() == ""
    # The owner's own list keeps showing their task.
    assert f'id="taskstate-task-{mine.pk}"' in render_list(user, team, "{% taskstate_list %}")


def test_the_tag_shows_nothing_for_an_unsaved_object_and_refuses_unknown_options(viewer):
    assert render_list(viewer, Group(name="unsaved")).strip() == ""
    with pytest.raises(TemplateSyntaxError):
        render_list(viewer, None, "{% taskstate_list about=team %}")


def test_buttons_follow_the_policy_for_each_viewer(user, viewer, controller, team):
    running = about(team, owner=user)
    finished = about(team, owner=user, status=Status.DONE)
    cancel_url = reverse("taskstate:cancel", args=[running.pk])
    seen_url = reverse("taskstate:seen", args=[finished.pk])
    as_viewer, as_controller = render_list(viewer, team), render_list(controller, team)
    assert cancel_url not in as_viewer and cancel_url in as_controller
    # Dismissing is the owner's own mark.
    assert seen_url not in as_viewer and seen_url not in as_controller


def test_the_object_list_view_answers_viewers_only(client, user, viewer, stranger, team):
    task = about(team, owner=user)
    url = reverse("taskstate:object-list", args=[token_of(team)])
    rows = logged_in(viewer).get(url, **HTMX)
    assert rows.status_code == 200 and f'id="taskstate-task-{task.pk}"' in rows.content.decode()
    page = logged_in(viewer).get(url)
    assert page.status_code == 200 and 'id="taskstate-object-list"' in page.content.decode()
    assert logged_in(stranger).get(url, **HTMX).status_code == 403
    assert client.get(url, **HTMX).status_code == 403  # anonymous
    forged = reverse("taskstate:object-list", args=["auth.group:1"])
    assert logged_in(viewer).get(forged).status_code == 404


def test_a_token_names_one_object_and_cannot_be_forged(team):
    token = token_of(team)
    assert object_of_token(token) == ("auth.group", str(team.pk))
    signature = token.rsplit(":", 1)[1]
    other = signing.b64_encode(b'["auth.group","999"]').decode()
    assert object_of_token(f"{other}:{signature}") is None
    assert object_of_token(token[:-2]) is None
    assert object_of_token(signing.Signer().sign_object(["auth.group", "1"])) is None


# --- control through the object -------------------------------------------------------------


def test_object_scoped_cancel_follows_the_policy(broker, user, viewer, controller, stranger, team):
    message = actors.noop.send(for_state={"user_pk": user.pk, "object": team})
    queued = Task.objects.get(message_id=message.message_id)
    url = reverse("taskstate:cancel", args=[queued.pk])
    assert logged_in(stranger).post(url).status_code == 404  # may not even see it
    assert logged_in(viewer).post(url).status_code == 403  # sees it, may not change it
    response = logged_in(controller).post(url, **HTMX)
    assert response.status_code == 200 and "Cancelling" in response.content.decode()
    assert Task.objects.get(pk=queued.pk).cancel_requested_at is not None


def test_object_scoped_retry_follows_the_policy(run_all, user, viewer, controller, team):
    message = actors.always_fails.send_with_options(
        kwargs={"for_state": {"user_pk": user.pk, "object": team, "retryable": True}},
        max_retries=0,
    )
    run_all()
    failed = Task.objects.get(message_id=message.message_id)
    assert failed.status == Status.FAILED
    url = reverse("taskstate:retry", args=[failed.pk])
    assert logged_in(viewer).post(url).status_code == 403
    assert logged_in(controller).post(url, **HTMX).status_code == 200
    run_all()
    again = Task.objects.get(retry_of=failed)
    assert (again.user_id, again.object_type, again.object_pk) == (
        user.pk,
        "auth.group",
        str(team.pk),
    )


def test_a_task_about_no_object_stays_its_owners_alone(user, controller):
    task = Task.objects.create(message_id="own", actor_name="a", user=user)
    assert logged_in(controller).post(reverse("taskstate:cancel", args=[task.pk])).status_code == (
        404
    )


# --- the channel ---------------------------------------------------------------------------


def test_the_objects_channel_is_the_sites_and_only_the_events_view_opens_it(settings, viewer, team):
    channel = object_channels("auth.group", str(team.pk))[0]
    assert channel.startswith(conf.CHANNEL_PREFIX)
    assert channel != object_channels("auth.group", str(team.pk + 1))[0]
    assert channel != user_channel(viewer.pk)
    manager = TaskstateChannelManager()
    assert not manager.can_read_channel(viewer, channel)  # another door: not admitted
    admit(viewer, channel)
    assert manager.can_read_channel(viewer, channel)
    settings.TASKSTATE = {**settings.TASKSTATE, "CHANNEL_NAMESPACE": "another-site"}
    theirs = object_channels("auth.group", str(team.pk))[0]
    assert theirs != channel
    assert not may_read(viewer, channel)  # this site's reader, the other site's name


def test_a_change_tells_the_objects_channel_and_the_owners_gets_the_row(
    run_all, user, team, capture_events
):
    channel = object_channels("auth.group", str(team.pk))[0]
    capture = capture_events(channel, user_channel(user.pk))
    message = actors.noop.send(for_state={"user_pk": user.pk, "object": team})
    run_all()
    events = capture.events()
    task = Task.objects.get(message_id=message.message_id)
    on_object = [(kind, data) for c, kind, data in events if c == channel]
    assert (OBJECT_CHANGED_EVENT, f'{{"task": {task.pk}}}') in on_object
    assert all(kind == OBJECT_CHANGED_EVENT for kind, _ in on_object)  # no row: no buttons
    assert any(f'id="taskstate-task-{task.pk}"' in d for c, _, d in events if c != channel)


def test_a_running_tasks_progress_reaches_its_objects_pages(user, team, capture_events):
    channel = object_channels("auth.group", str(team.pk))[0]
    capture = capture_events(channel)
    running = about(team, owner=user, status=Status.RUNNING)
    publish_object_change(running)  # its start, as the worker announces it
    on_progress_committed(None, bar=Bar(running.pk, 40, "half"), user_pk=user.pk)
    bars = [data for _, kind, data in capture.events() if kind == ""]
    assert any(
        f'id="taskstate-progress-{running.pk}"' in bar and 'aria-valuenow="40"' in bar
        for bar in bars
    )
    finished = about(team, owner=user, status=Status.DONE)
    publish_object_change(finished)
    on_progress_committed(None, bar=Bar(finished.pk, 100, ""), user_pk=user.pk)
    assert not [d for _, kind, d in capture.events() if kind == "" and str(finished.pk) in d]


def test_a_task_about_no_object_tells_no_object_channel(user, team, capture_events):
    capture = capture_events(object_channels("auth.group", str(team.pk))[0])
    publish_object_change(Task.objects.create(message_id="plain", actor_name="a", user=user))
    assert capture.events() == []


# --- the stream ----------------------------------------------------------------------------

#: The object's two streams, its rows' (htmx) and their JSON form: one set of rules.
STREAMS = pytest.mark.parametrize(
    "stream", ["taskstate:object-events", "taskstate:json-object-events"]
)


@STREAMS
def test_the_object_stream_refuses_anyone_the_policy_refuses(
    client, stranger, viewer, team, stream
):
    url = reverse(stream, args=[token_of(team)])
    assert client.get(url).status_code == 403  # anonymous
    assert logged_in(stranger).get(url).status_code == 403
    assert logged_in(viewer).get(reverse(stream, args=["x:y"])).status_code == 404
    assert logged_in(viewer).get(url, {"es-meta": "forged"}).status_code == 400
    # Admitted over WSGI, which cannot stream: told so, as the user's own stream is.
    answer = logged_in(viewer).get(url)
    assert answer.status_code == 200 and b"stream-unavailable" in answer.content


def _open(user: Any, url: str) -> tuple[AsyncClient, Any]:
    client = AsyncClient()
    client.force_login(user)
    return client, url


@STREAMS
def test_object_streams_count_in_the_users_cap(settings, viewer, team, stream):
    settings.TASKSTATE = {**settings.TASKSTATE, "STREAMS_PER_USER": 1}
    held = streams.registry.admit(viewer.pk, None)
    try:
        client, url = _open(viewer, reverse(stream, args=[token_of(team)]))
        response = asyncio.run(client.get(url))
        assert response.status_code == 429
    finally:
        assert held is not None
        streams.registry.remove(held)


@STREAMS
def test_a_viewer_who_loses_the_permission_stops_receiving_at_the_next_check(
    monkeypatch, viewer, controller, team, stream
):
    """As a logout ends a stream: at the periodic check (STREAM_CHECK_INTERVAL), with
    django-eventstream's stream-error; a viewer who keeps the permission keeps the stream."""
    monkeypatch.setattr(conf, "STREAM_CHECK_INTERVAL", 0.05)
    url = reverse(stream, args=[token_of(team)])
    losing, keeping = AsyncClient(), AsyncClient()
    losing.force_login(viewer)
    keeping.force_login(controller)

    async def in_thread(work: Any, *args: Any) -> Any:
        # A thread of the loop's executor: its connection closed after (PostgreSQL's test
        # database is dropped at the end of the session).
        def run() -> Any:
            try:
                return work(*args)
            finally:
                connections.close_all()

        return await asyncio.to_thread(run)

    async def next_chunk(body: Any) -> str:
        return (await asyncio.wait_for(body.__anext__(), 30)).decode()

    async def scenario() -> str:
        lost = await losing.get(url)
        kept = await keeping.get(url)
        assert lost.status_code == 200 and kept.status_code == 200
        lost_body, kept_body = lost.streaming_content, kept.streaming_content
        assert "stream-open" in await next_chunk(lost_body)
        assert "stream-open" in await next_chunk(kept_body)
        await in_thread(viewer.user_permissions.clear)
        closing, chunks = "", 0
        while "stream-error" not in closing:
            chunks += 1  # keep-alives come every 20 s: a stream never closed fails here
            assert chunks < 5, "the stream of the user without permission stayed open"
            closing = await next_chunk(lost_body)
        # The other viewer's stream stays open (what it carries: the uvicorn test,
        # tests/integration/test_object_streams.py).
        kept_open = [s for s in streams.registry.open_streams() if s.user_pk == controller.pk]
        assert kept_open and all(s.reason is None for s in kept_open)
        await kept_body.aclose()
        return closing

    try:
        closing = asyncio.run(scenario())
    finally:
        stop_checks(streams.registry)
    assert '"forbidden"' in closing and "may no longer see" in closing


def test_the_steps_of_a_group_about_an_object_open_for_its_viewers_only(
    user, viewer, stranger, team
):
    from taskstate.core.models import Kind

    group = about(team, owner=user, kind=Kind.GROUP, description="Import in steps")
    for position, name in enumerate(("Fetch", "Load"), start=1):
        about(team, owner=user, parent=group, position=position, description=name)
    url = reverse("taskstate:children", args=[group.pk])
    for person in (user, viewer):
        response = logged_in(person).get(url, headers={"HX-Request": "true"})
        assert response.status_code == 200
        text = response.content.decode()
        assert text.index("Fetch") < text.index("Load")
    assert logged_in(stranger).get(url).status_code == 404
    # A task that is not a group has no steps to show, whoever asks.
    single = about(team, owner=user)
    assert logged_in(user).get(reverse("taskstate:children", args=[single.pk])).status_code == 404
