"""Rows are rendered only for someone who may receive them (taskstate.web.presence).

Without ``EVENTSTREAM_REDIS`` and GRIP (the embedded setup) that is django-eventstream's
own listener manager; otherwise every row is rendered. Across processes through Redis,
see tests/integration/test_sse_server.py.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from datetime import timezone as tz
from types import SimpleNamespace
from typing import Any

import pytest
from django.utils import timezone

from taskstate.core.for_state import Origin, TaskIdentity
from taskstate.core.models import Status, Task
from taskstate.core.signals import Bar
from taskstate.core.states import TERMINAL_ORDER
from taskstate.web import presence
from taskstate.web import publish as pub
from taskstate.web.channels import admit, json_channel, user_channel
from tests.support.drain import flush
from tests.support.writes import write_one

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def renders(monkeypatch) -> list[str]:
    """The templates rendered for the page since the test began (rows and bars)."""
    seen: list[str] = []
    real = pub.render_to_string

    def spy(name: str, *args: Any, **kwargs: Any) -> str:
        seen.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(pub, "render_to_string", spy)
    return seen


@pytest.fixture
def local_only(settings, monkeypatch) -> None:
    """Events reach this process's streams alone (no Redis, no GRIP), as in the demo."""
    from django_eventstream import eventstream as upstream

    for name in ("EVENTSTREAM_REDIS", "GRIP_URL", "GRIP_PROXIES"):
        if hasattr(settings, name):
            delattr(settings, name)
    monkeypatch.setattr(upstream, "redis_client", None)  # deliver in this process


def done_task(user: Any, message_id: str) -> Task:
    """A task written done and announced, as a worker's write is."""
    from taskstate.core.signals import announce

    task = write_one(
        Origin(message_id, "export", "default", timezone.now(), TaskIdentity(user.pk, "x", "", "")),
        Status.DONE,
        TERMINAL_ORDER,
        {},
    )
    assert task is not None
    announce(task, committed=True)
    return task


def test_a_user_with_no_stream_open_costs_no_render_and_gets_the_rows_once_listening(
    user, capture_events, renders, local_only
):
    task = done_task(user, "m-nobody")
    assert flush()
    assert renders == [], "nobody listens: the committed row is not rendered"
    pub.publish_progress(Bar(task.pk, 40, "half", 1), user.pk)
    assert flush()
    assert renders == [], "nor is a progress bar"

    capture = capture_events(user_channel(user.pk))
    pub.publish_task(task)
    written = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=tz.utc)
    pub.publish_progress(Bar(task.pk, 50, "more", 2, written), user.pk)
    events = capture.events()
    assert renders == ["taskstate/_task_row.html", "taskstate/_progress.html"]
    assert [kind for _, kind, _ in events] == ["", ""]
    assert f'id="taskstate-task-{task.pk}"' in events[0][2]
    micros = int(task.updated_at.timestamp()) * 1_000_000 + task.updated_at.microsecond
    assert f'data-taskstate-updated="{micros}"' in events[0][2]
    assert f'data-taskstate-updated="{int(written.timestamp())}678901"' in events[1][2]


def test_another_users_stream_does_not_make_mine_rendered(
    user, other_user, capture_events, renders, local_only
):
    capture_events(user_channel(other_user.pk))
    done_task(user, "m-mine")
    assert flush()
    assert renders == []


@pytest.mark.parametrize(
    "setting",
    [
        {"EVENTSTREAM_REDIS": {"host": "127.0.0.1", "port": 1}},
        {"EVENTSTREAM_REDIS": {}},  # Redis with its defaults, as django-eventstream reads it
        {"GRIP_URL": "http://127.0.0.1:1/"},  # Pushpin holds the streams
    ],
    ids=["EVENTSTREAM_REDIS", "empty EVENTSTREAM_REDIS", "GRIP"],
)
def test_rows_are_rendered_for_everyone_when_streams_may_be_in_other_processes(
    user, renders, local_only, settings, setting, monkeypatch
):
    import django_eventstream

    sent: list[str] = []
    monkeypatch.setattr(
        django_eventstream, "send_event", lambda channel, *a, **k: sent.append(channel)
    )
    for name, value in setting.items():
        setattr(settings, name, value)
    done_task(user, "m-everyone")
    assert flush()
    assert renders == ["taskstate/_task_row.html"]
    # Its JSON form too: a JSON page may be open in another process.
    assert sent == [user_channel(user.pk), json_channel(user.pk)]


def test_without_django_eventstream_installed_every_row_is_rendered(local_only, monkeypatch):
    """Something else delivers the channels: nothing here can tell who listens. (The
    registry's answer is replaced: overriding INSTALLED_APPS would rebuild the registry
    under the other tests' feet.)"""
    from django.apps import apps

    channel = user_channel(1)
    assert not presence.listened(channel)
    real = apps.is_installed
    monkeypatch.setattr(
        apps, "is_installed", lambda name: name != "django_eventstream" and real(name)
    )
    assert presence.listened(channel)


def test_a_channel_held_twice_counts_as_listened_until_released_twice(local_only):
    channel = user_channel(1)
    presence.hold([channel])
    presence.hold([channel])
    presence.release([channel])
    assert presence.listened(channel)
    presence.release([channel])
    assert not presence.listened(channel)


class _WatchedEvent(asyncio.Event):
    """A stream's wake-up event that tells the test when the stream waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def wait(self) -> Any:
        self.waiting.set()
        return await super().wait()


def test_a_change_committed_once_the_stream_is_open_reaches_the_page(user, local_only, renders):
    """The stream's listener is registered before django-eventstream sends stream-open (on
    which the page reads its rows): a change committed after that is rendered and
    delivered by the stream itself (django-eventstream's real stream loop)."""
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django_eventstream.views import Listener, stream

    channel = admit(user)  # as taskstate:events hands the stream over
    listener = Listener()
    listener.aevent = watched = _WatchedEvent()
    listener.user_id = user.pk
    listener.channels = {channel}
    request = SimpleNamespace(
        channels={channel}, channel_last_ids={}, is_next=False, is_recover=False, user=user
    )
    loop = asyncio.new_event_loop()
    body = stream(request, listener)
    following = None
    try:
        first = loop.run_until_complete(asyncio.wait_for(body.__anext__(), 30))
        assert "event: stream-open" in first
        following = loop.create_task(body.__anext__())
        loop.run_until_complete(asyncio.wait_for(watched.waiting.wait(), 30))  # caught up
        task = done_task(user, "m-after-open")
        assert flush()
        row = loop.run_until_complete(asyncio.wait_for(following, 30))
    finally:
        if following is not None and not following.done():
            following.cancel()
            loop.run_until_complete(asyncio.gather(following, return_exceptions=True))
        loop.run_until_complete(body.aclose())
        loop.run_until_complete(sync_to_async(connections.close_all)())
        loop.close()
    assert renders == ["taskstate/_task_row.html"]
    assert f'id="taskstate-task-{task.pk}"' in row and 'data-status="done"' in row
