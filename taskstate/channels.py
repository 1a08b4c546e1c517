"""Who may read which django-eventstream channel.

Set ``EVENTSTREAM_CHANNELMANAGER_CLASS = "taskstate.channels.TaskstateChannelManager"``
so that even django-eventstream's own endpoints refuse a taskstate channel to anyone but
its owner. Other channels are left to the default manager's rules.
"""

from __future__ import annotations

from typing import Any

from django_eventstream.channelmanager import DefaultChannelManager

from taskstate.conf import get_settings


def user_channel(user_pk: Any) -> str:
    """The SSE channel of the user whose primary key is ``user_pk``."""
    return f"{get_settings().CHANNEL_PREFIX}{user_pk}"


def may_read(user: Any, channel: str) -> bool:
    """Whether ``user`` may read ``channel``, as far as taskstate is concerned."""
    prefix = get_settings().CHANNEL_PREFIX
    if not channel.startswith(prefix):
        return True
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    return channel == user_channel(user.pk)


class TaskstateChannelManager(DefaultChannelManager):  # type: ignore[misc]
    def can_read_channel(self, user: Any, channel: str) -> bool:
        return may_read(user, channel) and bool(super().can_read_channel(user, channel))
