"""Whether a change on a channel can reach a stream, so rows are rendered only for someone.

Rendering a row is most of the background sender's work for a change. When events stay
in this process (no ``EVENTSTREAM_REDIS``, no GRIP proxy: the embedded setup),
django-eventstream's listener manager holds every stream that could receive them, so a
channel with no listener there has nobody to send to and its rows are not rendered. A
stream registers its listener before it reads its first events and sends
``stream-open``, on which the page reads its rows from the database: a change committed
before that read is in it, a change committed after it finds the listener.

With ``EVENTSTREAM_REDIS`` or a GRIP proxy the streams may be held by other processes,
which this one does not see: every row is rendered and sent. (Tracking them across
processes saves about 0.3 % of a core at 1,000 tasks a minute, see
docs/explanation/performance.md: not worth a protocol.)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

_held: Counter[str] = Counter()
_held_lock = threading.Lock()


def _delivered_elsewhere() -> bool:
    """Whether events may reach streams this process does not hold."""
    from django.apps import apps
    from django.conf import settings

    return (
        # As django-eventstream decides: even ``{}`` means Redis (its defaults).
        hasattr(settings, "EVENTSTREAM_REDIS")
        or bool(getattr(settings, "GRIP_URL", None) or getattr(settings, "GRIP_PROXIES", None))
        # Without django-eventstream's streams, something else delivers the channels.
        or not apps.is_installed("django_eventstream")
    )


def listened(channel: str) -> bool:
    """Whether a change on ``channel`` may reach anyone now (see the module's text)."""
    if _delivered_elsewhere() or _held.get(channel, 0) > 0:
        return True
    from django_eventstream.views import get_listener_manager

    return bool(get_listener_manager().listeners_by_channel.get(channel))


def hold(channels: Iterable[str]) -> None:
    """Count ``channels`` as listened here until :func:`release` (for a consumer of
    taskstate channels that is not a django-eventstream stream, e.g.
    ``taskstate.testing.record_events``)."""
    with _held_lock:
        _held.update(channels)


def release(channels: Iterable[str]) -> None:
    with _held_lock:
        _held.subtract(channels)
        for channel in [c for c, n in _held.items() if n <= 0]:
            del _held[channel]
