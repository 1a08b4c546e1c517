"""The JSON stream served by uvicorn, fed by a separate worker through Redis pub/sub: the
HTML stream's rules (owner only, session-bound, capped per user), JSON that follows the
published schema."""

from __future__ import annotations

import json
import time

import httpx
from django.conf import settings
from django.test import Client

from taskstate.core import conf
from taskstate.core.conf import get_settings
from taskstate.core.models import Task
from tests.test_task_json import validate
from tests.testapp import tasks as actors

EVENTS = "/taskstate/json/events/"
SHAPES = {"task": "TaskJSON", "progress": "ProgressEvent", "removed": "RemovedEvent"}


def opened(streams, base, user, path=EVENTS):
    stream = streams(f"{base}{path}", user)
    assert stream.status == 200
    stream.wait_for(lambda f: f.event == "stream-open")
    return stream


def task_frames(stream):
    return [json.loads(f.data) for f in stream.frames if f.event == "task"]


def test_anonymous_json_stream_is_forbidden(server, streams):
    _, base = server
    assert streams(f"{base}{EVENTS}").status == 403


def test_a_task_run_by_the_worker_process_reaches_the_json_stream_in_the_schema(
    server, worker_process, streams, user
):
    _, base = server
    stream = opened(streams, base, user)
    message = actors.paced.send(3, 0.1, for_state={"user_pk": user.pk, "description": "json"})
    stream.wait_for(lambda f: f.event == "task" and '"status":"done"' in f.data)
    task = Task.objects.get(message_id=message.message_id)
    for frame in stream.frames:
        assert frame.event != "", "an HTML message on the JSON stream"
        if frame.event in SHAPES:
            validate(json.loads(frame.data), SHAPES[frame.event])
    rows = [row for row in task_frames(stream) if row["id"] == task.pk]
    statuses = [row["status"] for row in rows]
    # In the order they happened; "enqueued" is missing when the worker beat the sender.
    assert statuses in (["enqueued", "running", "done"], ["running", "done"])
    # The list endpoint agrees with the stream's last word, and dismissing goes out as a
    # removal.
    with httpx.Client(base_url=base, cookies=stream.cookies) as client:
        page = client.get("/taskstate/json/tasks/").json()
    validate(page, "TaskPage")
    assert page["tasks"][0]["id"] == task.pk and page["tasks"][0]["status"] == "done"
    local = Client()  # this process's view: its removal goes out through Redis too
    local.cookies[settings.SESSION_COOKIE_NAME] = stream.cookies["sessionid"]
    assert local.post(f"/taskstate/json/seen/{task.pk}/").status_code == 200
    removed = stream.wait_for(lambda f: f.event == "removed")
    assert json.loads(removed.data) == {"ids": [task.pk]}


def test_each_user_hears_only_their_own_json(server, worker_process, streams, user, other_user):
    _, base = server
    mine, theirs = opened(streams, base, user), opened(streams, base, other_user)
    actors.noop.send(for_state={"user_pk": user.pk, "description": "private export"})
    actors.noop.send(for_state={"user_pk": other_user.pk, "description": "bobs own"})
    mine.wait_for(lambda f: "private export" in f.data and '"status":"done"' in f.data)
    theirs.wait_for(lambda f: "bobs own" in f.data and '"status":"done"' in f.data)
    assert not any("private export" in f.data for f in theirs.frames)
    assert not any("bobs own" in f.data for f in mine.frames)


def test_logout_ends_the_json_stream(server, worker_process, streams, user):
    _, base = server
    stream = opened(streams, base, user)
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = stream.cookies["sessionid"]
    since = time.monotonic()
    assert client.post("/accounts/logout/").status_code in (200, 302)
    error = stream.wait_for(lambda f: f.event == "stream-error", timeout=15)
    assert '"forbidden"' in error.data
    assert stream.wait_ended(15), "the server kept the connection open"
    bound = conf.STREAM_CHECK_INTERVAL
    print(f"logout: JSON stream ended {time.monotonic() - since:.2f} s later (bound {bound} s)")


def test_html_and_json_streams_share_the_users_cap(server, streams, user):
    _, base = server
    cap = get_settings().STREAMS_PER_USER
    paths = [EVENTS if number % 2 else "/taskstate/events/" for number in range(cap)]
    assert [streams(f"{base}{path}", user).status for path in paths] == [200] * cap
    assert streams(f"{base}{EVENTS}", user).status == 429
    assert streams(f"{base}/taskstate/events/", user).status == 429
