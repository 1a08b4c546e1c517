"""Rows are rendered only for someone who can receive them (taskstate.presence).

The first part runs in one process without Redis: presence is django-eventstream's own
listener manager. The second part runs against a private ``redis-server`` (behind a TCP
proxy a test cuts or blackholes), as web processes and workers share it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.utils import timezone

from taskstate import presence
from taskstate import publish as pub
from taskstate import transitions as t
from taskstate.channels import user_channel
from taskstate.for_state import Origin, TaskIdentity
from taskstate.models import Status, Task

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
    from taskstate.signals import announce

    task = t.write(
        Origin(message_id, "export", "default", timezone.now(), TaskIdentity(user.pk, "x", "", "")),
        Status.DONE,
        t.TERMINAL_ORDER,
        {},
    )
    assert task is not None
    announce(task, sender=None, committed=True)
    return task


def test_a_user_with_no_stream_open_costs_no_render_and_gets_the_rows_once_listening(
    user, capture_events, renders, local_only
):
    task = done_task(user, "m-nobody")
    assert pub.flush()
    assert renders == [], "nobody listens: the committed row is not rendered"
    pub.publish_progress(task.pk, user.pk, 40, "half", 1)
    assert pub.flush()
    assert renders == [], "nor is a progress bar"

    capture = capture_events(user_channel(user.pk))
    pub.publish_task(task)
    pub.publish_progress(task.pk, user.pk, 50, "more", 2)
    events = capture.events()
    assert renders == ["taskstate/_task_row.html", "taskstate/_progress.html"]
    assert [kind for _, kind, _ in events] == ["", ""]
    assert f'id="taskstate-task-{task.pk}"' in events[0][2]


def test_another_users_stream_does_not_make_mine_rendered(
    user, other_user, capture_events, renders, local_only
):
    capture_events(user_channel(other_user.pk))
    done_task(user, "m-mine")
    assert pub.flush()
    assert renders == []


@pytest.mark.parametrize(
    "setting",
    [
        {"TASKSTATE": {"PUBLISH_WITHOUT_LISTENERS": True}},
        {"GRIP_URL": "http://127.0.0.1:1/"},  # Pushpin holds the streams: unknown here
    ],
    ids=["PUBLISH_WITHOUT_LISTENERS", "GRIP"],
)
def test_rows_are_rendered_for_everyone_when_listeners_cannot_be_known(
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
    assert pub.flush()
    assert renders == ["taskstate/_task_row.html"]
    assert sent == [user_channel(user.pk)]


def test_a_stream_marks_its_channel_in_its_first_read_before_stream_open(monkeypatch):
    """install() wraps the read django-eventstream makes before sending stream-open; the
    channels are marked after upstream's own read, which refuses a forbidden channel."""
    from django_eventstream import eventstream

    shared: list[list[str]] = []
    monkeypatch.setattr(presence.board, "share", lambda channels: shared.append(list(channels)))
    monkeypatch.setattr(eventstream, "get_events", eventstream.get_events)
    read: list[Any] = []

    def upstream(request: Any) -> str:
        read.append(shared[:])
        if "forbidden" in request.channels:
            raise PermissionError("not yours")
        return "events"

    monkeypatch.setattr(eventstream, "get_events", upstream)
    presence.install()
    presence.install()  # idempotent
    request = SimpleNamespace(channels={"taskstate-user-x-1"})
    assert eventstream.get_events(request) == "events"
    assert read == [[]] and shared == [["taskstate-user-x-1"]], "wrapped once, marked after"
    with pytest.raises(PermissionError):
        eventstream.get_events(SimpleNamespace(channels={"forbidden"}))
    assert shared == [["taskstate-user-x-1"]], "a refused read marks nothing"


def test_without_django_eventstream_installed_every_row_is_rendered(monkeypatch, local_only):
    """No stream of the site would set a mark: nothing can tell who listens."""
    monkeypatch.setattr(presence, "_installed", False)
    assert presence.Readers().listened(user_channel(1))
    monkeypatch.setattr(presence, "_installed", True)
    assert not presence.Readers().listened(user_channel(1))


def test_an_empty_eventstream_redis_means_redis_as_for_django_eventstream(settings):
    settings.EVENTSTREAM_REDIS = {}
    options = presence._redis_options()
    assert options is not None and options["socket_timeout"] == presence.TIMEOUT
    settings.EVENTSTREAM_REDIS = {"host": "redis.example", "socket_timeout": None}
    options = presence._redis_options()
    assert options is not None
    assert (options["host"], options["socket_timeout"]) == ("redis.example", presence.TIMEOUT)


# --- across processes, through a private redis-server ---------------------------------

needs_redis_server = pytest.mark.skipif(
    not shutil.which("redis-server"), reason="needs redis-server (a private one is started)"
)


@pytest.fixture
def redis_site(settings) -> Iterator[tuple[Any, Any]]:
    from tests.support.faults import RedisServer
    from tests.support.tcp_proxy import CuttableProxy

    server = RedisServer()
    proxy = CuttableProxy(server.port)
    settings.EVENTSTREAM_REDIS = {"host": "127.0.0.1", "port": proxy.port, "db": 0}
    for name in ("GRIP_URL", "GRIP_PROXIES"):
        if hasattr(settings, name):
            delattr(settings, name)
    try:
        yield server, proxy
    finally:
        proxy.close()
        server.close()


@pytest.fixture
def boards() -> Iterator[list[presence.Board]]:
    """Boards of web processes (each its own mark); stopped at the end."""
    made: list[presence.Board] = []
    yield made
    for board in made:
        board.stop()


def fresh_reader(monkeypatch) -> presence.Readers:
    """A publisher in another process: nothing remembered; "yes" not trusted."""
    monkeypatch.setattr(presence, "TRUST_YES_FOR", 0.0)
    return presence.Readers()


@needs_redis_server
def test_a_mark_set_by_one_process_is_read_by_another_and_taken_back_when_it_ends(
    redis_site, boards, monkeypatch, settings
):
    from tests.support.faults import wait_for

    monkeypatch.setattr(presence, "RENEW_EVERY", 0.2)
    web_a, web_b = presence.Board(), presence.Board()
    boards += [web_a, web_b]
    reader = fresh_reader(monkeypatch)
    mine, yours = user_channel(1), user_channel(2)
    assert not reader.listened(mine)

    web_a.hold([mine])  # returns once the mark is in Redis
    assert reader.listened(mine) and not reader.listened(yours)
    web_b.hold([mine])
    web_a.release([mine])
    time.sleep(0.6)  # a few renewals: web_b still holds it
    assert reader.listened(mine)
    web_b.release([mine])
    wait_for(lambda: not reader.listened(mine), 5, "the mark taken back")

    settings.TASKSTATE = {"CHANNEL_NAMESPACE": "another-site"}
    other_site = user_channel(1)
    web_a.hold([other_site])  # held while the assertions below run
    settings.TASKSTATE = {}
    assert user_channel(1) != other_site
    assert reader.listened(other_site)
    assert not reader.listened(user_channel(1)), "another site's stream is not ours"


@needs_redis_server
def test_a_process_that_died_holding_a_mark_stops_counting_once_it_expires(
    redis_site, boards, monkeypatch
):
    from tests.support.faults import wait_for

    monkeypatch.setattr(presence, "LEASE", 0.5)
    dead = presence.Board()
    boards.append(dead)
    reader = fresh_reader(monkeypatch)
    dead.hold([user_channel(3)])
    assert reader.listened(user_channel(3))
    monkeypatch.setattr(dead, "_mark", lambda *args: True)  # it renews nothing any more
    wait_for(lambda: not reader.listened(user_channel(3)), 5, "the key to expire")


@needs_redis_server
def test_a_publisher_that_cannot_read_redis_renders_for_everyone_and_says_so_once(
    redis_site, monkeypatch, caplog
):
    _, proxy = redis_site
    monkeypatch.setattr(presence, "TIMEOUT", 0.5)
    monkeypatch.setattr(presence, "FAIL_OPEN_FOR", 0.3)
    reader = fresh_reader(monkeypatch)
    channel = user_channel(5)
    assert not reader.listened(channel)
    with caplog.at_level(logging.WARNING, logger="taskstate"):
        proxy.blackhole()
        started = time.monotonic()
        assert reader.listened(channel), "a read that hangs counts as yes"
        assert time.monotonic() - started < 3, "bounded by the socket timeout"
        time.sleep(0.4)
        assert reader.listened(channel)
        proxy.heal()
        proxy.cut()
        time.sleep(0.4)
        assert reader.listened(channel)
        proxy.open()
        time.sleep(0.4)
        assert not reader.listened(channel)
    assert caplog.text.count("cannot read which pages are open") == 1
    assert "works again" in caplog.text


@needs_redis_server
def test_a_mark_that_could_not_be_set_is_set_when_redis_answers_and_its_streams_reset(
    redis_site, boards, monkeypatch, caplog
):
    from django_eventstream.views import Listener, get_listener_manager

    from tests.support.faults import wait_for

    _, proxy = redis_site
    monkeypatch.setattr(presence, "TIMEOUT", 0.5)
    monkeypatch.setattr(presence, "RETRY_EVERY", 0.2)
    web = presence.Board()
    boards.append(web)
    reader = fresh_reader(monkeypatch)
    channel = user_channel(6)
    listener = Listener()
    listener.loop = asyncio.new_event_loop()
    listener.channels = {channel}
    manager = get_listener_manager()
    manager.add_listener(listener)
    try:
        with caplog.at_level(logging.WARNING, logger="taskstate"):
            proxy.blackhole()
            started = time.monotonic()
            web.share([channel])  # the stream's first read: must not hang on Redis
            assert time.monotonic() - started < 3
            assert "cannot mark open streams" in caplog.text
            started = time.monotonic()
            web.share([channel])  # while Redis fails: at once
            assert time.monotonic() - started < 0.2
            proxy.heal()
            wait_for(lambda: reader.listened(channel), 10, "the mark set once Redis answers")
            wait_for(
                lambda: (
                    [e.type for e in listener.channel_items.get(channel, [])] == [presence.RESET]
                ),
                5,
                "the stream told to resync",
            )
        assert caplog.text.count("cannot mark open streams") == 1
        assert "marking open streams in Redis works again" in caplog.text
    finally:
        manager.remove_listener(listener)
        listener.loop.close()


@needs_redis_server
def test_a_stream_opened_while_its_channel_is_taken_back_is_marked_again(
    redis_site, boards, monkeypatch
):
    """The closed stream's mark is taken back in a renewal; a stream of the same channel
    that opened meanwhile found the mark fresh and asked for none."""
    from django_eventstream.views import Listener, get_listener_manager

    from tests.support.faults import wait_for

    monkeypatch.setattr(presence, "RENEW_EVERY", 0.3)
    monkeypatch.setattr(presence, "RETRY_EVERY", 0.05)
    web = presence.Board()
    boards.append(web)
    reader = fresh_reader(monkeypatch)
    channel = user_channel(7)
    web.hold([channel])
    listener = Listener()
    listener.loop = asyncio.new_event_loop()
    listener.channels = {channel}
    manager = get_listener_manager()
    real_local = presence._local_channels
    stale: list[bool] = []

    def read_before_the_stream_opened() -> set[str]:
        # The first renewal after the release read the open streams just before the
        # stream below opened: it finds none. Every other read is real.
        if not stale and not web.held_here(channel):
            stale.append(True)
            return set()
        return real_local()

    manager.add_listener(listener)  # the new stream...
    web.share([channel])  # ...whose first read finds the mark fresh: asks for nothing
    monkeypatch.setattr(presence, "_local_channels", read_before_the_stream_opened)
    try:
        web.release([channel])
        wait_for(
            lambda: [e.type for e in listener.channel_items.get(channel, [])] == [presence.RESET],
            5,
            "the new stream told to resync",
        )
        assert stale, "the renewal read the streams before the new one opened"
        assert reader.listened(channel)
        time.sleep(1)
        assert reader.listened(channel), "still marked after more renewals"
    finally:
        manager.remove_listener(listener)
        listener.loop.close()


def stream_of(channel: str) -> Any:
    """A real django-eventstream listener on ``channel`` (a stream of this process)."""
    from django_eventstream.views import Listener, get_listener_manager

    listener = Listener()
    listener.loop = asyncio.new_event_loop()
    listener.channels = {channel}
    get_listener_manager().add_listener(listener)
    return listener


def end_stream(listener: Any) -> None:
    from django_eventstream.views import get_listener_manager

    get_listener_manager().remove_listener(listener)
    listener.loop.close()


def told_to_resync(listener: Any, channel: str) -> bool:
    return presence.RESET in [e.type for e in listener.channel_items.get(channel, [])]


@needs_redis_server
def marked(server: Any, channel: str) -> bool:
    """Whether Redis holds a mark for ``channel`` (read past this process's listeners)."""
    import redis

    client = redis.Redis(port=server.port)
    try:
        return bool(client.zcard(presence._key(channel)))
    finally:
        client.close()


def test_a_mark_redis_lost_is_set_again_and_its_streams_reset(redis_site, boards, monkeypatch):
    """A Redis restarted without persistence (here: flushed) forgets every mark."""
    import redis

    from tests.support.faults import wait_for

    server, _ = redis_site
    monkeypatch.setattr(presence, "RENEW_EVERY", 0.3)
    web = presence.Board()
    boards.append(web)
    channel = user_channel(8)
    listener = stream_of(channel)
    try:
        web.share([channel])
        assert marked(server, channel)
        time.sleep(0.7)  # renewals of a mark that is there: no reset
        assert not told_to_resync(listener, channel)
        redis.Redis(port=server.port).flushall()
        assert not marked(server, channel)
        wait_for(lambda: marked(server, channel), 5, "the mark set again")
        wait_for(lambda: told_to_resync(listener, channel), 5, "the stream told to resync")
    finally:
        end_stream(listener)


@needs_redis_server
def test_a_mark_set_too_slowly_for_the_stream_to_wait_resets_the_stream_once_set(
    redis_site, boards, monkeypatch
):
    from tests.support.faults import wait_for

    server, _ = redis_site
    monkeypatch.setattr(presence, "TIMEOUT", 0.2)  # share() waits 2 * 0.2 + 1 s at most
    web = presence.Board()
    boards.append(web)
    channel = user_channel(9)
    real_mark = web._mark

    def slow_mark(*args: Any) -> bool:
        time.sleep(2)  # Redis answers, late (a long BGSAVE fork, a busy server)
        return real_mark(*args)

    monkeypatch.setattr(web, "_mark", slow_mark)
    listener = stream_of(channel)
    try:
        started = time.monotonic()
        web.share([channel])
        assert time.monotonic() - started < 1.8, "the stream did not wait for the mark"
        assert not marked(server, channel)
        wait_for(lambda: marked(server, channel), 5, "the mark set")
        wait_for(lambda: told_to_resync(listener, channel), 5, "the stream told to resync")
    finally:
        end_stream(listener)


@needs_redis_server
@pytest.mark.parametrize("opened", ["after", "during"])
def test_a_take_back_whose_reply_was_lost_is_not_taken_for_a_mark(
    redis_site, boards, monkeypatch, opened
):
    """The renewal takes a channel's mark back; Redis applies it, the reply is lost. A
    stream of that channel opening next must get a mark, not find it "fresh"; one that
    opened while the reply was awaited (and found the mark fresh) must be reset once the
    channel is marked again."""
    from tests.support.faults import wait_for

    monkeypatch.setattr(presence, "RENEW_EVERY", 0.3)
    monkeypatch.setattr(presence, "RETRY_EVERY", 0.2)
    web = presence.Board()
    boards.append(web)
    reader = fresh_reader(monkeypatch)
    channel = user_channel(10)
    web.hold([channel])
    connection = web._connection()
    real_pipeline = connection.pipeline
    lose: list[bool] = []
    applied, stream_opened = threading.Event(), threading.Event()

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        def execute(*a: Any, **k: Any) -> Any:
            replies = real_execute(*a, **k)
            if not lose:  # the first round after the release: applied, then "lost"
                lose.append(True)
                if opened == "during":
                    # A stream opens now (its share() would find the mark fresh), in
                    # the test's thread, as an event loop's thread adds it.
                    applied.set()
                    assert stream_opened.wait(5)
                raise TimeoutError("reply lost")
            return replies

        pipe.execute = execute
        return pipe

    web.release([channel])
    monkeypatch.setattr(connection, "pipeline", pipeline)
    server, _ = redis_site
    if opened == "during":
        assert applied.wait(5), "the take-back applied"
        listener = stream_of(channel)
        stream_opened.set()
        try:
            wait_for(lambda: marked(server, channel), 5, "the stream's mark set again")
            wait_for(lambda: told_to_resync(listener, channel), 5, "the stream told to resync")
        finally:
            end_stream(listener)
        return
    wait_for(lambda: lose and not reader.listened(channel), 5, "the take-back applied")
    listener = stream_of(channel)
    try:
        web.share([channel])  # the new stream's first read, then its stream-open
        marked_before_stream_open = marked(server, channel)
        wait_for(lambda: marked(server, channel), 5, "the new stream's mark")
        # Either the mark was there before the page's first read of its rows, or the
        # page is told to read them again once it is.
        if not marked_before_stream_open:
            wait_for(lambda: told_to_resync(listener, channel), 5, "the stream told to resync")
    finally:
        end_stream(listener)


@needs_redis_server
def test_channels_left_during_an_outage_are_forgotten_once_redis_answers(
    redis_site, boards, monkeypatch
):
    from tests.support.faults import wait_for

    _, proxy = redis_site
    monkeypatch.setattr(presence, "RENEW_EVERY", 0.3)
    monkeypatch.setattr(presence, "RETRY_EVERY", 0.2)
    monkeypatch.setattr(presence, "TIMEOUT", 0.3)
    web = presence.Board()
    boards.append(web)
    channel = user_channel(11)
    web.hold([channel])
    proxy.cut()
    wait_for(lambda: web._down, 5, "the outage noticed")
    web.release([channel])  # the page closed while Redis was away
    proxy.open()
    wait_for(lambda: not web._down, 5, "Redis back")
    time.sleep(0.5)
    assert not web._unsure, "nothing left to reset, so renewals slow down again"
