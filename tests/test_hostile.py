"""Hostile input: who may call what, forged channels, and fuzzed for_state."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from taskstate.core.for_state import make_encodable, parse_for_state
from taskstate.core.models import Status, Task
from taskstate.web.channels import TaskstateChannelManager, admit, user_channel
from tests.support.writes import write_one

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def tasks(user, other_user):
    mine = Task.objects.create(message_id="mine", actor_name="a", status=Status.DONE, user=user)
    theirs = Task.objects.create(
        message_id="theirs", actor_name="a", status=Status.DONE, user=other_user
    )
    return mine, theirs


def client_for(kind, user, other_user, admin_user):
    client = Client()
    if kind == "owner":
        client.force_login(user)
    elif kind == "other":
        client.force_login(other_user)
    elif kind == "staff":
        client.force_login(admin_user)
    return client


# (url name, method, uses the owner's task) -> expected status per caller.
MATRIX = [
    (
        "taskstate:events",
        "get",
        False,
        {"anonymous": 403, "owner": 200, "other": 200, "staff": 200},
    ),
    ("taskstate:list", "get", False, {"anonymous": 200, "owner": 200, "other": 200, "staff": 200}),
    ("taskstate:seen", "post", True, {"anonymous": 302, "owner": 200, "other": 404, "staff": 404}),
    (
        "taskstate:seen-all",
        "post",
        False,
        {"anonymous": 302, "owner": 200, "other": 200, "staff": 200},
    ),
]


@pytest.mark.parametrize("kind", ["anonymous", "owner", "other", "staff"])
@pytest.mark.parametrize(
    ("name", "method", "needs_task", "expected"), MATRIX, ids=[m[0] for m in MATRIX]
)
def test_authorisation_matrix(
    kind, name, method, needs_task, expected, tasks, user, other_user, admin_user
):
    mine, _ = tasks
    client = client_for(kind, user, other_user, admin_user)
    url = reverse(name, args=[mine.pk]) if needs_task else reverse(name)
    response = getattr(client, method)(url, **HTMX)
    assert response.status_code == expected[kind]
    mine.refresh_from_db()
    # Only the owner can ever mark the owner's task seen.
    assert mine.seen == (kind == "owner" and method == "post")


@pytest.mark.parametrize("kind", ["owner", "other", "staff"])
def test_list_shows_nobody_elses_tasks(kind, tasks, user, other_user, admin_user):
    mine, theirs = tasks
    body = client_for(kind, user, other_user, admin_user).get(reverse("taskstate:list")).content
    assert (f"taskstate-task-{mine.pk}".encode() in body) == (kind == "owner")
    assert (f"taskstate-task-{theirs.pk}".encode() in body) == (kind == "other")


@pytest.mark.parametrize("name", ["taskstate:seen", "taskstate:seen-all"])
def test_every_post_needs_csrf(name, tasks, user):
    mine, _ = tasks
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    url = reverse(name, args=[mine.pk]) if name == "taskstate:seen" else reverse(name)
    assert client.post(url, **HTMX).status_code == 403
    mine.refresh_from_db()
    assert not mine.seen


def test_channel_manager_refuses_other_users_channels(user, other_user):
    from django.contrib.auth.models import AnonymousUser

    manager = TaskstateChannelManager()
    admit(user)
    assert manager.can_read_channel(user, user_channel(user.pk))
    for channel in (
        user_channel(other_user.pk),
        user_channel(f"{user.pk}0"),
        user_channel(f"{user.pk} "),
        user_channel(""),
        user_channel("*"),
    ):
        assert not manager.can_read_channel(user, channel), channel
    assert not manager.can_read_channel(AnonymousUser(), user_channel(user.pk))
    assert not manager.can_read_channel(None, user_channel(user.pk))


def test_channel_manager_serves_a_taskstate_channel_only_to_a_user_our_view_admitted(user):
    """Another door's request has a user object of its own (``request.user``, or the one
    django-eventstream loads for an ``es-meta`` token): never admitted."""
    manager = TaskstateChannelManager()
    assert not manager.can_read_channel(user, user_channel(user.pk))
    assert manager.can_read_channel(user, "project-news")
    admit(user)
    same_user_loaded_again = type(user)._default_manager.get(pk=user.pk)
    assert not manager.can_read_channel(same_user_loaded_again, user_channel(user.pk))
    user.is_active = False
    assert not manager.can_read_channel(user, user_channel(user.pk))


def test_seen_with_a_pk_that_is_not_a_number_is_404(user):
    client = Client()
    client.force_login(user)
    assert client.post(f"/taskstate/seen/{'1 OR 1=1'}/").status_code == 404
    assert client.post("/taskstate/seen/-1/").status_code == 404


# Text that often holds what breaks databases and pages: NUL, markup, quotes, surrogates' edge.
nasty_text = st.text(
    alphabet=st.sampled_from(
        ["a", "\x00", "<", ">", "&", "'", '"', "é", "\u2028", "\ud7ff", "\U0001f600", " "]
    ),
    max_size=300,
) | st.text(max_size=50)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | nasty_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
anything = json_values | st.binary() | st.sets(st.integers(), max_size=3) | st.builds(object)


@hsettings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    for_state=st.one_of(
        anything,
        st.dictionaries(
            st.sampled_from(["user_pk", "description", "app_name", "model_name", "x"]),
            anything,
            max_size=5,
        ),
        st.fixed_dictionaries(
            {"user_pk": anything, "description": nasty_text | st.text(max_size=3000)}
        ),
    )
)
def test_fuzzed_for_state_never_raises_and_always_encodes(for_state):
    kwargs = {"for_state": for_state}
    make_encodable(kwargs, "fuzz")
    json.dumps(kwargs)  # what the broker will do next must succeed
    value = kwargs["for_state"]
    if isinstance(value, dict):
        identity = parse_for_state(value, "fuzz", warn=False)
        assert len(identity.description) <= 255
        assert len(identity.app_name) <= 100 and len(identity.model_name) <= 100
        assert identity.user_pk is None or isinstance(identity.user_pk, int)


_counter = iter(range(10**9))


@hsettings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    for_state=st.fixed_dictionaries(
        {
            "user_pk": anything,
            "description": nasty_text,
            "app_name": anything,
            "model_name": nasty_text,
        }
    )
)
def test_fuzzed_for_state_always_gets_a_row(for_state, caplog):
    from django.utils import timezone

    from taskstate.core.for_state import Origin
    from taskstate.core.states import ENQUEUED_ORDER

    kwargs = {"for_state": for_state}
    make_encodable(kwargs, "fuzz")
    identity = parse_for_state(kwargs["for_state"], "fuzz", warn=False)
    message_id = f"fuzz-{next(_counter)}"
    origin = Origin(message_id, "fuzz", "default", timezone.now(), identity)
    task = write_one(origin, Status.ENQUEUED, ENQUEUED_ORDER, {})
    assert task is not None, caplog.text
    stored = Task.objects.get(message_id=message_id)
    assert "\x00" not in stored.description


def test_a_signed_looking_refresh_without_a_grip_signature_is_still_refused(user):
    import jwt
    from django.conf import settings

    token = jwt.encode(
        {"user": user.pk, "channels": [user_channel(user.pk)], "exp": 2**40},
        settings.SECRET_KEY,
        algorithm="HS256",
    )
    # Even a valid django-eventstream token only counts behind a GRIP proxy that signed
    # the request; from anyone else it is a bad request (tests/test_stream_security.py).
    response = Client().get(reverse("taskstate:events"), {"es-meta": token, "link": "next"})
    assert response.status_code == 400


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("key", ["description", "x", "user_pk"])
def test_a_for_state_value_nested_too_deep_for_json_does_not_fail_send(
    broker, user, key, caplog, django_capture_on_commit_callbacks
):
    """json.dumps raised RecursionError, which make_encodable did not catch, and then
    the broker's encoder raised it out of send()."""
    from tests.testapp import tasks as actors

    # Deeper than any Python's limit: 3.13 encodes 5,000 levels of JSON without complaint.
    for_state = {"user_pk": user.pk, "description": "deep", key: _nested(200_000)}
    with django_capture_on_commit_callbacks(execute=True):
        message = actors.noop.send(for_state=for_state)
    task = Task.objects.get(message_id=message.message_id)
    assert "not JSON-serialisable" in caplog.text
    if key == "user_pk":
        assert task.user_id is None
    else:
        assert task.user_id == user.pk
    if key == "description":
        assert task.description == "<unprintable list>"
