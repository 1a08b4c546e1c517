"""What a task change sends to its owner's channel, through django-eventstream for real."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from django.utils import timezone

from taskstate.core import conf, threads
from taskstate.core.for_state import Origin, TaskIdentity
from taskstate.core.models import Status, Task
from taskstate.core.states import TERMINAL_ORDER
from taskstate.web.channels import may_read, user_channel
from tests.conftest import lifecycle_announced, without_the_senders
from tests.support.drain import flush
from tests.support.writes import write_one
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)


def test_user_channel_uses_the_prefix_and_the_configured_namespace(settings, monkeypatch):
    settings.TASKSTATE = {"CHANNEL_NAMESPACE": "site-a"}
    assert user_channel(7) == "taskstate-user-site-a-7"
    monkeypatch.setattr(conf, "CHANNEL_PREFIX", "ts-")
    settings.TASKSTATE = {"CHANNEL_NAMESPACE": "b"}
    assert user_channel(7) == "ts-b-7"


def test_the_default_namespace_differs_by_secret_key_and_database_name(settings):
    from django.db import connections

    from taskstate.web.channels import site_namespace

    first = site_namespace()
    assert re.fullmatch(r"[0-9a-f]{12}", first)
    assert user_channel(7) == f"taskstate-user-{first}-7"
    settings.SECRET_KEY = "another-site-another-secret-key-long-enough"
    second = site_namespace()
    assert second != first
    db = connections["default"].settings_dict
    name = db["NAME"]
    try:
        db["NAME"] = f"{name}-other"
        assert site_namespace() not in (first, second)
    finally:
        db["NAME"] = name
    assert site_namespace() == second


def test_another_sites_channel_for_the_same_pk_is_not_readable(user, settings):
    mine = user_channel(user.pk)
    settings.TASKSTATE = {"CHANNEL_NAMESPACE": "elsewhere"}
    theirs = user_channel(user.pk)
    settings.TASKSTATE = {}
    assert mine != theirs
    assert may_read(user, mine) and not may_read(user, theirs)


def test_only_the_owner_may_read_a_taskstate_channel(user, other_user):
    from django.contrib.auth.models import AnonymousUser

    mine = user_channel(user.pk)
    assert may_read(user, mine)
    assert not may_read(other_user, mine)
    assert not may_read(AnonymousUser(), mine)
    assert not may_read(None, mine)
    assert may_read(other_user, "someone-elses-app-channel")


def test_every_status_change_reaches_the_owner_as_an_unnamed_upsert(
    run_all, user, other_user, capture_events
):
    capture = capture_events(user_channel(user.pk), user_channel(other_user.pk))
    message = actors.returns.send(3, for_state={"user_pk": user.pk, "description": "Report <b>"})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    events = capture.events()
    assert {channel for channel, _, _ in events} == {user_channel(user.pk)}
    assert all(event_type == "" for _, event_type, _ in events)
    upserts = [data for _, _, data in events if "<hx-upsert" in data]
    # The worker's running and done (the background writer announces each committed row:
    # lifecycle_announced), and the sender's enqueued, in any place or not at all.
    statuses = [re.search(r'data-status="(\w+)"', r).group(1) for r in upserts]
    assert lifecycle_announced(without_the_senders(statuses), ["running", "done"])
    rows = [row for row in upserts if 'data-status="enqueued"' not in row]
    assert f'id="taskstate-task-{task.pk}"' in rows[-1]
    assert 'data-status="done"' in rows[-1]
    assert "Report &lt;b&gt;" in rows[-1] and "Report <b>" not in rows[-1]


def test_progress_goes_out_of_band_to_the_bar_only(run_all, user, capture_events, settings):
    settings.TASKSTATE = {**settings.TASKSTATE, "PROGRESS_INTERVAL": 0}
    capture = capture_events(user_channel(user.pk))
    message = actors.with_progress.send(3, for_state={"user_pk": user.pk})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    events = capture.events()
    bars = [d for _, _, d in events if "hx-swap-oob" in d]
    # One bar per write, except that the background sender coalesces a task's pending bars
    # (and its final row makes a pending bar moot) when it runs behind, as under load. The
    # background writer merges reports queued within one batch with the final change (no
    # bar at all when the rest of the run fits in one; tests/test_writer.py has its bars).
    assert len(bars) <= 3
    assert all(d.lstrip().startswith(f'<div id="taskstate-progress-{task.pk}"') for d in bars)
    values = [int(re.search(r'aria-valuenow="(\d+)"', d).group(1)) for d in bars]
    assert values == sorted(values) and set(values) <= {33, 66, 100}
    rows = [d for _, _, d in events if "<hx-upsert" in d]
    assert 'data-status="done"' in rows[-1] and 'aria-valuenow="100"' in rows[-1]
    assert "step 3" in rows[-1]


def test_tasks_without_user_publish_nothing(run_all, capture_events, user):
    capture = capture_events(user_channel(user.pk))
    actors.noop.send(for_state={"description": "system job"})
    run_all()
    assert capture.events() == []


def _done(user: Any, message_id: str) -> Task:
    """A done row of ``user``'s, once what its write published has gone out."""
    task = write_one(
        Origin(message_id, "export", "default", timezone.now(), TaskIdentity(user.pk, "x", "", "")),
        Status.DONE,
        TERMINAL_ORDER,
        {},
    )
    assert task is not None
    flush()
    return task


def test_seen_task_is_removed_from_the_page(user, capture_events):
    from taskstate.web.publish import publish_task

    task = _done(user, "m-seen")
    capture = capture_events(user_channel(user.pk))
    task.seen = True
    publish_task(task)
    [(_, _, data)] = capture.events()
    assert (
        data == f'<hx-partial hx-target="#taskstate-task-{task.pk}" hx-swap="delete"></hx-partial>'
    )


def test_publishing_failure_is_logged_once_and_never_raises(user, monkeypatch, caplog):
    import django_eventstream

    from taskstate.web import publish

    def down(*args, **kwargs):
        raise ConnectionError("redis is down")

    from taskstate.web import presence
    from taskstate.web.channels import own_channels

    monkeypatch.setattr(django_eventstream, "send_event", down)
    publish._down.clear()
    presence.hold(own_channels(user.pk))  # a page is open
    try:
        for _ in range(3):
            publish.publish_removed(user.pk, [1])
        flush()
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1
        monkeypatch.undo()
        publish.publish_removed(user.pk, [1])
        flush()
    finally:
        presence.release(own_channels(user.pk))
    assert "works again" in caplog.text


def test_a_stream_that_falls_behind_is_told_to_resync_instead_of_losing_events():
    import asyncio

    from django_eventstream.event import Event
    from django_eventstream.views import MAX_PENDING, Listener, get_listener_manager

    manager = get_listener_manager()
    from tests.conftest import current_loop

    loop = asyncio.new_event_loop()
    listener = Listener()
    listener.loop = loop
    listener.channels = {"taskstate-user-behind"}
    with current_loop(loop):
        manager.add_listener(listener)
    try:
        for number in range(MAX_PENDING + 5):
            manager.add_to_queues(
                "taskstate-user-behind", Event("taskstate-user-behind", "", f"e{number}")
            )
        items = listener.channel_items["taskstate-user-behind"]
        # The overflow replaced the queue with one reset (the page re-reads its list);
        # the events after it still follow. Nothing was dropped without a reset.
        assert items[0].type == "stream-reset"
        assert [item.data for item in items[1:]] == [
            f"e{n}" for n in range(MAX_PENDING + 1, MAX_PENDING + 5)
        ]
    finally:
        manager.remove_listener(listener)
        loop.close()


def test_events_dropped_by_a_full_courier_end_in_a_stream_reset_to_their_user(
    user, other_user, capture_events, monkeypatch, caplog
):
    import threading

    from taskstate.web import courier as courier_module
    from taskstate.web import publish

    mine, theirs = user_channel(user.pk), user_channel(other_user.pk)
    capture = capture_events(mine, theirs)
    monkeypatch.setattr(courier_module, "MAX_PENDING", 2)
    entered, opened = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        opened.wait(10)

    courier_module.courier.submit(hold)
    assert entered.wait(5)
    for pk in range(5):
        publish.publish_removed(user.pk, [pk])  # 2 fit, 3 are dropped
    opened.set()
    events = capture.events()
    assert [kind for channel, kind, _ in events if channel == mine] == ["", "", "stream-reset"]
    assert not [e for e in events if e[0] == theirs], "only the user who lost events"
    assert "dropping new ones" in caplog.text


def test_a_failed_publish_ends_in_a_stream_reset_once_sending_works(
    user, capture_events, monkeypatch
):
    import django_eventstream

    from taskstate.web import publish

    mine = user_channel(user.pk)
    capture = capture_events(mine)
    monkeypatch.setattr(threads, "FIRST_RETRY_PAUSE", 60.0)

    def down(*args, **kwargs):
        raise ConnectionError("redis is down")

    real = django_eventstream.send_event
    monkeypatch.setattr(django_eventstream, "send_event", down)
    publish.publish_removed(user.pk, [1])
    assert capture.events() == []
    monkeypatch.setattr(django_eventstream, "send_event", real)
    publish.publish_removed(user.pk, [2])
    events = capture.events()
    assert [kind for _, kind, _ in events] == ["", "stream-reset"]
    assert "taskstate-task-2" in events[0][2]


def test_a_database_alias_that_does_not_exist_still_gives_a_namespace(settings):
    from taskstate.web.channels import site_namespace

    settings.TASKSTATE = {"DATABASE": "no-such-alias"}  # taskstate.E004 reports it
    assert re.fullmatch(r"[0-9a-f]{12}", site_namespace())


def test_a_deactivated_user_may_not_read_even_their_own_channel(user):
    mine = user_channel(user.pk)
    user.is_active = False
    assert not may_read(user, mine)


def test_a_receiver_of_task_changed_that_raises_is_logged_and_the_others_still_run(user, caplog):
    from taskstate.core.signals import announce, task_changed, task_committed

    task = Task.objects.create(message_id="sig", actor_name="a", status=Status.DONE, user=user)
    heard: list[str] = []

    def breaks(sender: Any, task: Task, **kwargs: Any) -> None:
        raise RuntimeError("a project's receiver is broken")

    def listens(sender: Any, task: Task, **kwargs: Any) -> None:
        heard.append(task.message_id)

    task_changed.connect(breaks)
    task_committed.connect(listens)
    try:
        with caplog.at_level(logging.ERROR):
            announce(task, committed=True)
    finally:
        task_changed.disconnect(breaks)
        task_committed.disconnect(listens)
    assert heard == ["sig"]
    [record] = [r for r in caplog.records if "breaks" in r.getMessage()]
    assert record.name == "django.dispatch" and record.exc_info is not None


def test_channel_and_mark_hmacs_name_their_algorithm():
    """Django 6.1 warns (RemovedInDjango2028Warning) when salted_hmac is left to its
    default algorithm, which changes to sha256 in Django 2028: that change would rename
    every channel between two Django versions. Ours name sha256."""
    import warnings

    from taskstate.web.channels import site_namespace
    from taskstate.web.streams import _refresh_mark, grip_session_channel

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        namespace = site_namespace()
        mark = _refresh_mark("1", "ref")
        channel = grip_session_channel("a-session-key")
    assert len(namespace) == 12 and len(mark) == 64
    assert len(channel.removeprefix("taskstate-session-")) == 64


def test_a_change_nobody_can_receive_is_not_handed_to_the_courier(user, monkeypatch, settings):
    """Without Redis or GRIP and with no page open in the process, nothing is queued: a
    stream opened later reads the row. With one open, the row is handed over and sent."""
    from taskstate.web import presence, publish
    from taskstate.web.channels import own_channels

    for name in ("EVENTSTREAM_REDIS", "GRIP_URL", "GRIP_PROXIES"):
        if hasattr(settings, name):
            delattr(settings, name)

    handed: list[Any] = []
    real_submit = publish.courier.submit

    def submit(job: Any, **keys: Any) -> None:
        handed.append(keys["channel"])
        real_submit(job, **keys)

    monkeypatch.setattr(publish.courier, "submit", submit)
    task = _done(user, "m-quiet")
    handed.clear()
    publish.publish_task(task)
    publish.publish_removed(user.pk, [task.pk])
    assert handed == []
    presence.hold(own_channels(user.pk))
    try:
        publish.publish_task(task)
        publish.publish_removed(user.pk, [task.pk])
        assert handed == [own_channels(user.pk)] * 2
        flush()
    finally:
        presence.release(own_channels(user.pk))


def test_a_row_announced_late_with_an_earlier_state_never_replaces_the_pending_later_one(
    user, capture_events
):
    """The sender's ``enqueued`` announced after the worker's ``done`` while the courier is
    busy: the page gets ``done`` once, not ``enqueued``."""
    import copy
    import threading

    from taskstate.core.states import ENQUEUED_ORDER
    from taskstate.web.publish import courier, publish_task

    done = _done(user, "m-late")
    early = copy.copy(done)
    early.status, early.state_order = Status.ENQUEUED, ENQUEUED_ORDER
    capture = capture_events(user_channel(user.pk))
    entered, opened = threading.Event(), threading.Event()
    courier.submit(lambda: (entered.set(), opened.wait(10)))
    assert entered.wait(5)
    try:
        publish_task(done)
        publish_task(early)
    finally:
        opened.set()
    flush()
    [(_, _, data)] = capture.events()
    assert 'data-status="done"' in data
