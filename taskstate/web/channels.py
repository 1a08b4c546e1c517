"""Who may read which django-eventstream channel, and what a user's channel is called.

A user's channel is ``CHANNEL_PREFIX + namespace + "-" + pk``. The namespace belongs to
the site: two sites on one Redis (whose pub/sub ignores database numbers) or one Pushpin
use different names for their user 1, so neither ever reads the other's events.

Set ``EVENTSTREAM_CHANNELMANAGER_CLASS = "taskstate.channels.TaskstateChannelManager"``:
then ``taskstate:events`` is the only door to a taskstate channel. Every stream
django-eventstream serves, through any view (its own ``events`` view, its DRF viewset, a
project's view calling it, a GRIP proxy's refresh), asks this manager whether its user may
read each channel. For a taskstate channel the answer is yes only for the owner's own
channel, and only when ``taskstate:events`` handed the stream over after its checks
(session, per-user cap, GRIP signature and refresh mark: ``taskstate.web.streams``) by
:func:`admit`. Any other door gets django-eventstream's ``forbidden`` stream-error before
``stream-open``. Other channels are left to the default manager's rules.
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
#: Between the namespace and the digest of an object's channel, and of its JSON channel:
#: like ``JSON_MARK``, not the "-" before a user's pk, so no primary key can name them.
_OBJECT_MARK = ".object-"
_OBJECT_JSON_MARK = ".object.json-"
#: Attribute of a user object that ``taskstate:events`` admitted to their channel.
_ADMITTED = "_taskstate_admitted_channel"


def site_namespace() -> str:
    """This site's part of channel names: ``TASKSTATE["CHANNEL_NAMESPACE"]`` when set,
    else 12 hex digits of an HMAC (keyed by ``SECRET_KEY``) of the database name.

    Not guessable without ``SECRET_KEY``, and different between two sites unless they
    share both ``SECRET_KEY`` and the database name.
    """
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


#: What sets a user's JSON channel apart from their HTML one: it follows the namespace,
#: before the "-" and the primary key, so no primary key can name another's channel.
JSON_MARK = ".json"


def json_channel(user_pk: Any) -> str:
    """The SSE channel of the JSON form of the user's tasks (``taskstate:json-events``).

    Beside :func:`user_channel`, under the same prefix and namespace, so every rule of a
    user's channel applies to it; events go on it only while someone may listen.
    """
    return f"{conf.CHANNEL_PREFIX}{site_namespace()}{JSON_MARK}-{user_pk}"


def own_channels(user_pk: Any) -> tuple[str, str]:
    """The channels a user may read: their HTML and their JSON channel."""
    return user_channel(user_pk), json_channel(user_pk)


def object_channel(object_type: str, object_pk: str) -> str:
    """The SSE channel of the tasks about one object (``Task.object_type``, ``object_pk``),
    on this site: under ``CHANNEL_PREFIX`` and the site's namespace, like a user's channel,
    so that only ``taskstate:object-events`` admits anyone to it. Its last part is an HMAC
    (keyed by ``SECRET_KEY``) of the object: any pk makes a valid channel name, and the
    name tells nothing of the object."""
    return object_channels(object_type, object_pk)[0]


def object_json_channel(object_type: str, object_pk: str) -> str:
    """The SSE channel of the JSON form of the tasks about one object
    (``taskstate:json-object-events``): beside :func:`object_channel`, under its rules;
    events go on it only while someone may listen."""
    return object_channels(object_type, object_pk)[1]


def object_channels(object_type: str, object_pk: str) -> tuple[str, str]:
    """The object's channel and its JSON channel (one HMAC for both)."""
    digest = salted_hmac(_OBJECT_SALT, f"{object_type}\n{object_pk}", algorithm="sha256")
    site, mark = f"{conf.CHANNEL_PREFIX}{site_namespace()}", digest.hexdigest()[:32]
    return f"{site}{_OBJECT_MARK}{mark}", f"{site}{_OBJECT_JSON_MARK}{mark}"


def object_token(object_type: str, object_pk: str) -> str:
    """The signed reference to an object that its list's URLs carry (``SECRET_KEY``):
    a URL names no object of the caller's choosing."""
    return signing.Signer(salt=_OBJECT_TOKEN_SALT).sign_object([object_type, object_pk])


def object_of_token(token: str) -> tuple[str, str] | None:
    """The ``(object_type, object_pk)`` of :func:`object_token`; None for a bad signature."""
    try:
        value = signing.Signer(salt=_OBJECT_TOKEN_SALT).unsign_object(token)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(part, str) and part for part in value)
    ):
        return value[0], value[1]
    return None


def may_read(user: Any, channel: str) -> bool:
    """Whether ``user`` may read ``channel``, as far as taskstate is concerned.

    Any channel under ``CHANNEL_PREFIX`` (this site's or another namespace's) is
    readable only as one of the user's own channels on this site, or as an object's
    channel (either form) on this site, which its stream view admits only after the
    policy's check.
    """
    prefix = conf.CHANNEL_PREFIX
    if not channel.startswith(prefix):
        return True
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    if not getattr(user, "is_active", True):
        return False
    site = f"{prefix}{site_namespace()}"
    if channel.startswith((f"{site}{_OBJECT_MARK}", f"{site}{_OBJECT_JSON_MARK}")):
        return True
    return channel in own_channels(user.pk)


def admit(user: Any, channel: str | None = None) -> str:
    """Let django-eventstream serve ``user`` one channel: their own (``channel``: one of
    :func:`own_channels`, by default the HTML one) or an object's channel the policy let
    them see; the channel's name.

    Called by ``taskstate:events`` on the user object of the request it hands to
    django-eventstream, after its own checks. The mark lives on that object, which
    django-eventstream passes to :meth:`TaskstateChannelManager.can_read_channel` for
    each read of the stream; a request through any other door has a user object of its
    own (``request.user``, or the one django-eventstream loads for an ``es-meta``
    token), never marked.
    """
    if channel is None:
        channel = user_channel(user.pk)
    setattr(user, _ADMITTED, channel)
    return channel


def admitted(user: Any, channel: str) -> bool:
    """Whether ``taskstate:events`` admitted ``user`` (this very object) to ``channel``."""
    return user is not None and getattr(user, _ADMITTED, None) == channel


class TaskstateChannelManager(DefaultChannelManager):  # type: ignore[misc]
    def can_read_channel(self, user: Any, channel: str) -> bool:
        if channel.startswith(conf.CHANNEL_PREFIX) and not admitted(user, channel):
            return False
        return may_read(user, channel) and bool(super().can_read_channel(user, channel))
