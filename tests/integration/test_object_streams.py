"""Tasks about an object, against uvicorn, a worker and Redis: each permitted viewer's
stream and page gets them live, no one else's (a user without permission, an anonymous
request, another site on the same Redis), in their HTML and their JSON form, and a viewer
who loses the permission stops receiving within the session check's bound."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.db import connections
from django.test import Client

from taskstate.core import conf
from taskstate.core.models import Status, Task
from taskstate.web.channels import object_token
from taskstate.web.publish import OBJECT_CHANGED_EVENT
from tests.browser.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    INIT_SCRIPT,
    _missing_browser,
    expect,
    screenshot,
    wait_open,
)
from tests.integration.test_two_sites import two_sites  # noqa: F401
from tests.support.faults import wait_for
from tests.support.sse import SSEClient, session_cookie
from tests.test_task_json import validate
from tests.testapp import tasks as actors


@dataclass
class People:
    owner: Any
    viewer: Any  # the model's view permission
    controller: Any  # view and change
    stranger: Any  # logged in, no permission
    team: Group


@pytest.fixture
def people(transactional_db, django_user_model, user) -> People:
    def with_perms(name: str, *codenames: str) -> Any:
        person = django_user_model.objects.create_user(name, password=name)
        for codename in codenames:
            person.user_permissions.add(Permission.objects.get(codename=codename))
        return person

    return People(
        owner=user,
        viewer=with_perms("vera", "view_group"),
        controller=with_perms("carl", "view_group", "change_group"),
        stranger=with_perms("sam"),
        team=Group.objects.create(name="Team Orion"),
    )


def events_url(base: str, token: str) -> str:
    return f"{base}/taskstate/object/{token}/events/"


def told(stream: SSEClient, task_pk: int) -> Any:
    return stream.wait_for(
        lambda f: f.event == OBJECT_CHANGED_EVENT and f'"task": {task_pk}' in f.data
    )


def test_a_task_about_an_object_reaches_its_viewers_and_no_one_else(
    people,
    two_sites,  # noqa: F811
):
    site_a, site_b = two_sites
    team = str(people.team.pk)
    url_a = events_url(site_a.base, object_token("auth.group", team))
    token_b = site_b.run(
        "from taskstate.web.channels import object_token; "
        f"print('TOKEN', object_token('auth.group', {team!r}))"
    )
    url_b = events_url(site_b.base, token_b.split("TOKEN ")[-1].split()[0])
    viewer_a = SSEClient(url_a, cookies=session_cookie(people.viewer))
    controller_a = SSEClient(url_a, cookies=session_cookie(people.controller))
    stranger_a = SSEClient(url_a, cookies=session_cookie(people.stranger))
    anonymous_a = SSEClient(url_a)
    viewer_b = SSEClient(url_b, cookies=site_b.session_cookie(people.viewer.pk))
    opened = [viewer_a, controller_a, viewer_b]
    try:
        assert stranger_a.status == 403 and anonymous_a.status == 403
        for stream in opened:
            assert stream.status == 200
            stream.wait_for(lambda f: f.event == "stream-open")
        # Site A's task gets a pk site B's next task does not have (B's database is a
        # copy taken before this row).
        Task.objects.create(message_id="a-spacer", actor_name="spacer")
        message = actors.noop.send(
            for_state={"user_pk": people.owner.pk, "description": "import A", "object": people.team}
        )
        task_a = wait_for(
            lambda: Task.objects.filter(message_id=message.message_id, status=Status.DONE).first(),
            timeout=30,
            what="site A's task done",
        )
        told(viewer_a, task_a.pk)
        told(controller_a, task_a.pk)
        # B's task after A's: B's process hears both on one pub/sub connection, in order,
        # so once B's event arrived A's had its chance to cross.
        out = site_b.run(
            "from django.contrib.auth.models import Group; from tests.testapp import tasks; "
            "from tests.support.drain import flush; from taskstate.core.models import Task; "
            f"m = tasks.noop.send(for_state={{'user_pk': {people.owner.pk}, "
            f"'object': Group.objects.get(pk={team})}}); flush(); "
            "import time\n"
            "for _ in range(600):\n"
            "    t = Task.objects.filter(message_id=m.message_id, status='done').first()\n"
            "    if t: break\n"
            "    time.sleep(0.05)\n"
            "print('TASK', t.pk)"
        )
        task_b = int(out.split("TASK ")[-1].split()[0])
        assert task_b != task_a.pk
        told(viewer_b, task_b)
        assert not [f for f in viewer_b.frames if f'"task": {task_a.pk}' in f.data]
        assert not [f for f in viewer_a.frames if f'"task": {task_b}' in f.data]
    finally:
        for stream in (*opened, stranger_a, anonymous_a):
            stream.close()


def test_a_viewer_who_loses_the_permission_stops_receiving_within_the_session_bound(
    people, server, worker_process
):
    _, base = server
    url = events_url(base, object_token("auth.group", str(people.team.pk)))
    losing = SSEClient(url, cookies=session_cookie(people.viewer))
    keeping = SSEClient(url, cookies=session_cookie(people.controller))
    try:
        for stream in (losing, keeping):
            assert stream.status == 200
            stream.wait_for(lambda f: f.event == "stream-open")
        since = time.monotonic()
        people.viewer.user_permissions.clear()
        error = losing.wait_for(lambda f: f.event == "stream-error", timeout=15)
        assert '"forbidden"' in error.data
        assert losing.wait_ended(15), "the server kept the connection open"
        bound = conf.STREAM_CHECK_INTERVAL
        print(
            f"permission removed: stream ended {time.monotonic() - since:.2f} s later "
            f"(check every {bound} s)"
        )
        message = actors.noop.send(for_state={"object": people.team})
        task = wait_for(
            lambda: Task.objects.filter(message_id=message.message_id).first(),
            timeout=30,
            what="the row",
        )
        told(keeping, task.pk)
        # Coming back is refused as well.
        again = SSEClient(url, cookies=session_cookie(people.viewer))
        try:
            assert again.status == 403
        finally:
            again.close()
    finally:
        losing.close()
        keeping.close()


#: The shapes of the events of an object's JSON stream, by event type.
JSON_SHAPES = {"changed": "ChangedEvent", "progress": "ProgressEvent", "removed": "RemovedEvent"}


def test_a_permitted_viewers_json_stream_gets_the_objects_task_and_a_strangers_is_refused(
    people, server, worker_process, streams
):
    _, base = server
    token = object_token("auth.group", str(people.team.pk))
    url = f"{base}/taskstate/object/{token}/json/events/"
    assert streams(url, people.stranger).status == 403
    assert streams(url).status == 403  # anonymous
    viewer = streams(url, people.viewer)
    assert viewer.status == 200
    viewer.wait_for(lambda f: f.event == "stream-open")
    message = actors.paced.send(
        3, 0.1, for_state={"user_pk": people.owner.pk, "object": people.team}
    )
    task = wait_for(
        lambda: Task.objects.filter(message_id=message.message_id, status=Status.DONE).first(),
        timeout=30,
        what="the task done",
    )
    viewer.wait_for(lambda f: f.event == "changed" and json.loads(f.data) == {"id": task.pk})
    for frame in viewer.frames:
        if frame.event not in ("stream-open", "keep-alive"):
            assert frame.event in JSON_SHAPES, f"not in the object's JSON stream: {frame}"
            validate(json.loads(frame.data), JSON_SHAPES[frame.event])
    # The list the event sends the page to: the task done, with the viewer's actions.
    with httpx.Client(base_url=base, cookies=viewer.cookies) as client:
        page = client.get(f"/taskstate/object/{token}/json/tasks/").json()
    validate(page, "TaskPage")
    assert [(t["id"], t["status"], t["actions"]) for t in page["tasks"]] == [(task.pk, "done", {})]
    # Its owner dismisses it (this process's view; the removal goes out through Redis):
    # the viewer's page drops it at once.
    assert dismiss_as(people.owner, task.pk) == 200
    removed = viewer.wait_for(lambda f: f.event == "removed")
    assert json.loads(removed.data) == {"ids": [task.pk]}


@pytest.fixture
def queries_beside_playwright(monkeypatch) -> Iterator[None]:
    """Sync Playwright leaves its event loop marked running in this thread: Django would
    take this test's own queries (its users, its rows, its database's flush) for async
    code. Set up before them, undone after them, once their connection is closed (the
    test database is dropped at the end of the session)."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    yield
    connections.close_all()


def sent_from_a_thread(send: Any) -> Any:
    """``send()`` in a thread of its own, its connection closed after: in this thread,
    under Playwright's loop, taskstate would hand the write to a thread that keeps its
    connection to the test database past the session."""
    sent: list[Any] = []

    def run() -> None:
        try:
            sent.append(send())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    return sent[0]


def dismiss_as(user: Any, task_pk: int) -> int:
    """The owner's dismiss, as their own page posts it (this process's view: the removal
    goes out through Redis)."""
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = session_cookie(user)["sessionid"]
    return int(client.post(f"/taskstate/json/seen/{task_pk}/").status_code)


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A Chromium of this test's own, closed with it (as tests/integration/test_pushpin.py
    does): a second session-long Playwright beside tests/browser's would leave its loop
    marked running for every later test."""
    from playwright.sync_api import sync_playwright

    if missing := _missing_browser():
        pytest.skip(missing)  # tests/browser/conftest.py's browser fixture fails in CI first
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.browser
def test_both_viewers_pages_show_the_task_live_and_a_strangers_page_shows_no_list(
    queries_beside_playwright,
    people,
    server,
    worker_process,
    chromium,
):
    browser = chromium
    _, base = server
    contexts = []

    def page_of(user: Any) -> Any:
        context = browser.new_context(viewport={"width": 1000, "height": 700})
        contexts.append(context)
        context.add_init_script(INIT_SCRIPT)  # records when the list's stream opened
        context.add_cookies(
            [{"name": "sessionid", "value": session_cookie(user)["sessionid"], "url": base}]
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{base}/groups/{people.team.pk}/")
        return page

    try:
        viewer, controller, stranger = (
            page_of(people.viewer),
            page_of(people.controller),
            page_of(people.stranger),
        )
        for page in (viewer, controller):
            wait_open(page)
        expect(stranger.locator("#taskstate-object-list")).to_have_count(0)
        expect(stranger.locator("h1")).to_have_text("Team Orion")
        message = sent_from_a_thread(
            lambda: actors.sleeps.send(
                1.5,
                for_state={
                    "user_pk": people.owner.pk,
                    "description": "Import the team",
                    "object": people.team,
                },
            )
        )
        task = wait_for(
            lambda: Task.objects.filter(message_id=message.message_id).first(),
            timeout=30,
            what="the row",
        )
        row = f"#taskstate-task-{task.pk}"
        for page in (viewer, controller):
            expect(page.locator(row)).to_have_attribute("data-status", "running", timeout=30_000)
        # The controller may cancel it, the viewer may not.
        expect(controller.locator(f"{row} .taskstate-cancel")).to_have_count(1)
        expect(viewer.locator(f"{row} .taskstate-cancel")).to_have_count(0)
        screenshot(controller, "object-list-running")
        for page in (viewer, controller):
            expect(page.locator(row)).to_have_attribute("data-status", "done", timeout=30_000)
        screenshot(controller, "object-list-done")
        expect(stranger.locator(row)).to_have_count(0)
        # Its owner dismisses it elsewhere: both object pages drop the row at once (no
        # other change of the object's tasks comes to make them read their rows again).
        dismissed = sent_from_a_thread(lambda: dismiss_as(people.owner, task.pk))
        assert dismissed == 200
        for page in (viewer, controller):
            expect(page.locator(row)).to_have_count(0, timeout=30_000)
    finally:
        for context in contexts:
            context.close()
