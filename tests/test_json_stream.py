"""What the JSON channel carries: each change in the schema's shapes, beside the HTML form."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.urls import reverse
from django.utils import timezone

from taskstate.core.for_state import Origin, TaskIdentity
from taskstate.core.models import Status, Task
from taskstate.core.states import TERMINAL_ORDER
from taskstate.web.channels import admit, json_channel, user_channel
from tests.conftest import lifecycle_announced, without_the_senders
from tests.support.drain import flush
from tests.support.writes import write_one
from tests.test_task_json import validate
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

SHAPES = {"task": "TaskJSON", "progress": "ProgressEvent", "removed": "RemovedEvent"}


def json_events(capture, channel):
    """(event type, data) of the JSON events on ``channel``, each validated by its shape."""
    out = []
    for on, event_type, data in capture.events():
        if on != channel:
            continue
        payload = json.loads(data)
        if event_type in SHAPES:
            validate(payload, SHAPES[event_type])
        out.append((event_type, payload))
    return out


def test_every_change_reaches_the_json_channel_as_a_valid_task_event(
    run_all, user, other_user, capture_events, settings
):
    settings.TASKSTATE = {**settings.TASKSTATE, "PROGRESS_INTERVAL": 0}
    capture = capture_events(json_channel(user.pk), json_channel(other_user.pk))
    message = actors.with_progress.send(
        3, for_state={"user_pk": user.pk, "description": "Report <b>"}
    )
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    events = json_events(capture, json_channel(user.pk))
    assert events, "nothing arrived"
    assert not json_events(capture, json_channel(other_user.pk))
    assert {kind for kind, _ in events} <= {"task", "progress"}
    rows = [payload for kind, payload in events if kind == "task"]
    statuses = [row["status"] for row in rows]
    assert lifecycle_announced(without_the_senders(statuses), ["running", "done"])
    # The sender's enqueued may come after the worker's rows: its order is lower.
    last = max(rows, key=lambda row: row["order"])
    assert last == [row for row in rows if row["status"] != "enqueued"][-1]
    assert last["id"] == task.pk and last["status"] == "done"
    assert last["description"] == "Report <b>"  # data, not markup: the page escapes it
    assert last["progress"]["percent"] == 100
    assert last["actions"] == {"dismiss": reverse("taskstate:json-seen", args=[task.pk])}
    orders = [row["order"] for row in rows if row["status"] != "enqueued"]
    assert orders == sorted(orders)
    bars = [payload for kind, payload in events if kind == "progress"]
    assert all(bar["id"] == task.pk for bar in bars)
    # Reports of one attempt share its order; when each was written tells them apart.
    written = [bar["updated"] for bar in bars]
    assert all(written) and written == sorted(written)


def test_a_senders_row_announced_after_the_workers_rows_carries_the_lower_order(
    run_all, worker, user, capture_events, monkeypatch
):
    """The sending thread announces its committed enqueued row while the background
    writer announces the worker's: here the sender is held until the worker's done was
    announced. While done still waits in the courier's queue the late row gives way to
    it; once done went out, the late event comes last, with the lower order. Either way a
    client keeping the higher order shows done."""
    import threading

    from taskstate.worker import middleware, writer

    done_announced = threading.Event()

    def writers_announce(task, **kwargs):
        writer_announce(task, **kwargs)
        if task.status == Status.DONE:
            done_announced.set()

    def senders_announce(task, **kwargs):
        if task.status == Status.ENQUEUED:
            worker.resume()  # the row is committed: the worker may take the message now
            done_announced.wait(30)
        sender_announce(task, **kwargs)

    writer_announce, sender_announce = writer.announce, middleware.announce
    monkeypatch.setattr(writer, "announce", writers_announce)
    monkeypatch.setattr(middleware, "announce", senders_announce)
    capture = capture_events(json_channel(user.pk))
    worker.pause()
    actors.noop.send(for_state={"user_pk": user.pk})
    run_all()
    assert done_announced.is_set()
    rows = [payload for kind, payload in json_events(capture, json_channel(user.pk))]
    statuses = [row["status"] for row in rows]
    assert statuses[-1:] == ["done"] or statuses[-2:] == ["done", "enqueued"], statuses
    kept = max(rows, key=lambda row: row["order"])
    assert kept["status"] == "done"
    assert rows[-1] is kept or rows[-1]["order"] < kept["order"]
    assert lifecycle_announced(without_the_senders(statuses), ["done"])


def test_the_html_channel_still_carries_html_only(run_all, user, capture_events):
    capture = capture_events(user_channel(user.pk), json_channel(user.pk))
    actors.noop.send(for_state={"user_pk": user.pk})
    run_all()
    events = capture.events()
    html = [(kind, data) for channel, kind, data in events if channel == user_channel(user.pk)]
    assert html and all(kind == "" and data.lstrip().startswith("<") for kind, data in html)
    assert all(kind == "task" for channel, kind, _ in events if channel == json_channel(user.pk))


def test_dismissed_tasks_are_removed_from_json_pages(user, capture_events):
    from taskstate.web.publish import publish_removed

    flush()
    capture = capture_events(json_channel(user.pk))
    publish_removed(user.pk, iter([4, 5]))
    assert json_events(capture, json_channel(user.pk)) == [("removed", {"ids": [4, 5]})]


def test_a_seen_task_goes_as_a_removal(user, capture_events):
    from taskstate.web.publish import publish_task

    task = write_one(
        Origin(
            "m-json-seen", "export", "default", timezone.now(), TaskIdentity(user.pk, "", "", "")
        ),
        Status.DONE,
        TERMINAL_ORDER,
        {},
    )
    assert task is not None
    flush()
    capture = capture_events(json_channel(user.pk))
    task.seen = True
    publish_task(task)
    assert json_events(capture, json_channel(user.pk)) == [("removed", {"ids": [task.pk]})]


def test_nothing_is_built_for_a_json_channel_nobody_listens_to(
    run_all, user, capture_events, monkeypatch, settings
):
    """Embedded: nothing. With Redis the streams may be in other processes, so the JSON
    form is built and sent for every change (its cost: benchmarks/json_stream_cost.py)."""
    from taskstate.web import publish

    built = []
    monkeypatch.setattr(publish, "task_json", lambda task: built.append(task) or {})
    capture_events(user_channel(user.pk))  # an htmx page only
    actors.noop.send(for_state={"user_pk": user.pk})
    run_all()
    flush()
    if hasattr(settings, "EVENTSTREAM_REDIS"):
        assert built, "with Redis every change is sent in both forms"
    else:
        assert built == []


def test_a_full_courier_resets_the_json_pages_too(user, capture_events, monkeypatch):
    import threading

    from taskstate.web import courier as courier_module
    from taskstate.web import publish

    capture = capture_events(user_channel(user.pk), json_channel(user.pk))
    monkeypatch.setattr(courier_module, "MAX_PENDING", 1)
    entered, opened = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        opened.wait(10)

    courier_module.courier.submit(hold)
    assert entered.wait(5)
    for pk in range(3):
        publish.publish_removed(user.pk, [pk])  # 1 fits, 2 are dropped
    opened.set()
    events = capture.events()
    for channel, first in ((user_channel(user.pk), ""), (json_channel(user.pk), "removed")):
        assert [kind for on, kind, _ in events if on == channel] == [first, "stream-reset"]


def test_only_the_json_events_view_admits_to_the_json_channel(user, other_user):
    from taskstate.web.channels import TaskstateChannelManager

    manager = TaskstateChannelManager()
    assert not manager.can_read_channel(user, json_channel(user.pk))  # not admitted
    admitted = admit(user, json_channel(user.pk))
    assert admitted == json_channel(user.pk)
    assert manager.can_read_channel(user, json_channel(user.pk))
    assert not manager.can_read_channel(user, user_channel(user.pk))  # admitted to one
    assert not manager.can_read_channel(other_user, json_channel(user.pk))


def test_the_json_events_stream_under_asgi_for_a_logged_in_user(async_client, user):
    async def open_stream():
        await async_client.aforce_login(user)
        response = await async_client.get(reverse("taskstate:json-events"))
        await sync_to_async(response.close)()
        return response

    response = async_to_sync(open_stream)()
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
