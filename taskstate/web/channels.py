"""Who may read which django-eventstream channel, and what the channels are called.

Names are ``CHANNEL_PREFIX`` + the site's namespace + a suffix, so two sites on one Redis
or Pushpin never share one. With ``TaskstateChannelManager`` a taskstate channel is served
only to the user object ``taskstate:events`` (or its object form) :func:`admit`-ted after
its checks; any other door gets django-eventstream's ``forbidden`` (docs/deployment.md).
"""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings as django_settings
from django.core import signing
from django.db import connections
from django.utils.crypto import salted_hmac
from django_eventstream.channelmanager import DefaultChannelManager

from taskstate.core import conf
from taskstate.core.conf import get_settings

_NAMESPACE_SALT = "taskstate.channels.site_namespace"
_OBJECT_SALT = "taskstate.channels.object_channel"
_OBJECT_TOKEN_SALT = "taskstate.channels.object_token"
#: After the namespace, not the "-" before a user's pk, so no primary key names them.
_OBJECT_MARK = ".object-"
_OBJECT_JSON_MARK = ".object.json-"
_ADMITTED = "_taskstate_admitted_channel"


def site_namespace() -> str:
    """``TASKSTATE["CHANNEL_NAMESPACE"]``, else 12 hex digits of an HMAC (keyed by
    ``SECRET_KEY``) of the database name: not guessable, and one per site."""
    settings = get_settings()
    if settings.CHANNEL_NAMESPACE:
        return settings.CHANNEL_NAMESPACE
    try:
        name = connections[settings.DATABASE].settings_dict.get("NAME")
    except Exception:  # an unknown alias: taskstate.checks reports it
        name = None
    return _hashed_namespace(django_settings.SECRET_KEY, str(name or ""))


@functools.lru_cache(maxsize=16)
def _hashed_namespace(secret_key: str, name: str) -> str:
    # Once per key and database name, not once per event (an HMAC each time).
    digest = salted_hmac(_NAMESPACE_SALT, name, secret=secret_key, algorithm="sha256")
    return digest.hexdigest()[:12]


def user_channel(user_pk: Any) -> str:
    """The SSE channel of the user whose primary key is ``user_pk``, on this site."""
    return f"{conf.CHANNEL_PREFIX}{site_namespace()}-{user_pk}"


def json_channel(user_pk: Any) -> str:
    # ".json" after the namespace, before the "-" and pk: no primary key names another's.
    return f"{conf.CHANNEL_PREFIX}{site_namespace()}.json-{user_pk}"


def own_channels(user_pk: Any) -> tuple[str, str]:
    return user_channel(user_pk), json_channel(user_pk)


def object_channels(object_type: str, object_pk: str) -> tuple[str, str]:
    """The object's channel and its JSON channel: an HMAC of the object (any pk makes a
    valid name, and the name tells nothing of the object)."""
    digest = salted_hmac(_OBJECT_SALT, f"{object_type}\n{object_pk}", algorithm="sha256")
    site, mark = f"{conf.CHANNEL_PREFIX}{site_namespace()}", digest.hexdigest()[:32]
    return f"{site}{_OBJECT_MARK}{mark}", f"{site}{_OBJECT_JSON_MARK}{mark}"


def object_token(object_type: str, object_pk: str) -> str:
    """The signed reference to an object in its list's URLs: no URL names an object of
    the caller's choosing."""
    return signing.Signer(salt=_OBJECT_TOKEN_SALT).sign_object([object_type, object_pk])


def object_of_token(token: str) -> tuple[str, str] | None:
    """The ``(object_type, object_pk)`` of :func:`object_token`; None for a bad signature."""
    try:
        value = signing.Signer(salt=_OBJECT_TOKEN_SALT).unsign_object(token)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(p, str) and p for p in value):
        return value[0], value[1]
    return None


def may_read(user: Any, channel: str) -> bool:
    """Whether ``user`` may read ``channel``: under ``CHANNEL_PREFIX`` only their own
    channels on this site, or an object's (its view admits only after the policy's check)."""
    prefix = conf.CHANNEL_PREFIX
    if not channel.startswith(prefix):
        return True
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", True):
        return False
    site = f"{prefix}{site_namespace()}"
    if channel.startswith((f"{site}{_OBJECT_MARK}", f"{site}{_OBJECT_JSON_MARK}")):
        return True
    return channel in own_channels(user.pk)


def admit(user: Any, channel: str | None = None) -> str:
    """Let django-eventstream serve ``user`` one channel (by default their HTML one); the
    channel's name. The mark lives on this very user object, which django-eventstream
    passes to ``can_read_channel``: any other door's request has a user object of its own
    (``request.user``, or one loaded from an ``es-meta`` token), never marked."""
    if channel is None:
        channel = user_channel(user.pk)
    setattr(user, _ADMITTED, channel)
    return channel


class TaskstateChannelManager(DefaultChannelManager):  # type: ignore[misc]
    def can_read_channel(self, user: Any, channel: str) -> bool:
        if channel.startswith(conf.CHANNEL_PREFIX) and getattr(user, _ADMITTED, None) != channel:
            return False
        return may_read(user, channel) and bool(super().can_read_channel(user, channel))
