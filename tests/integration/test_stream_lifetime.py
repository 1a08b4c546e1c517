"""Against uvicorn: a stream ends with its session (logout, password change,
deactivation), and one user's streams are capped without touching anyone else's."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.test import Client

from taskstate.core import conf
from taskstate.core.conf import get_settings
from tests.testapp import tasks as actors

EVENTS = "/taskstate/events/"


def opened(streams, base, user):
    stream = streams(f"{base}{EVENTS}", user)
    assert stream.status == 200
    stream.wait_for(lambda f: f.event == "stream-open")
    return stream


def ended_by_server(stream, since: float, what: str) -> None:
    """The server sent a stream-error and ended the stream (it printed how soon)."""
    error = stream.wait_for(lambda f: f.event == "stream-error", timeout=15)
    assert '"forbidden"' in error.data
    assert stream.wait_ended(15), "the server kept the connection open"
    bound = conf.STREAM_CHECK_INTERVAL
    print(f"{what}: stream ended {time.monotonic() - since:.2f} s later (check every {bound} s)")


def still_delivers(stream, user, marker: str) -> None:
    actors.noop.send(for_state={"user_pk": user.pk, "description": marker})
    stream.wait_for(lambda f: marker in f.data and 'data-status="done"' in f.data)


def test_logout_ends_the_streams_of_that_session_only(server, worker_process, streams, user):
    _, base = server
    doomed = opened(streams, base, user)
    other_tab = streams(f"{base}{EVENTS}", user)  # another session of the same user
    other_tab.wait_for(lambda f: f.event == "stream-open")
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = doomed.cookies["sessionid"]
    since = time.monotonic()
    assert client.post("/accounts/logout/").status_code in (200, 302)
    ended_by_server(doomed, since, "logout")
    still_delivers(other_tab, user, "after the logout")
    assert not any("after the logout" in f.data for f in doomed.frames)


def test_a_password_change_ends_every_stream_of_the_user(server, worker_process, streams, user):
    _, base = server
    first, second = opened(streams, base, user), opened(streams, base, user)
    since = time.monotonic()
    user.set_password("a new password")  # update_session_auth_hash is not called
    user.save()
    ended_by_server(first, since, "password change")
    ended_by_server(second, since, "password change")


def test_deactivation_ends_the_users_streams_and_no_one_elses(
    server, worker_process, streams, user, other_user
):
    _, base = server
    theirs, bystander = opened(streams, base, user), opened(streams, base, other_user)
    since = time.monotonic()
    user.is_active = False
    user.save()
    ended_by_server(theirs, since, "deactivation")
    still_delivers(bystander, other_user, "bystander row")
    assert not [f for f in bystander.frames if f.event == "stream-error"]


@pytest.mark.parametrize("attempts", [100])  # five times the default cap of 20
def test_one_user_is_capped_and_others_are_not_affected(
    server, worker_process, streams, user, other_user, attempts
):
    _, base = server
    cap = get_settings().STREAMS_PER_USER
    statuses = []
    kept = []
    for _ in range(attempts):
        stream = streams(f"{base}{EVENTS}", user)
        statuses.append(stream.status)
        if stream.status == 200:
            kept.append(stream)
        else:
            stream.close()
    assert statuses[:cap] == [200] * cap
    assert set(statuses[cap:]) == {429}
    print(
        f"{attempts} streams asked for by one user: {statuses.count(200)} open, "
        f"{statuses.count(429)} answered 429"
    )
    # Someone else is not affected, and the user's open streams still deliver.
    bystander = opened(streams, base, other_user)
    still_delivers(bystander, other_user, "bystander under the cap")
    still_delivers(kept[0], user, "row of the capped user")
    # Closing one frees its place once the server has noticed the disconnect.
    kept.pop().close()
    deadline = time.monotonic() + 15
    while True:
        again = streams(f"{base}{EVENTS}", user)
        if again.status == 200 or time.monotonic() > deadline:
            break
        again.close()
        time.sleep(0.2)
    assert again.status == 200
