"""Every door to a taskstate channel applies the same rules, against uvicorn and Redis.

Besides ``taskstate:events`` a project may mount django-eventstream's own views
(``include(django_eventstream.urls)``, or ``django_eventstream.views.events`` with a
channel from the URL); ``tests/urls.py`` mounts both. Through them a user's taskstate
channel is refused: logout, a password change or deactivation cannot leave a stream of
theirs delivering, the per-user cap cannot be passed by switching doors, and a
django-eventstream token (``es-meta``) without the proxy's signature opens nothing.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import jwt
import pytest
from django.conf import settings
from django.test import Client

from taskstate.core import conf
from taskstate.core.conf import get_settings
from taskstate.web.channels import user_channel
from tests.integration.test_stream_lifetime import EVENTS, ended_by_server, opened, still_delivers
from tests.testapp import tasks as actors


@pytest.fixture(params=["query", "path"])
def their_door(request):
    """The URL of django-eventstream's own view for a channel, as mounted in tests/urls.py."""

    def url(base: str, channel: str, query: str = "") -> str:
        if request.param == "query":
            return f"{base}/eventstream/?channel={quote(channel)}{query and '&' + query}"
        return f"{base}/eventstream-channel/{quote(channel)}/{query and '?' + query}"

    return url


def refused(stream) -> None:
    """The stream never opened: django-eventstream's refusal (a ``forbidden``
    stream-error, then the end), before any event."""
    first = stream.wait_for(lambda f: f.event in ("stream-open", "stream-error"), timeout=15)
    assert first.event == "stream-error", f"the stream opened: {stream.frames!r}"
    assert '"forbidden"' in first.data
    assert stream.wait_ended(15), "the server kept the connection open"
    assert not [f for f in stream.frames if f.event == ""], "events reached a refused stream"


def ended(stream) -> None:
    """The stream got a ``forbidden`` stream-error and the server ended it, within the
    bound of ``taskstate:events`` (a session check, ``conf.STREAM_CHECK_INTERVAL``, and margin).
    On this door that happens before ``stream-open``: it never holds the channel."""
    bound = conf.STREAM_CHECK_INTERVAL + 5
    error = stream.wait_for(lambda f: f.event == "stream-error", timeout=bound)
    assert '"forbidden"' in error.data
    assert stream.wait_ended(bound), "the server kept the connection open"


def test_logout_ends_a_stream_on_their_door(server, worker_process, streams, user, their_door):
    _, base = server
    theirs = streams(their_door(base, user_channel(user.pk)), user)
    other_tab = opened(streams, base, user)  # another session, on our door
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = theirs.cookies["sessionid"]
    assert client.post("/accounts/logout/").status_code in (200, 302)
    still_delivers(other_tab, user, "after the logout")
    ended(theirs)
    assert not any("after the logout" in f.data for f in theirs.frames)


def test_a_password_change_ends_a_stream_on_their_door(
    server, worker_process, streams, user, their_door
):
    _, base = server
    theirs = streams(their_door(base, user_channel(user.pk)), user)
    ours = opened(streams, base, user)
    since = time.monotonic()
    user.set_password("a new password")  # update_session_auth_hash is not called
    user.save()
    ended_by_server(ours, since, "password change, our door")
    ended(theirs)


def test_deactivation_ends_a_stream_on_their_door(
    server, worker_process, streams, user, other_user, their_door
):
    _, base = server
    theirs = streams(their_door(base, user_channel(user.pk)), user)
    bystander = opened(streams, base, other_user)
    user.is_active = False
    user.save()
    ended(theirs)
    still_delivers(bystander, other_user, "bystander row")
    assert not any("bystander row" in f.data for f in theirs.frames)


def test_their_door_opens_no_stream_past_the_users_cap(
    server, worker_process, streams, user, their_door
):
    _, base = server
    cap = get_settings().STREAMS_PER_USER
    kept = [opened(streams, base, user) for _ in range(cap)]
    for _ in range(3):
        refused(streams(their_door(base, user_channel(user.pk)), user))
    assert streams(f"{base}{EVENTS}", user).status == 429
    still_delivers(kept[-1], user, "row under the cap")


def test_an_unsigned_es_meta_on_their_door_opens_nothing(
    server, worker_process, streams, user, their_door
):
    """A django-eventstream token naming the user and their channel (as in a next link
    the GRIP proxy was given), asked for by someone without the user's session and
    without the proxy's signature."""
    _, base = server
    claims = {
        "iss": "es",
        "exp": int(time.time()) + 3600,
        "channels": [user_channel(user.pk)],
        "user": str(user.pk),
    }
    token = jwt.encode(claims, settings.SECRET_KEY.encode())
    leaked = streams(their_door(base, "any", f"es-meta={token}"))
    ours = opened(streams, base, user)
    actors.noop.send(for_state={"user_pk": user.pk, "description": "private row"})
    ours.wait_for(lambda f: "private row" in f.data and 'data-status="done"' in f.data)
    refused(leaked)
    assert not any("private row" in f.data for f in leaked.frames)
    assert streams(f"{base}{EVENTS}?es-meta={token}").status == 400
