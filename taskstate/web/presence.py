"""Whether a change on a channel can reach a stream, so rows are rendered only for someone.

In the embedded setup django-eventstream's listener manager holds every stream that could
receive an event. A stream registers its listener before its ``stream-open``, on which the
page reads the database, so a change is in that read or finds the listener. With Redis or
a GRIP proxy other processes may hold streams: every row is rendered (performance.md).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

_held: Counter[str] = Counter()
_held_lock = threading.Lock()


def listened(channel: str) -> bool:
    from django.apps import apps
    from django.conf import settings

    if (
        # As django-eventstream decides: even ``{}`` means Redis (its defaults).
        hasattr(settings, "EVENTSTREAM_REDIS")
        or bool(getattr(settings, "GRIP_URL", None) or getattr(settings, "GRIP_PROXIES", None))
        # Without django-eventstream's streams, something else delivers the channels.
        or not apps.is_installed("django_eventstream")
        or _held.get(channel, 0) > 0
    ):
        return True
    from django_eventstream.views import get_listener_manager

    return bool(get_listener_manager().listeners_by_channel.get(channel))


def hold(channels: Iterable[str]) -> None:
    """Count ``channels`` as listened here until :func:`release` (for a consumer that is
    not a django-eventstream stream, e.g. ``taskstate.testing.record_events``)."""
    with _held_lock:
        _held.update(channels)


def release(channels: Iterable[str]) -> None:
    with _held_lock:
        _held.subtract(channels)
        for channel in [c for c, n in _held.items() if n <= 0]:
            del _held[channel]
