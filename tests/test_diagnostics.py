"""A broken setup is told where its user looks, not only by ``manage.py check``: the first
request logs what the checks say, a send that asks for tracking on a broker without
StateMiddleware warns, and a DEBUG page whose stream cannot carry a worker's events says so."""

from __future__ import annotations

import logging

import dramatiq
import pytest
from django.template import Context, Template
from django.urls import reverse
from dramatiq.brokers.stub import StubBroker

from taskstate.checks import check_channel_manager, check_event_bus, check_middleware
from taskstate.core import diagnostics

REDIS_BROKER = {
    "BROKER": "dramatiq.brokers.redis.RedisBroker",
    "OPTIONS": {"url": "redis://127.0.0.1:6379/0"},
    "MIDDLEWARE": ["taskstate.middleware.StateMiddleware"],
}


def _warnings(caplog: pytest.LogCaptureFixture, check_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if check_id in r.getMessage()]


@pytest.mark.django_db
def test_the_first_request_with_a_broken_setup_logs_the_checks_words_once(client, settings, caplog):
    settings.EVENTSTREAM_CHANNELMANAGER_CLASS = ""  # a settings change: checked again
    (problem,) = check_channel_manager()

    with caplog.at_level(logging.WARNING, logger="taskstate"):
        client.get(reverse("taskstate:list"))
        client.get(reverse("taskstate:list"))

    (line,) = _warnings(caplog, "taskstate.W003")
    assert problem.msg in line
    assert problem.hint in line


@pytest.mark.django_db
def test_a_sound_setup_logs_nothing_on_its_first_request(client, caplog):
    with caplog.at_level(logging.WARNING, logger="taskstate"):
        client.get(reverse("taskstate:list"))
    assert not [r for r in caplog.records if "taskstate.W00" in r.getMessage()]


def test_a_send_for_state_to_a_broker_without_state_middleware_warns_once(settings, caplog):
    settings.DRAMATIQ_BROKER = {**REDIS_BROKER, "MIDDLEWARE": []}
    (problem,) = check_middleware()
    broker = StubBroker()
    diagnostics.watch_sends(broker)

    def untracked(for_state=None):
        return None

    actor = dramatiq.actor(untracked, broker=broker, actor_name="untracked_send")
    with caplog.at_level(logging.WARNING, logger="taskstate"):
        actor.send()  # asks for nothing
        assert not _warnings(caplog, "taskstate.W001")
        actor.send(for_state={"user_pk": 1})
        actor.send(for_state={"user_pk": 2})

    (line,) = _warnings(caplog, "taskstate.W001")
    assert problem.msg in line
    assert "for_state" in line


def test_a_broker_with_state_middleware_is_not_watched(caplog):
    from taskstate.worker.middleware import StateMiddleware

    broker = StubBroker(middleware=[StateMiddleware()])
    diagnostics.watch_sends(broker)
    assert not [m for m in broker.middleware if isinstance(m, diagnostics.UntrackedSendWarning)]


def _list_html(rf, user) -> str:
    request = rf.get("/")
    request.user = user
    return Template("{% load taskstate %}{% taskstate_list %}").render(
        Context({"request": request, "csrf_token": "tok"})
    )


@pytest.mark.django_db
def test_in_debug_a_list_whose_stream_cannot_carry_a_workers_events_says_so(rf, user, settings):
    settings.DRAMATIQ_BROKER = REDIS_BROKER
    if hasattr(settings, "EVENTSTREAM_REDIS"):
        del settings.EVENTSTREAM_REDIS
    (problem,) = check_event_bus()
    settings.DEBUG = True

    html = _list_html(rf, user)
    assert 'class="taskstate-setup-problem"' in html
    assert "taskstate.W002" in html
    assert "EVENTSTREAM_REDIS" in html

    settings.DEBUG = False
    assert "taskstate-setup-problem" not in _list_html(rf, user)
    settings.DEBUG = True
    settings.EVENTSTREAM_REDIS = {"host": "127.0.0.1", "port": 6379, "db": 0}
    assert "taskstate-setup-problem" not in _list_html(rf, user)
    assert problem.id == "taskstate.W002"
