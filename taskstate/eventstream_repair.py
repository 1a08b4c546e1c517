"""Two repairs to django-eventstream's delivery inside a web process (5.3's internals).

1. A full per-stream queue drops events silently. django-eventstream queues at most
   ``MAX_PENDING`` (10) events per open stream between two turns of the stream's loop
   and, without event storage, tells nobody. Here a full queue is replaced by one
   ``stream-reset`` event, on which the task list re-reads its rows from the database.
2. The Redis subscription dies for good. django-eventstream starts one task per process
   that subscribes to Redis; when Redis stays away longer than redis-py's own retries (a
   few seconds) the task ends and is never started again, so the process keeps its
   streams open and delivers nothing more. Here a supervised subscription subscribes
   again, with a growing pause, for as long as the process lives, logs once per outage,
   and after an outage sends ``stream-reset`` on every open stream.

:func:`install` is called from ``TaskstateConfig.ready``. Both depend on
django-eventstream's ListenerManager internals; when they are missing a warning says so
and nothing is changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import types
from typing import Any

logger = logging.getLogger("taskstate")

RESET = "stream-reset"
#: django-eventstream's pub/sub channel.
PUBSUB_CHANNEL = "events_channel"
FIRST_PAUSE = 0.5
MAX_PAUSE = 5.0

_tasks: set[asyncio.Task[None]] = set()


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
    manager.add_to_queues = types.MethodType(_add_to_queues, manager)
    manager.start_redis_listener = lambda: supervise(manager)
    manager._taskstate_installed = True


def _add_to_queues(self: Any, channel: str, event: Any) -> None:
    from django_eventstream import views
    from django_eventstream.event import Event

    with self.lock:
        wake = []
        for listener in self.listeners_by_channel.get(channel, ()):
            items = listener.channel_items.setdefault(channel, [])
            if len(items) < views.MAX_PENDING:
                items.append(event)
            elif items[0].type != RESET:
                items[:] = [Event(channel, RESET, json.dumps({"channels": [channel]}))]
            else:
                continue  # a reset is already queued: it covers this event too
            wake.append(listener)
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
    pause = FIRST_PAUSE
    lost = False
    while True:
        # No silent retries inside redis-py: every broken connection comes here, so that
        # the pages hear about the events that may have been lost.
        options: dict[str, Any] = {**settings.EVENTSTREAM_REDIS, "retry": Retry(NoBackoff(), 0)}
        client = Redis(**options)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(PUBSUB_CHANNEL)
            if lost:
                logger.warning("taskstate: event pub/sub is back; open pages resync.")
                _reset_streams(manager)
                lost = False
            pause = FIRST_PAUSE
            async for message in pubsub.listen():
                if message["type"] == "message":
                    _deliver(manager, message["data"])
        except asyncio.CancelledError:
            raise
        except Exception:
            if not lost:
                logger.error(
                    "taskstate: lost the event pub/sub; subscribing again until Redis "
                    "answers. Pages resync once it is back.",
                    exc_info=True,
                )
            lost = True
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE)


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
    from django_eventstream.event import Event

    with manager.lock:
        channels = list(manager.listeners_by_channel)
    for channel in channels:
        data = json.dumps({"channels": [channel]})
        manager.add_to_queues(channel, Event(channel, "stream-reset", data))
