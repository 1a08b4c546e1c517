"""Who may read which django-eventstream channel, and what a user's channel is called.

A user's channel is ``CHANNEL_PREFIX + namespace + "-" + pk``. The namespace belongs to
the site: two sites on one Redis (whose pub/sub ignores database numbers) or one Pushpin
use different names for their user 1, so neither ever reads the other's events.

Set ``EVENTSTREAM_CHANNELMANAGER_CLASS = "taskstate.channels.TaskstateChannelManager"``
so that even django-eventstream's own endpoints refuse a taskstate channel to anyone but
its owner. Other channels are left to the default manager's rules.
"""

from __future__ import annotations

from typing import Any

from django.db import connections
from django.utils.crypto import salted_hmac
from django_eventstream.channelmanager import DefaultChannelManager

from taskstate.conf import get_settings

_NAMESPACE_SALT = "taskstate.channels.site_namespace"


def site_namespace() -> str:
    """This site's part of channel names: ``TASKSTATE["CHANNEL_NAMESPACE"]`` when set,
    else 12 hex digits of an HMAC (keyed by ``SECRET_KEY``) of the database name.

    Not guessable without ``SECRET_KEY``, and different between two sites unless they
    share both ``SECRET_KEY`` and the database name.
    """
    conf = get_settings()
    if conf.CHANNEL_NAMESPACE:
        return conf.CHANNEL_NAMESPACE
    try:
        name = connections[conf.DATABASE].settings_dict.get("NAME")
    except Exception:  # an unknown alias: taskstate.checks reports it
        name = None
    return salted_hmac(_NAMESPACE_SALT, str(name or ""), algorithm="sha256").hexdigest()[:12]


def user_channel(user_pk: Any) -> str:
    """The SSE channel of the user whose primary key is ``user_pk``, on this site."""
    return f"{get_settings().CHANNEL_PREFIX}{site_namespace()}-{user_pk}"


def may_read(user: Any, channel: str) -> bool:
    """Whether ``user`` may read ``channel``, as far as taskstate is concerned.

    Any channel under ``CHANNEL_PREFIX`` (this site's or another namespace's) is
    readable only as the user's own channel on this site.
    """
    prefix = get_settings().CHANNEL_PREFIX
    if not channel.startswith(prefix):
        return True
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    if not getattr(user, "is_active", True):
        return False
    return channel == user_channel(user.pk)


class TaskstateChannelManager(DefaultChannelManager):  # type: ignore[misc]
    def can_read_channel(self, user: Any, channel: str) -> bool:
        return may_read(user, channel) and bool(super().can_read_channel(user, channel))
