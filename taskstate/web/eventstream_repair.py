"""Two repairs to django-eventstream's delivery inside a web process (5.3's internals).

Both touch only taskstate's channels (names starting with ``CHANNEL_PREFIX``); every
other channel of the process is delivered exactly as django-eventstream delivers it.

1. **A full per-stream queue drops events silently.** django-eventstream queues at most
   ``MAX_PENDING`` (10) events per open stream between two turns of the stream's loop.
   Past that it sets the listener's ``overflow`` flag, on which the stream re-reads its
   channels from event storage; a channel without storage (taskstate's, normally) just
   loses the events. For a taskstate channel a full queue is replaced here by one
   ``stream-reset`` event, on which the task list re-reads its rows from the database.
   The ``overflow`` flag is still set when the dropped event was stored (it has an id):
   upstream's re-read then carries the stream's last-event ids past the gap. Without
   storage it is left alone, as upstream's re-read finds nothing for such a channel and
   throws away whatever was queued meanwhile. Other channels go through upstream's own
   ``add_to_queues``, so a project channel with ``EVENTSTREAM_STORAGE_CLASS`` keeps its
   exact replay.
2. **The Redis subscription dies for good, or silently.** django-eventstream starts one
   task per process that subscribes to Redis; when Redis stays away longer than
   redis-py's own retries (a few seconds) the task ends and is never started again, and
   a half-open connection (a partition, a firewall that forgot the flow) blocks it
   forever. Here a supervised subscription replaces that task. It delivers every
   channel, as upstream's does; it pings Redis after :data:`HEALTH_CHECK_INTERVAL`
   seconds without traffic and gives the connection up when nothing at all arrives
   within :data:`REPLY_TIMEOUT` more, so a dead subscription is noticed at most
   ``HEALTH_CHECK_INTERVAL + REPLY_TIMEOUT`` (15) seconds after the last thing it heard.
   It then subscribes again, with a growing pause, for as long as the process lives,
   logs once per outage, and after the outage sends ``stream-reset`` on every open
   taskstate stream (events published meanwhile are lost; pages re-read the database).

:func:`install` is called from ``TaskstateConfig.ready``. When the internals it needs
are missing a warning says so and nothing is changed.

How this module goes away: each repair is one upstream change, prepared as a patch
against django-eventstream 5.3.4 in ``docs/upstream/`` (not sent yet).
``0001-overflow-stream-reset``: an overflowed channel that event storage cannot replay
gets ``stream-reset`` from django-eventstream itself; then repair 1 is dropped.
``0002-supervised-redis-listener``: ``RedisListener`` resubscribes after any failure,
pings an idle connection, and marks every open stream overflowed after an outage (so
0001 resets what storage cannot replay); then repair 2 is dropped. Repair 1 alone could
also go without an upstream change if taskstate stored its events
(``EVENTSTREAM_STORAGE_CLASS`` and reliable channels: upstream's own re-read then
replays exactly), at the price of a database write per event, which we do not want for
progress bars; repair 2 has no such alternative. :func:`install` should check for the
released versions and install nothing once both are out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import types
from collections.abc import Callable
from typing import Any

from taskstate.core import conf

logger = logging.getLogger("taskstate")

RESET = "stream-reset"
#: django-eventstream's pub/sub channel.
PUBSUB_CHANNEL = "events_channel"
#: Pauses between two attempts to subscribe, growing from the first to the last.
FIRST_PAUSE = 0.5
MAX_PAUSE = 5.0
#: Seconds without any traffic on the subscription before it is pinged.
HEALTH_CHECK_INTERVAL = 10.0
#: Seconds after that ping within which something must arrive, or the connection is
#: given up. Also the timeout of connecting and of redis-py's handshake on connect.
REPLY_TIMEOUT = 5.0

_tasks: set[asyncio.Task[None]] = set()


class SubscriptionSilent(ConnectionError):
    """The subscription did not answer a ping: the connection is taken for dead."""


def install() -> None:
    """Patch this process's listener manager (idempotent)."""
    from django_eventstream import views

    manager = views.get_listener_manager()
    if getattr(manager, "_taskstate_installed", False):
        return
    needed = ("lock", "listeners_by_channel", "add_to_queues", "start_redis_listener")
    missing = [name for name in needed if not hasattr(manager, name)]
    if missing or not hasattr(views, "MAX_PENDING"):
        logger.warning(
            "taskstate: this django-eventstream lacks %s; dropped events are not reported "
            "and its Redis subscription is not supervised.",
            missing or ["MAX_PENDING"],
        )
        return
    manager._taskstate_upstream_add_to_queues = manager.add_to_queues
    manager.add_to_queues = types.MethodType(_add_to_queues, manager)
    manager.start_redis_listener = lambda: supervise(manager)
    manager._taskstate_installed = True


def is_ours(channel: str) -> bool:
    """Whether ``channel`` is a taskstate channel (the only ones repaired here)."""
    return channel.startswith(conf.CHANNEL_PREFIX)


def _add_to_queues(self: Any, channel: str, event: Any) -> None:
    if not is_ours(channel):
        self._taskstate_upstream_add_to_queues(channel, event)
        return

    from django_eventstream import views
    from django_eventstream.event import Event

    with self.lock:
        wake = []
        for listener in self.listeners_by_channel.get(channel, ()):
            items = listener.channel_items.setdefault(channel, [])
            if len(items) < views.MAX_PENDING:
                items.append(event)
                wake.append(listener)
                continue
            if event.id is not None:
                listener.overflow = True  # stored: upstream's re-read can follow on
            if items[0].type != RESET:
                data = json.dumps({"channels": [channel]})
                items[:] = [Event(channel, RESET, data, id=event.id)]
                wake.append(listener)
            # else: the queued reset is not sent yet, so it covers this event too
        for listener in wake:
            listener.wake_threadsafe()


async def supervise(manager: Any) -> None:
    """Subscribe, deliver, and after any failure subscribe again; never returns."""
    from django.conf import settings
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    task = asyncio.current_task()
    if task is not None:
        _tasks.add(task)  # the event loop keeps only a weak reference
    outage = _Outage(manager)
    while True:
        # Bounded connects and handshakes, so that a half-open connection cannot hang a
        # reconnect either. No silent retries inside redis-py: every broken connection
        # comes here, so that the pages hear about the events that may have been lost.
        options: dict[str, Any] = {
            "socket_connect_timeout": REPLY_TIMEOUT,
            "socket_timeout": REPLY_TIMEOUT,
            "socket_keepalive": True,
            **settings.EVENTSTREAM_REDIS,
            "retry": Retry(NoBackoff(), 0),
        }
        client = Redis(**options)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(PUBSUB_CHANNEL)
            await _listen(pubsub, lambda data: _deliver(manager, data), outage.end)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            outage.begin(error)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(outage.next_pause())


class _Outage:
    """Whether the subscription is down, logged once per outage; the pause to wait."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.lost = False
        self.pause = FIRST_PAUSE

    def begin(self, error: Exception) -> None:
        if not self.lost:
            self.lost = True
            # A silent connection has no traceback worth showing: one line says it all.
            silent = isinstance(error, SubscriptionSilent)
            logger.error(
                "taskstate: lost the event pub/sub (%s); subscribing again until Redis "
                "answers. Pages resync once it is back.",
                error if silent else type(error).__name__,
                exc_info=None if silent else error,
            )

    def end(self) -> None:
        """Redis confirmed the subscription."""
        self.pause = FIRST_PAUSE
        if self.lost:
            self.lost = False
            logger.warning("taskstate: event pub/sub is back; open pages resync.")
            _reset_streams(self.manager)

    def next_pause(self) -> float:
        pause, self.pause = self.pause, min(self.pause * 2, MAX_PAUSE)
        return pause


async def _listen(
    pubsub: Any, deliver: Callable[[Any], None], confirmed: Callable[[], None]
) -> None:
    """Read ``pubsub`` until its connection fails or stays silent through a ping.

    Whatever arrives (a message, the subscribe confirmation, a pong) proves the
    connection alive. After :data:`HEALTH_CHECK_INTERVAL` of silence a PING is sent;
    when :data:`REPLY_TIMEOUT` more pass without anything, :class:`SubscriptionSilent`.
    """
    loop = asyncio.get_running_loop()
    heard = loop.time()
    pinged = False
    while True:
        deadline = heard + HEALTH_CHECK_INTERVAL + (REPLY_TIMEOUT if pinged else 0.0)
        message = await pubsub.get_message(timeout=max(deadline - loop.time(), 0.0))
        if message is not None:
            heard, pinged = loop.time(), False
            if message["type"] == "message":
                deliver(message["data"])
            elif message["type"] == "subscribe":
                confirmed()
            continue
        if loop.time() < deadline:
            continue  # woke early
        if pinged:
            raise SubscriptionSilent(
                f"no reply from Redis within {REPLY_TIMEOUT:g}s of a ping, after "
                f"{HEALTH_CHECK_INTERVAL:g}s of silence"
            )
        await pubsub.ping()
        pinged = True


def _deliver(manager: Any, raw: bytes | str) -> None:
    from django_eventstream.event import Event

    try:
        item = json.loads(raw)
        event = Event(item["channel"], item["event_type"], item["data"], id=item.get("pub_id"))
    except (ValueError, KeyError, TypeError):
        logger.warning("taskstate: ignored a malformed event on the pub/sub channel")
        return
    manager.add_to_queues(event.channel, event)


def _reset_streams(manager: Any) -> None:
    """Send ``stream-reset`` on every taskstate channel with a stream open here."""
    from django_eventstream.event import Event

    with manager.lock:
        channels = [channel for channel in manager.listeners_by_channel if is_ours(channel)]
    for channel in channels:
        data = json.dumps({"channels": [channel]})
        manager.add_to_queues(channel, Event(channel, RESET, data))
