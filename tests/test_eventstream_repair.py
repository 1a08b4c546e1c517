"""taskstate.web.eventstream_repair: only taskstate's channels are repaired, others behave as
django-eventstream delivers them; the supervised subscription notices a dead connection.

The unit tests drive django-eventstream's real listener manager and stream loop. Tests
of the subscription against a real ``redis-server`` (private, behind a TCP proxy the test
breaks) need the ``redis-server`` binary, not the shared services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django_eventstream.event import Event
from django_eventstream.views import MAX_PENDING, Listener, get_listener_manager

from taskstate.core import conf, threads
from taskstate.web import eventstream_repair as repair
from taskstate.web.channels import admit, user_channel
from tests.conftest import current_loop

PROJECT = "project-news"
OURS = user_channel(41)


class WatchedEvent(asyncio.Event):
    """The listener's wake-up event, telling the test when the stream waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def wait(self) -> Any:
        self.waiting.set()
        return await super().wait()


class LoopThread:
    """An event loop on a thread of its own, as a web server runs one. (The test's main
    thread may already run one: Playwright's, for the whole session.)"""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Keep the loop busy elsewhere (as a loaded server is) for the ``with`` body."""
        entered, done = threading.Event(), threading.Event()

        def hold() -> None:
            entered.set()
            done.wait(30)

        self.loop.call_soon_threadsafe(hold)
        assert entered.wait(10)
        try:
            yield
        finally:
            done.set()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    made = LoopThread()
    yield made
    made.close()


@pytest.fixture
def listen(loop):
    """Register listeners with the real listener manager; all removed after the test."""
    manager = get_listener_manager()
    made: list[Listener] = []

    def start(*channels: str) -> Listener:
        listener = Listener()
        listener.loop = loop.loop
        listener.channels = set(channels)
        with current_loop(loop.loop):
            manager.add_listener(listener)
        made.append(listener)
        return listener

    yield start
    for listener in made:
        manager.remove_listener(listener)


def queue(channel: str, count: int, prefix: str, first_id: int | None = None) -> list[Event]:
    events = [
        Event(channel, "", f"{prefix}{n}", id=None if first_id is None else first_id + n)
        for n in range(count)
    ]
    for event in events:
        get_listener_manager().add_to_queues(channel, event)
    return events


# --- overflow: ours reset, others as upstream ------------------------------------------------


def test_the_repair_is_installed_once_by_the_app():
    manager = get_listener_manager()
    assert manager._taskstate_installed
    patched = manager.add_to_queues
    repair.install()
    assert manager.add_to_queues is patched, "installing again changes nothing"


def test_listeners_register_after_an_asyncio_run_left_the_thread_without_a_loop(listen):
    # asyncio.run() ends by setting no current loop; with EVENTSTREAM_REDIS,
    # add_listener asks for the current one, so the helpers set it around the call.
    asyncio.run(asyncio.sleep(0))
    listener = listen(OURS)
    queue(OURS, 1, "o")
    assert [item.data for item in listener.channel_items[OURS]] == ["o0"]


def test_a_project_channel_overflows_exactly_as_upstream(listen):
    listener = listen(PROJECT)
    sent = queue(PROJECT, MAX_PENDING + 5, "p")
    # Upstream keeps the first MAX_PENDING and flags the overflow for its re-read.
    assert listener.channel_items[PROJECT] == sent[:MAX_PENDING]
    assert listener.overflow is True
    assert all(item.type != repair.RESET for item in listener.channel_items[PROJECT])


def test_a_project_channel_is_never_reset_after_an_outage(listen):
    project, ours = listen(PROJECT), listen(OURS)
    repair._reset_streams(get_listener_manager())
    assert PROJECT not in project.channel_items
    assert [(i.type, json.loads(i.data)) for i in ours.channel_items[OURS]] == [
        (repair.RESET, {"channels": [OURS]})
    ]


def test_our_channel_overflow_is_one_reset_then_the_newer_events(listen):
    listener = listen(OURS)
    queue(OURS, MAX_PENDING + 4, "o")
    items = listener.channel_items[OURS]
    assert [i.type for i in items[:1]] == [repair.RESET]
    assert json.loads(items[0].data) == {"channels": [OURS]}
    assert [i.data for i in items[1:]] == [f"o{n}" for n in range(MAX_PENDING + 1, MAX_PENDING + 4)]
    # Without storage upstream's re-read would find nothing and drop what came meanwhile.
    assert listener.overflow is False


def test_a_queued_reset_covers_every_later_drop_until_it_is_sent(listen):
    listener = listen(OURS)
    queue(OURS, 2 * MAX_PENDING + 3, "o")
    items = listener.channel_items[OURS]
    assert len(items) == MAX_PENDING
    assert [i.type for i in items].count(repair.RESET) == 1
    assert items[0].type == repair.RESET
    assert [i.data for i in items[1:]] == [
        f"o{n}" for n in range(MAX_PENDING + 1, 2 * MAX_PENDING)
    ], "the newest ones wait behind the reset, the rest is covered by it"


def test_our_overflow_of_stored_events_also_flags_upstreams_reread(listen):
    listener = listen(OURS)
    queue(OURS, MAX_PENDING + 1, "o", first_id=1)
    items = listener.channel_items[OURS]
    assert items[0].type == repair.RESET
    assert items[0].id == MAX_PENDING + 1, "the reset carries the dropped event's id"
    assert listener.overflow is True


def test_a_second_stream_on_our_channel_is_reset_on_its_own(listen):
    slow, fast = listen(OURS), listen(OURS)
    queue(OURS, MAX_PENDING, "o")
    fast.channel_items = {}  # this one's loop took its events
    queue(OURS, 1, "late")
    assert slow.channel_items[OURS][0].type == repair.RESET
    assert [i.data for i in fast.channel_items[OURS]] == ["late0"]


def test_the_prefix_is_read_at_call_time(listen, monkeypatch):
    monkeypatch.setattr(conf, "CHANNEL_PREFIX", "mine-")
    renamed, old = listen("mine-1"), listen(OURS)
    queue("mine-1", MAX_PENDING + 1, "m")
    queue(OURS, MAX_PENDING + 1, "o")
    assert renamed.channel_items["mine-1"][0].type == repair.RESET
    assert old.channel_items[OURS][0].type != repair.RESET
    assert old.overflow is True, "no longer ours: upstream's behaviour"


# --- the whole stream loop, with django-eventstream's event storage -----------------------


def parse_sse(body: str) -> list[tuple[str, str]]:
    """(event type, data) of each event in an SSE body; comments skipped."""
    out = []
    for block in body.split("\n\n"):
        kind, data = None, []
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if kind is not None:
            out.append((kind, "\n".join(data)))
    return out


@pytest.mark.django_db(transaction=True)
def test_a_stored_project_channel_keeps_exact_replay_on_overflow_while_ours_resets(
    settings, monkeypatch, loop, user
):
    """One stream on a project channel and on ours, 15 events each while it waits."""
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django_eventstream import eventstream as upstream
    from django_eventstream import send_event
    from django_eventstream.views import stream

    settings.EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"
    monkeypatch.setattr(upstream, "redis_client", None)  # deliver in this process
    ours = admit(user)  # as taskstate:events hands the stream over
    for channel in (PROJECT, ours):
        send_event(channel, "", "before", json_encode=False)  # real ids to resume from

    listener = Listener()
    listener.aevent = watched = WatchedEvent()
    listener.user_id = user.pk
    listener.channels = {PROJECT, ours}
    request = SimpleNamespace(
        channels={PROJECT, ours}, channel_last_ids={}, is_next=False, is_recover=False, user=user
    )
    body = stream(request, listener)
    received: list[tuple[str, str]] = []
    try:
        received += parse_sse(loop.run(body.__anext__()))
        assert received == [("stream-open", "")]
        waiting = asyncio.run_coroutine_threadsafe(body.__anext__(), loop.loop)
        loop.run(watched.waiting.wait())  # the stream is caught up, waiting

        sent = MAX_PENDING + 5
        with loop.busy():  # all 15 arrive before the stream's next turn
            for n in range(sent):
                send_event(PROJECT, "news", f"p{n}", json_encode=False)
                send_event(ours, "", f"o{n}", json_encode=False)

        received += parse_sse(waiting.result(30))
        # The overflow makes the loop re-read stored events before it waits again.
        received += parse_sse(loop.run(body.__anext__()))
    finally:
        loop.run(body.aclose())
        # The stream read the database from asgiref's thread: close that connection.
        loop.run(sync_to_async(connections.close_all)())

    project = [data for kind, data in received if kind == "news"]
    assert project == [f"p{n}" for n in range(sent)], "exact replay, in order, once each"
    resets = [json.loads(data)["channels"] for kind, data in received if kind == repair.RESET]
    assert resets == [[ours]], "one reset, and only for our channel"
    mine = [data for kind, data in received if kind == ""]
    assert mine == [f"o{n}" for n in range(MAX_PENDING + 1, sent)]
    assert received.index((repair.RESET, json.dumps({"channels": [ours]}))) < received.index(
        ("", mine[0])
    ), "the reset comes before the events that follow the gap"


# --- pub/sub messages ---------------------------------------------------------------------------


def test_a_pubsub_message_reaches_every_channel_and_a_malformed_one_is_ignored(listen, caplog):
    project, ours = listen(PROJECT), listen(OURS)
    manager = get_listener_manager()
    for channel in (PROJECT, OURS):
        raw = json.dumps({"channel": channel, "event_type": "", "data": "x", "pub_id": "7"})
        repair._deliver(manager, raw.encode())
    for raw in (b"not json", b'{"channel": "x"}', b"[1]"):
        repair._deliver(manager, raw)
    assert [(i.data, i.id) for i in project.channel_items[PROJECT]] == [("x", "7")]
    assert [(i.data, i.id) for i in ours.channel_items[OURS]] == [("x", "7")]
    assert caplog.text.count("ignored a malformed event") == 3


def test_an_outage_is_logged_once_and_its_end_resets_our_streams(listen, caplog):
    ours = listen(OURS)
    outage = repair._Outage(get_listener_manager())
    outage.end()  # the first subscription: nothing to reset
    assert OURS not in ours.channel_items
    pauses = []
    for _ in range(6):
        try:
            raise ConnectionError("refused")
        except ConnectionError as error:
            outage.begin(error)
        pauses.append(outage.backoff.next())
    assert pauses == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert caplog.text.count("lost the event pub/sub") == 1
    outage.end()
    assert caplog.text.count("event pub/sub is back") == 1
    assert [i.type for i in ours.channel_items[OURS]] == [repair.RESET]
    assert outage.backoff.next() == threads.FIRST_RETRY_PAUSE


def test_install_leaves_an_unknown_django_eventstream_alone(monkeypatch, caplog):
    from django_eventstream import views

    unknown = SimpleNamespace(lock=threading.Lock(), add_to_queues=lambda *a: None)
    monkeypatch.setattr(views, "get_listener_manager", lambda: unknown)
    repair.install()
    assert "lacks ['listeners_by_channel', 'start_redis_listener']" in caplog.text
    assert not hasattr(unknown, "_taskstate_installed")


# --- the health check, on a scripted connection --------------------------------------------------


class ScriptedPubSub:
    """A pub/sub connection that says what the test script says, and then nothing."""

    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.script = list(script)
        self.pings: list[float] = []
        self.early = 0

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        if self.script:
            return self.script.pop(0)
        if self.early:
            self.early -= 1
            return None  # redis-py returns None early for a filtered health-check reply
        await asyncio.sleep(timeout)
        return None

    async def ping(self) -> None:
        self.pings.append(asyncio.get_running_loop().time())


@pytest.fixture
def fast_health(monkeypatch):
    monkeypatch.setattr(repair, "HEALTH_CHECK_INTERVAL", 0.2)
    monkeypatch.setattr(repair, "REPLY_TIMEOUT", 0.1)


def test_a_silent_subscription_is_pinged_then_given_up(loop, fast_health):
    pubsub = ScriptedPubSub(
        [
            {"type": "subscribe", "data": 1},
            {"type": "message", "data": b"a"},
            {"type": "pong", "data": b""},
        ]
    )
    pubsub.early = 2
    delivered: list[bytes] = []
    confirmed: list[bool] = []

    async def run() -> float:
        began = asyncio.get_running_loop().time()
        with pytest.raises(repair.SubscriptionSilent, match="no reply"):
            await repair._listen(pubsub, delivered.append, lambda: confirmed.append(True))
        return asyncio.get_running_loop().time() - began

    took = loop.run(run())
    assert delivered == [b"a"] and confirmed == [True]
    assert len(pubsub.pings) == 1, "one ping, then given up"
    assert took >= repair.HEALTH_CHECK_INTERVAL + repair.REPLY_TIMEOUT


def test_a_reply_to_the_ping_keeps_the_subscription(loop, fast_health):
    pubsub = ScriptedPubSub([{"type": "subscribe", "data": 1}])
    answered = 0

    async def ping() -> None:
        nonlocal answered
        pubsub.pings.append(0.0)
        if answered < 2:
            answered += 1
            pubsub.script.append({"type": "pong", "data": b""})

    pubsub.ping = ping  # type: ignore[method-assign]
    with pytest.raises(repair.SubscriptionSilent):
        loop.run(repair._listen(pubsub, lambda data: None, lambda: None))
    assert len(pubsub.pings) == 3, "two answered pings kept it, the third was not answered"


# --- the supervised subscription against a real redis-server ---------------------------------

# A private redis-server, not the shared one: runs wherever the binary is installed.
services = pytest.mark.skipif(
    not shutil.which("redis-server"), reason="needs redis-server (a private one is started)"
)


class Supervised:
    """``supervise()`` on its own event loop thread, as a web process runs it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    async def _start(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(repair.supervise(get_listener_manager()))

    def listener(self, *channels: str) -> Listener:
        listener = Listener()
        listener.loop = self.loop
        listener.channels = set(channels)
        with current_loop(self.loop):
            get_listener_manager().add_listener(listener)
        return listener

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def proxied_redis(settings) -> Iterator[tuple[Any, Any]]:
    from tests.support.faults import RedisServer
    from tests.support.tcp_proxy import CuttableProxy

    server = RedisServer()
    proxy = CuttableProxy(server.port)
    settings.EVENTSTREAM_REDIS = {"host": "127.0.0.1", "port": proxy.port, "db": 0}
    try:
        yield server, proxy
    finally:
        proxy.close()
        server.close()


def published(server: Any, channel: str, data: str) -> int:
    import redis

    client = redis.Redis(port=server.port)
    try:
        message = {"channel": channel, "event_type": "", "data": data, "pub_id": None}
        return int(client.publish(repair.PUBSUB_CHANNEL, json.dumps(message)))
    finally:
        client.close()


def items(listener: Listener, channel: str) -> list[tuple[str, str]]:
    with get_listener_manager().lock:
        return [(i.type, i.data) for i in listener.channel_items.get(channel, [])]


@services
def test_supervised_subscription_delivers_every_channel_and_resets_ours_after_an_outage(
    proxied_redis, caplog
):
    from tests.support.faults import wait_for

    server, proxy = proxied_redis
    supervised = Supervised()
    project, ours = supervised.listener(PROJECT), supervised.listener(OURS)
    manager = get_listener_manager()
    try:
        wait_for(lambda: published(server, PROJECT, "p0"), 10, "the subscription")
        published(server, OURS, "o0")
        wait_for(lambda: items(ours, OURS) == [("", "o0")], 10, "our event")
        assert items(project, PROJECT) == [("", "p0")]

        with caplog.at_level(logging.WARNING, logger="taskstate"):
            proxy.cut()
            wait_for(lambda: "lost the event pub/sub" in caplog.text, 10, "the outage noticed")
            proxy.open()
            wait_for(lambda: "pub/sub is back" in caplog.text, 15, "the subscription back")
        assert items(ours, OURS)[-1][0] == repair.RESET
        assert repair.RESET not in [kind for kind, _ in items(project, PROJECT)]
        published(server, PROJECT, "p1")
        wait_for(lambda: items(project, PROJECT)[-1] == ("", "p1"), 10, "delivery again")
        assert caplog.text.count("lost the event pub/sub") == 1
    finally:
        supervised.close()
        for listener in (project, ours):
            manager.remove_listener(listener)


@services
def test_supervised_subscription_notices_a_blackholed_connection(
    proxied_redis, caplog, monkeypatch
):
    from tests.support.faults import wait_for

    monkeypatch.setattr(repair, "HEALTH_CHECK_INTERVAL", 1.0)
    monkeypatch.setattr(repair, "REPLY_TIMEOUT", 1.0)
    server, proxy = proxied_redis
    supervised = Supervised()
    ours = supervised.listener(OURS)
    try:
        wait_for(lambda: published(server, OURS, "o0"), 10, "the subscription")
        with caplog.at_level(logging.WARNING, logger="taskstate"):
            proxy.blackhole()
            server.restart()
            proxy.heal()
            wait_for(lambda: "pub/sub is back" in caplog.text, 20, "the dead connection noticed")
        assert "no reply from Redis within 1s of a ping" in caplog.text
        assert items(ours, OURS)[-1][0] == repair.RESET
        published(server, OURS, "o1")
        wait_for(lambda: items(ours, OURS)[-1] == ("", "o1"), 10, "delivery again")
    finally:
        supervised.close()
        get_listener_manager().remove_listener(ours)
