"""Security II: what the events view takes from a request, and from whom.

``es-meta`` (django-eventstream's signed token naming a user and channels) and
``recover`` are GRIP refresh parameters: only a request carrying the proxy's verified
signature may use them, and even then the session the stream was opened with must
still be valid. Hostile query strings get a 400, never a 500.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client

from taskstate.core import conf
from taskstate.web.channels import user_channel
from tests.support.drain import stop_checks
from tests.support.pushpin import grip_last

pytestmark = pytest.mark.django_db

EVENTS = "/taskstate/events/"
GRIP_KEY = "grip-test-key-long-enough-for-hs256-signatures"
GRIP_ISS = "pushpin"


def es_meta(user, channels=None, exp=None) -> str:
    claim = {
        "iss": "es",
        "exp": exp or int(time.time()) + 3600,
        "channels": channels or [user_channel(user.pk)],
        "user": str(user.pk),
    }
    return jwt.encode(claim, django_settings.SECRET_KEY.encode())


def grip_sig() -> str:
    return jwt.encode({"iss": GRIP_ISS, "exp": int(time.time()) + 300}, GRIP_KEY)


@pytest.fixture
def grip(settings):
    """GripMiddleware in front, trusting only requests signed with GRIP_KEY."""
    settings.GRIP_URL = f"http://127.0.0.1:9/?key={GRIP_KEY}&verify-iss={GRIP_ISS}"
    settings.MIDDLEWARE = ["django_grip.GripMiddleware", *settings.MIDDLEWARE]


def logged_in(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    "query",
    [
        "recover=true",
        "es-meta=garbage",
        "link=next&recover=true&es-meta=garbage",
        "es-meta=a.b.c",
    ],
)
def test_hostile_grip_parameters_without_gripmiddleware_get_400(user, query):
    response = logged_in(user).get(f"{EVENTS}?{query}")
    assert response.status_code == 400


@pytest.mark.parametrize("query", ["recover=true", "es-meta=garbage", "es-meta="])
def test_hostile_grip_parameters_without_a_signature_get_400(grip, user, query):
    response = logged_in(user).get(f"{EVENTS}?{query}")
    assert response.status_code == 400


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        jwt.encode({"iss": "es"}, "not-the-secret-key-but-long-enough-for-hs256"),
        jwt.encode({"iss": "es", "exp": "soon"}, django_settings.SECRET_KEY.encode()),
        jwt.encode({"iss": "es", "exp": 1}, django_settings.SECRET_KEY.encode()),
        jwt.encode(
            {"iss": "es", "exp": int(time.time()) + 60, "user": "x", "channels": "y"},
            django_settings.SECRET_KEY.encode(),
        ),
        jwt.encode(
            {"iss": "es", "exp": int(time.time()) + 60, "user": "999999", "channels": ["a"]},
            django_settings.SECRET_KEY.encode(),
        ),
    ],
)
def test_signed_refresh_with_a_bad_es_meta_gets_400(grip, token):
    client = Client(raise_request_exception=False)
    response = client.get(
        f"{EVENTS}?link=next&recover=true&es-meta={token}", HTTP_GRIP_SIG=grip_sig()
    )
    assert response.status_code == 400


def test_someone_elses_leaked_link_opens_nothing_for_a_logged_in_user(grip, user, other_user):
    """Alice, with her own session and no Grip-Sig, requests Bob's link: a bad request."""
    link = f"{EVENTS}?link=next&recover=true&es-meta={es_meta(other_user)}"
    response = logged_in(user).get(link)
    assert response.status_code == 400
    assert not getattr(response, "streaming", False)


@dataclass
class Hold:
    """A GRIP hold as Pushpin keeps it: its next link and the Grip-Last it refreshes
    with (tests.support.pushpin.grip_last)."""

    link: str
    last: str

    @classmethod
    def of(cls, response) -> Hold:
        assert response.status_code == 200 and response["Grip-Hold"] == "stream"
        link = response["Grip-Link"].split(">")[0].lstrip("<")
        assert "es-meta=" in link
        return cls(link, grip_last(response["Grip-Channel"]))

    def with_link(self, link: str) -> Hold:
        return Hold(link, self.last)


def with_es_meta(hold: Hold, token: str) -> Hold:
    """``hold`` with its next link's ``es-meta`` replaced (a token signed with the
    site's key, as only the site could make)."""
    parts = urlsplit(hold.link)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    params["es-meta"] = token
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return hold.with_link(f"{parts.path}?{query}")


def open_through_grip(user) -> Hold:
    """Open a stream as Pushpin does (cookies and signature); the hold it gets."""
    return Hold.of(logged_in(user).get(EVENTS, HTTP_GRIP_SIG=grip_sig()))


def refresh(hold: Hold):
    """Pushpin's refresh of ``hold``: signed, its Grip-Last, no cookies."""
    return Client(raise_request_exception=False).get(
        hold.link, HTTP_GRIP_SIG=grip_sig(), HTTP_GRIP_LAST=hold.last
    )


def forwarded(link: str, user=None):
    """A client's request for ``link`` as Pushpin forwards it: signed (Pushpin signs
    every request), no Grip-Last (Pushpin strips a client's)."""
    client = logged_in(user) if user else Client(raise_request_exception=False)
    return client.get(link, HTTP_GRIP_SIG=grip_sig())


def test_the_next_link_names_no_session_key(grip, user):
    client = logged_in(user)
    response = client.get(EVENTS, HTTP_GRIP_SIG=grip_sig())
    link = response["Grip-Link"]
    assert client.cookies["sessionid"].value not in link


def test_signed_refresh_of_a_live_session_is_held(grip, user):
    response = refresh(open_through_grip(user))
    assert response.status_code == 200 and response["Grip-Hold"] == "stream"
    assert f"events-{user_channel(user.pk)}" in response["Grip-Channel"]


def test_a_next_link_forwarded_by_pushpin_for_a_client_opens_nothing(grip, user, other_user):
    """Pushpin signs every request it forwards: a leaked next link asked for through it,
    anonymously or with another user's session, is not Pushpin's own refresh (it has no
    Grip-Last: Pushpin sets that only on its refreshes and strips a client's)."""
    hold = open_through_grip(user)
    for response in (forwarded(hold.link), forwarded(hold.link, other_user)):
        assert response.status_code == 400
        assert "Grip-Hold" not in response and not getattr(response, "streaming", False)
    # A Grip-Last of another stream does not do either.
    other = open_through_grip(other_user)
    assert refresh(Hold(hold.link, other.last)).status_code == 400
    # The owner's stream is still refreshed.
    assert refresh(hold).status_code == 200


def test_each_refresh_consumes_its_stream_reference(grip, user):
    """A next link works once: the refresh answers with a new reference, the old one is
    gone, so a link seen in a log is dead by the time it was logged."""
    hold = open_through_grip(user)
    response = refresh(hold)
    assert response.status_code == 200
    following = Hold.of(response)
    old_ref = parse_qs(urlsplit(hold.link).query)["ts-stream"][0]
    new_ref = parse_qs(urlsplit(following.link).query)["ts-stream"][0]
    assert new_ref != old_ref
    assert refresh(hold).status_code == 403
    again = refresh(following)
    assert again.status_code == 200
    assert refresh(Hold.of(again)).status_code == 200


def test_signed_refresh_without_the_stream_reference_is_refused(grip, user):
    hold = open_through_grip(user)
    parts = urlsplit(hold.link)
    query = {k: v[0] for k, v in parse_qs(parts.query).items() if k == "es-meta" or k == "link"}
    response = refresh(
        hold.with_link(f"{parts.path}?link=next&recover=true&es-meta={query['es-meta']}")
    )
    assert response.status_code == 400
    assert "Grip-Hold" not in response


def test_signed_refresh_after_deactivation_is_refused(grip, user):
    """Pushpin's signed refresh after the user is deactivated gets no fresh token."""
    hold = open_through_grip(user)
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    response = refresh(hold)
    assert response.status_code == 403
    assert "Grip-Hold" not in response


def test_signed_refresh_after_logout_is_refused(grip, user):
    client = logged_in(user)
    hold = Hold.of(client.get(EVENTS, HTTP_GRIP_SIG=grip_sig()))
    client.post("/logout/")
    client.logout()
    assert refresh(hold).status_code == 403


def test_signed_refresh_after_a_password_change_is_refused(grip, user):
    hold = open_through_grip(user)
    user.set_password("new password")
    user.save()
    assert refresh(hold).status_code == 403


def test_signed_refresh_for_a_token_of_another_users_stream_reference_is_refused(
    grip, user, other_user
):
    """The stream reference of Alice's stream with a token naming Bob: refused (its
    Grip-Last is Alice's stream's)."""
    hold = open_through_grip(user)
    assert refresh(with_es_meta(hold, es_meta(other_user))).status_code == 400


def test_access_log_lines_of_a_refresh_carry_no_token():
    """uvicorn's access record: (client, method, path with query, http version, status)."""
    import logging

    token = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyIjoiMSJ9.c2lnbmF0dXJl"
    path = f"{EVENTS}?link=next&recover=true&es-meta={token}&ts-stream=abc123secret"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200),
        None,
    )
    for f in logging.getLogger("uvicorn.access").filters:
        f.filter(record)
    line = record.getMessage()
    assert token not in line and "abc123secret" not in line
    assert "link=next&recover=true&es-meta=[redacted]&ts-stream=[redacted]" in line


@pytest.fixture
def cookie_sessions(settings):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"


def test_with_cookie_sessions_a_refresh_checks_that_the_user_is_active(grip, cookie_sessions, user):
    hold = open_through_grip(user)
    assert "ts-stream=" not in hold.link
    response = refresh(hold)
    assert response.status_code == 200
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    assert refresh(Hold.of(response)).status_code == 403


def session_of(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def test_the_session_check_finds_each_ended_session_in_two_queries(
    django_user_model, django_assert_max_num_queries
):
    from django.contrib.sessions.backends.db import SessionStore

    from taskstate.web.streams import _ended_sessions

    users = [django_user_model.objects.create_user(f"u{n}", password="pw") for n in range(40)]
    live = {(u.pk, session_of(u)) for u in users[:30]}
    logged_out = (users[30].pk, session_of(users[30]))
    SessionStore(logged_out[1]).delete()
    password = (users[31].pk, session_of(users[31]))
    users[31].set_password("changed")
    users[31].save()
    inactive = (users[32].pk, session_of(users[32]))
    django_user_model.objects.filter(pk=users[32].pk).update(is_active=False)
    expired = (users[33].pk, session_of(users[33]))
    store = SessionStore(expired[1])
    store.set_expiry(-1)
    store.save()
    borrowed = (users[34].pk, session_of(users[35]))  # someone else's session
    ended = {logged_out, password, inactive, expired, borrowed}
    with django_assert_max_num_queries(2):
        assert _ended_sessions(live | ended) == ended


@pytest.mark.django_db(transaction=True)
def test_the_session_check_keeps_its_database_connection_between_runs(django_user_model):
    """Each check (every STREAM_CHECK_INTERVAL, per web process with an open stream)
    closed its connection and the next one opened a new one. Now one connection, in the
    check's own thread, kept until it fails; a failed one is replaced at once."""
    import threading

    from django.db import connections
    from django.db.backends.signals import connection_created

    from taskstate.web.streams import Registry

    alice = django_user_model.objects.create_user("alice2", password="pw")
    live = (alice.pk, session_of(alice))
    opened: list[str] = []

    def count(sender, connection, **kwargs):
        opened.append(threading.current_thread().name)

    registry = Registry()
    connection_created.connect(count)
    try:
        for _ in range(3):
            assert registry.check({live}).result(timeout=30) == set()
        assert len(opened) == 1 and opened[0].startswith("taskstate-stream-check")
        # The kept connection dies (server restart, idle timeout): the next check still
        # answers, through a new connection.
        registry._check_executor().submit(lambda: connections["default"].connection.close())
        assert registry.check({live}).result(timeout=30) == set()
        assert len(opened) == 2
    finally:
        connection_created.disconnect(count)
        stop_checks(registry)


# Session engines that keep no database table: the stream reference and the session check
# go through the engine's SessionStore (one load per key) instead of one query.
@pytest.fixture(params=["cache", "file"])
def store_sessions(request, settings, tmp_path):
    settings.SESSION_ENGINE = f"django.contrib.sessions.backends.{request.param}"
    settings.SESSION_FILE_PATH = str(tmp_path)
    return request.param


def test_with_cache_or_file_sessions_a_refresh_works_once_and_ends_with_the_session(
    grip, store_sessions, user
):
    client = logged_in(user)
    hold = Hold.of(client.get(EVENTS, HTTP_GRIP_SIG=grip_sig()))
    response = refresh(hold)
    assert response.status_code == 200
    assert refresh(hold).status_code == 403  # its reference was used up
    following = Hold.of(response)
    client.logout()
    assert refresh(following).status_code == 403


def test_with_cache_or_file_sessions_the_check_finds_the_ended_ones(
    store_sessions, django_user_model
):
    from importlib import import_module

    from taskstate.web.streams import _ended_sessions

    store = import_module(django_settings.SESSION_ENGINE).SessionStore
    users = [django_user_model.objects.create_user(f"s{n}", password="pw") for n in range(4)]
    live = {(u.pk, session_of(u)) for u in users[:2]}
    logged_out = (users[2].pk, session_of(users[2]))
    store(logged_out[1]).delete()
    inactive = (users[3].pk, session_of(users[3]))
    django_user_model.objects.filter(pk=users[3].pk).update(is_active=False)
    assert _ended_sessions(live | {logged_out, inactive}) == {logged_out, inactive}


@pytest.mark.django_db(transaction=True)
def test_a_session_check_the_database_fails_is_logged_once_and_streams_end_once_it_works(
    monkeypatch, django_user_model, caplog
):
    """While the sessions cannot be read the streams stay open (one error line, not one
    per check); once they can, the check picks up where it was and ends what ended."""
    import asyncio
    import logging

    from django.contrib.sessions.backends.db import SessionStore
    from django.db import connection

    from taskstate.web.streams import Registry

    monkeypatch.setattr(conf, "STREAM_CHECK_INTERVAL", 0.05)
    carol = django_user_model.objects.create_user("carol", password="pw")
    session_key = session_of(carol)
    registry = Registry()
    stream = registry.admit(carol.pk, session_key)
    assert stream is not None

    def rename(old: str, new: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"ALTER TABLE {connection.ops.quote_name(old)} "
                f"RENAME TO {connection.ops.quote_name(new)}"
            )

    def errors() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "cannot check the sessions" in r.getMessage()]

    async def until(condition: Any, what: str) -> None:
        for _ in range(600):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what} did not happen within 30 s")

    async def scenario() -> None:
        registry.watch()
        await until(lambda: errors(), "the failing check's error line")
        await asyncio.sleep(0.3)  # several more checks fail meanwhile
        assert stream.reason is None  # not closed for want of an answer
        await asyncio.to_thread(rename, "django_session_away", "django_session")
        await asyncio.to_thread(SessionStore(session_key).delete)
        await until(lambda: stream.reason is not None, "the ended session's stream closing")

    rename("django_session", "django_session_away")
    try:
        with caplog.at_level(logging.INFO, logger="taskstate"):
            asyncio.run(scenario())
    finally:
        stop_checks(registry)
        tables = connection.introspection.table_names()
        if "django_session_away" in tables:
            rename("django_session_away", "django_session")
    assert len(errors()) == 1
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert stream.reason == "The session of this stream has ended."


# --- django-eventstream's own views (tests/urls.py mounts them) -------------------------

THEIR_DOOR = "/eventstream/"


def test_their_door_gives_the_proxy_no_hold_on_a_taskstate_channel(grip, user):
    """Pushpin forwarding the owner's own request (session and signature) to
    django-eventstream's view: no hold, so no next link that skips our checks."""
    response = logged_in(user).get(
        f"{THEIR_DOOR}?channel={user_channel(user.pk)}", HTTP_GRIP_SIG=grip_sig()
    )
    assert "Grip-Hold" not in response
    assert b"event: stream-error" in response.content and b"forbidden" in response.content


def test_a_refresh_of_our_hold_through_their_door_is_refused(grip, user):
    """Our hold's next link (token, stream reference, Grip-Last) sent to their view."""
    hold = open_through_grip(user)
    parts = urlsplit(hold.link)
    response = refresh(hold.with_link(f"{THEIR_DOOR}?{parts.query}"))
    assert "Grip-Hold" not in response
    assert b"forbidden" in response.content
    # The hold itself is still refreshed through our door.
    assert refresh(hold).status_code == 200


def test_their_door_still_serves_a_project_channel(grip, user):
    response = logged_in(user).get(f"{THEIR_DOOR}?channel=project-news", HTTP_GRIP_SIG=grip_sig())
    assert response["Grip-Hold"] == "stream"


JSON_EVENTS = "/taskstate/json/events/"


def test_the_json_stream_is_held_and_refreshed_on_the_json_channel_only(grip, user):
    from taskstate.web.channels import json_channel

    opened = logged_in(user).get(JSON_EVENTS, HTTP_GRIP_SIG=grip_sig())
    hold = Hold.of(opened)
    assert hold.link.startswith(JSON_EVENTS)
    for response in (opened, refresh(hold)):
        assert response.status_code == 200 and response["Grip-Hold"] == "stream"
        assert f"events-{json_channel(user.pk)}" in response["Grip-Channel"]
        assert f"events-{user_channel(user.pk)}" not in response["Grip-Channel"]


def test_a_json_link_naming_another_users_channel_is_refused(grip, user, other_user):
    from taskstate.web.channels import json_channel

    hold = Hold.of(logged_in(user).get(JSON_EVENTS, HTTP_GRIP_SIG=grip_sig()))
    forged = with_es_meta(hold, es_meta(user, channels=[json_channel(other_user.pk)]))
    assert refresh(forged).status_code == 400


# --- the stream of an object's tasks (taskstate:object-events) --------------------------


@pytest.fixture
def team():
    from django.contrib.auth.models import Group

    return Group.objects.create(name="Team Orion")


def object_events_url(team) -> str:
    from taskstate.web.channels import object_token

    return f"/taskstate/object/{object_token('auth.group', str(team.pk))}/events/"


def team_channel(team) -> str:
    from taskstate.web.channels import object_channels

    return object_channels("auth.group", str(team.pk))[0]


def set_view_permission(user, granted: bool) -> None:
    from django.contrib.auth.models import Permission

    permission = Permission.objects.get(codename="view_group")
    if granted:
        user.user_permissions.add(permission)
    else:
        user.user_permissions.remove(permission)


def test_an_objects_stream_through_grip_is_held_on_its_channel_for_viewers_only(
    grip, user, other_user, team
):
    from taskstate.web.streams import grip_session_channel, grip_user_channel

    set_view_permission(user, True)
    url = object_events_url(team)
    client = logged_in(user)
    opened = client.get(url, HTTP_GRIP_SIG=grip_sig())
    hold = Hold.of(opened)
    assert hold.link.startswith(url)
    channels = opened["Grip-Channel"]
    assert f"events-{team_channel(team)}" in channels
    assert f"events-{user_channel(user.pk)}" not in channels
    # Closed with its session (logout) and its user (deactivation), as a user's stream.
    session_key = client.cookies["sessionid"].value
    assert grip_session_channel(session_key) in channels
    assert grip_user_channel(user.pk) in channels
    for refused in (logged_in(other_user), Client(raise_request_exception=False)):
        response = refused.get(url, HTTP_GRIP_SIG=grip_sig())
        assert response.status_code == 403 and "Grip-Hold" not in response


def test_an_objects_stream_is_refreshed_until_its_viewer_loses_the_permission(grip, user, team):
    set_view_permission(user, True)
    from django.contrib.sessions.models import Session

    hold = Hold.of(logged_in(user).get(object_events_url(team), HTTP_GRIP_SIG=grip_sig()))
    records = Session.objects.count()
    refreshed = refresh(hold)
    assert refreshed.status_code == 200 and refreshed["Grip-Hold"] == "stream"
    # One stream reference used up, one new in the next link.
    assert Session.objects.count() == records
    assert f"events-{team_channel(team)}" in refreshed["Grip-Channel"]
    set_view_permission(user, False)
    response = refresh(Hold.of(refreshed))
    assert response.status_code == 403 and "Grip-Hold" not in response


def test_an_objects_next_link_naming_another_channel_is_refused(grip, user, team):
    """The object's URL with a token for the user's own channel or another object's, and
    the object's token on the user's URL: a bad request, whatever else is right."""
    from django.contrib.auth.models import Group

    set_view_permission(user, True)
    url = object_events_url(team)
    other_team = Group.objects.create(name="Team Vega")
    hold = Hold.of(logged_in(user).get(url, HTTP_GRIP_SIG=grip_sig()))
    for channel in (user_channel(user.pk), team_channel(other_team)):
        forged = with_es_meta(hold, es_meta(user, channels=[channel]))
        response = refresh(forged)
        assert response.status_code == 400 and "Grip-Hold" not in response
    # A hold of the user's own channel, refreshed on the object's URL ...
    own = open_through_grip(user)
    assert refresh(own.with_link(url + "?" + urlsplit(own.link).query)).status_code == 400
    # ... and the object's hold refreshed on the user's URL.
    assert refresh(hold.with_link(EVENTS + "?" + urlsplit(hold.link).query)).status_code == 400
    # The object's hold itself is still refreshed.
    assert refresh(hold).status_code == 200


def test_an_objects_json_stream_through_grip_is_held_and_refreshed_on_its_json_channel_only(
    grip, user, other_user, team
):
    from taskstate.web.channels import object_channels, object_token

    set_view_permission(user, True)
    url = f"/taskstate/object/{object_token('auth.group', str(team.pk))}/json/events/"
    json_channel_of_team = object_channels("auth.group", str(team.pk))[1]
    opened = logged_in(user).get(url, HTTP_GRIP_SIG=grip_sig())
    hold = Hold.of(opened)
    assert f"events-{json_channel_of_team}" in opened["Grip-Channel"]
    assert f"events-{team_channel(team)}" not in opened["Grip-Channel"]
    assert logged_in(other_user).get(url, HTTP_GRIP_SIG=grip_sig()).status_code == 403
    refreshed = refresh(hold)
    assert refreshed.status_code == 200
    assert f"events-{json_channel_of_team}" in refreshed["Grip-Channel"]
    # The object's HTML channel named on the JSON URL, and the HTML hold refreshed there.
    forged = with_es_meta(Hold.of(refreshed), es_meta(user, channels=[team_channel(team)]))
    assert refresh(forged).status_code == 400
    html = Hold.of(logged_in(user).get(object_events_url(team), HTTP_GRIP_SIG=grip_sig()))
    assert refresh(html.with_link(url + "?" + urlsplit(html.link).query)).status_code == 400
    set_view_permission(user, False)
    response = refresh(Hold.of(refreshed))
    assert response.status_code == 403 and "Grip-Hold" not in response


class SteppedClock:
    """A clock that moves only when the session check sleeps (``asyncio.sleep`` patched
    to advance it), so that a test reads the check's own schedule."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run_checks(
    monkeypatch: pytest.MonkeyPatch, registry: Any, clock: SteppedClock, ended: Any, count: int
) -> list[tuple[float, set[Any]]]:
    """Run ``registry``'s session check until it has made ``count`` checks, on ``clock``;
    ``ended(pairs)`` answers each. Returns (clock time, pairs) of each check."""
    import asyncio
    from concurrent.futures import Future

    checks: list[tuple[float, set[Any]]] = []

    def check(pairs: set[Any]) -> Future[set[Any]]:
        checks.append((clock(), pairs))
        over = ended(pairs)
        for stream in registry.open_streams():
            if (stream.user_pk, stream.session_key) in over:
                registry.remove(stream)  # as its response does once it has ended
        done: Future[set[Any]] = Future()
        done.set_result(over)
        return done

    monkeypatch.setattr(registry, "check", check)
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        clock.now += delay
        await real_sleep(0)

    async def watch() -> None:
        monkeypatch.setattr(asyncio, "sleep", sleep)
        registry.watch()
        for _ in range(10_000):
            if len(checks) >= count:
                break
            await real_sleep(0)
        assert registry._watcher is not None
        registry._watcher.cancel()

    asyncio.run(watch())
    assert len(checks) >= count, f"{len(checks)} checks"
    return checks


def test_many_open_streams_are_checked_in_turns_each_once_per_interval(monkeypatch):
    """Reading a thousand sessions at once holds the event loop back for about 100 ms
    (the check thread takes the GIL), a tail in every stream's delivery. So one check
    reads at most STREAMS_PER_CHECK sessions; more streams are checked in turns at even
    steps of the interval, the longest unchecked first, each once per interval."""
    from taskstate.web.streams import Registry

    monkeypatch.setattr(conf, "STREAM_CHECK_INTERVAL", 0.2)
    monkeypatch.setattr(conf, "STREAMS_PER_CHECK", 3)
    clock = SteppedClock()
    registry = Registry(clock=clock)
    start = clock()
    streams = [registry.admit(pk, f"session-{pk}") for pk in range(1, 11)]
    checks = _run_checks(monkeypatch, registry, clock, lambda pairs: set(), 12)
    assert all(len(pairs) <= 3 for _, pairs in checks), [len(p) for _, p in checks]
    for stream in streams:
        assert stream is not None
        times = [at for at, pairs in checks if (stream.user_pk, stream.session_key) in pairs]
        assert times and times[0] - start <= 0.2 + 1e-9, (stream.user_pk, times)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap <= 0.2 + 1e-9 for gap in gaps), (stream.user_pk, gaps)


def test_streams_left_after_most_sessions_end_are_still_checked_once_per_interval(
    monkeypatch,
):
    """A check that closes most of the streams shortens the next round, never the pace
    of the streams left: the last of them is checked again within one interval."""
    from taskstate.web.streams import Registry

    monkeypatch.setattr(conf, "STREAM_CHECK_INTERVAL", 0.2)
    monkeypatch.setattr(conf, "STREAMS_PER_CHECK", 10)
    clock = SteppedClock()
    registry = Registry(clock=clock)
    streams = [registry.admit(pk, f"session-{pk}") for pk in range(1, 101)]
    kept = {(s.user_pk, s.session_key) for s in streams[::10] if s is not None}
    # Every session but one in ten has ended (a mass logout).
    checks = _run_checks(monkeypatch, registry, clock, lambda pairs: pairs - kept, 14)
    for pair in kept:
        times = [at for at, pairs in checks if pair in pairs]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 2 and all(gap <= 0.2 + 1e-9 for gap in gaps), (pair, times)
    assert all(
        s is not None and (s.reason is None) == ((s.user_pk, s.session_key) in kept)
        for s in streams
    )
