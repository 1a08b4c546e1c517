"""Two repairs to django-eventstream's delivery in a web process (5.3's internals).

1. A full per-stream queue of a taskstate channel (``CHANNEL_PREFIX``) becomes one
   ``stream-reset`` (the page re-reads the database) instead of silently lost events.
2. A supervised Redis subscription replaces upstream's, which dies for good after an
   outage and hangs on a half-open connection: it pings when silent, subscribes again
   for as long as the process lives, and sends ``stream-reset`` after an outage.

Other channels are delivered as django-eventstream delivers them. docs/reliability.md
tells the faults; docs/upstream/ holds the upstream patches that make this module go.
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
from taskstate.core.threads import Backoff

logger = logging.getLogger("taskstate")

RESET = "stream-reset"
#: django-eventstream's pub/sub channel.
PUBSUB_CHANNEL = "events_channel"
#: Seconds without any traffic on the subscription before it is pinged.
HEALTH_CHECK_INTERVAL = 10.0
#: Seconds after that ping within which something must arrive, or the connection is
#: given up. Also the timeout of connecting and of redis-py's handshake on connect.
REPLY_TIMEOUT = 5.0

_tasks: set[asyncio.Task[None]] = set()


class SubscriptionSilent(ConnectionError):
    """The subscription did not answer a ping: the connection is taken for dead."""


def install() -> None:
    """Patch this process's listener manager (idempotent); only warn when the internals
    it needs are missing."""
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


def _add_to_queues(self: Any, channel: str, event: Any) -> None:
    if not channel.startswith(conf.CHANNEL_PREFIX):
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
                # Stored: upstream's re-read carries the stream past the gap. Without
                # storage it would find nothing and throw away what was queued meanwhile.
                listener.overflow = True
            if items[0].type != RESET:
                items[:] = [Event(channel, RESET, json.dumps({"channels": [channel]}), id=event.id)]
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
        except Exception as error:  # not CancelledError: a BaseException since Python 3.8
            outage.begin(error)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(outage.backoff.next())


class _Outage:
    """Whether the subscription is down, logged once per outage; the pause to wait."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.lost = False
        self.backoff = Backoff()  # between attempts to subscribe

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
        self.backoff.reset()
        if self.lost:
            self.lost = False
            logger.warning("taskstate: event pub/sub is back; open pages resync.")
            _reset_streams(self.manager)


async def _listen(
    pubsub: Any, deliver: Callable[[Any], None], confirmed: Callable[[], None]
) -> None:
    """Read ``pubsub`` until its connection fails or stays silent through a ping; anything
    that arrives (a message, the confirmation, a pong) proves it alive."""
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
        channels = [c for c in manager.listeners_by_channel if c.startswith(conf.CHANNEL_PREFIX)]
    for channel in channels:
        manager.add_to_queues(channel, Event(channel, RESET, json.dumps({"channels": [channel]})))
