"""System checks for the ``TASKSTATE`` setting and the Dramatiq middleware, and the
settings accessor's fallback for values the checks reject."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from taskstate.checks import (
    check_channel_manager,
    check_event_bus,
    check_htmx_middleware,
    check_middleware,
    check_settings,
)
from taskstate.core.conf import DEFAULTS, get_settings


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id for m in messages if m.id is not None]


def test_valid_settings_pass(settings):
    settings.TASKSTATE = {
        "PROGRESS_INTERVAL": 1,
        "STORE_RESULT": False,
        "RUNNING_TIMEOUT": 600,
        "CHANNEL_NAMESPACE": "tasks",
        "DATABASE": "default",
    }
    assert check_settings() == []


def test_missing_taskstate_setting_passes(settings):
    del settings.TASKSTATE
    assert check_settings() == []


def test_every_default_passes_its_own_check(settings):
    settings.TASKSTATE = dict(DEFAULTS)
    assert check_settings() == []


@pytest.mark.parametrize("value", [[("PROGRESS_INTERVAL", 1)], "PROGRESS_INTERVAL=1", 1])
def test_taskstate_that_is_not_a_dict_is_e001(settings, value):
    settings.TASKSTATE = value
    messages = check_settings()
    assert ids(messages) == ["taskstate.E001"]
    assert messages[0].level == checks.ERROR


@pytest.mark.django_db  # call_command("check"): Django 6.1's JSONField check asks the database
def test_a_removed_key_is_w005_says_what_replaces_it_and_is_ignored(settings):
    settings.TASKSTATE = {"PUBLISH_WITHOUT_LISTENERS": True, "PROGRESS_INTERVAL": 1}
    messages = check_settings()
    assert ids(messages) == ["taskstate.W005"]
    assert messages[0].level == checks.WARNING
    assert "'PUBLISH_WITHOUT_LISTENERS'" in messages[0].msg
    assert "EVENTSTREAM_REDIS" in (messages[0].hint or "")
    assert get_settings().PROGRESS_INTERVAL == 1
    assert not hasattr(get_settings(), "PUBLISH_WITHOUT_LISTENERS")
    call_command("check")  # a warning: the project still starts


@pytest.mark.parametrize(
    "key", ["WRITE_MODE", "SYNCHRONOUS_COMMIT", "WRITE_MAX_DELAY", "CANCEL_CHECK_INTERVAL"]
)
def test_a_key_that_became_a_constant_is_w005_and_ignored(settings, key):
    settings.TASKSTATE = {key: 1}
    messages = check_settings()
    assert ids(messages) == ["taskstate.W005"]
    assert f"'{key}'" in messages[0].msg
    assert not hasattr(get_settings(), key)


def test_unknown_key_is_e002_and_lists_the_known_ones(settings):
    settings.TASKSTATE = {"PROGRES_INTERVAL": 1}
    messages = check_settings()
    assert ids(messages) == ["taskstate.E002"]
    assert "'PROGRES_INTERVAL'" in messages[0].msg
    assert "PROGRESS_INTERVAL" in messages[0].hint


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("PROGRESS_INTERVAL", "fast", "must be a number"),
        ("PROGRESS_INTERVAL", True, "must be a number"),
        ("RUNNING_TIMEOUT", -1, "must not be negative"),
        ("RUNNING_TIMEOUT", 0, "must be above zero"),
        ("PROGRESS_INTERVAL", float("inf"), "must be a finite number"),
        ("PROGRESS_INTERVAL", float("nan"), "must be a finite number"),
        ("DELETE_SEEN_AFTER", 1.5, "must be a whole number"),
        ("STORE_RESULT", "yes", "must be True or False"),
        ("STORE_RESULT", 1, "must be True or False"),
        # A GRIP Grip-Channel header lists channels split by commas, with parameters
        # after semicolons: such characters (or spaces) would split one user's channel.
        ("CHANNEL_NAMESPACE", "tasks, admin", "letters, digits"),
        ("CHANNEL_NAMESPACE", "site;a", "letters, digits"),
        ("CHANNEL_NAMESPACE", "site a", "letters, digits"),
        ("CHANNEL_NAMESPACE", "sité", "letters, digits"),
        ("DATABASE", None, "must be a non-empty string"),
        ("CHANNEL_NAMESPACE", 5, "must be a string"),
        ("HARD_CANCEL_AFTER", -0.1, "must not be negative"),
    ],
)
def test_value_of_the_wrong_type_is_e003_naming_the_key(settings, key, value, problem):
    settings.TASKSTATE = {key: value}
    messages = check_settings()
    assert ids(messages) == ["taskstate.E003"]
    assert f"TASKSTATE[{key!r}]" in messages[0].msg
    assert problem in messages[0].msg
    assert repr(DEFAULTS[key]) in messages[0].hint


def test_every_bad_key_is_reported_at_once(settings):
    settings.TASKSTATE = {"PROGRESS_INTERVAL": "fast", "NOPE": 1, "RUNNING_TIMEOUT": -5}
    assert sorted(ids(check_settings())) == ["taskstate.E002", "taskstate.E003", "taskstate.E003"]


def test_database_naming_an_unknown_alias_is_e004(settings):
    settings.TASKSTATE = {"DATABASE": "tasks"}
    messages = check_settings()
    assert ids(messages) == ["taskstate.E004"]
    assert "'tasks'" in messages[0].msg


@pytest.mark.parametrize("path", ["tests.nowhere.policy", "taskstate.core.conf.DEFAULTS"])
def test_control_policy_that_is_not_an_importable_callable_is_e005(settings, path):
    settings.TASKSTATE = {"CONTROL_POLICY": path}
    messages = check_settings()
    assert ids(messages) == ["taskstate.E005"]
    assert path in messages[0].msg


def test_the_default_control_policy_passes(settings):
    settings.TASKSTATE = {"CONTROL_POLICY": "taskstate.policy.owner_or_staff"}
    assert check_settings() == []


def test_missing_state_middleware_is_w001(settings):
    settings.DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.stub.StubBroker",
        "OPTIONS": {},
        "MIDDLEWARE": ["dramatiq.middleware.Retries"],
    }
    messages = check_middleware()
    assert ids(messages) == ["taskstate.W001"]
    assert messages[0].level == checks.WARNING
    assert "taskstate.middleware.StateMiddleware" in messages[0].hint


def test_broker_without_middleware_list_is_w001(settings):
    settings.DRAMATIQ_BROKER = {"BROKER": "dramatiq.brokers.stub.StubBroker"}
    assert ids(check_middleware()) == ["taskstate.W001"]


def test_configured_state_middleware_passes():
    # tests/settings.py lists it, as the installation docs say.
    assert check_middleware() == []


# Django 6.1's model checks ask the database about JSON support (a query on SQLite).
@pytest.mark.django_db
def test_checks_are_registered_and_fail_manage_py_check(settings):
    settings.TASKSTATE = {"NOPE": 1}
    with pytest.raises(SystemCheckError, match=r"taskstate\.E002"):
        call_command("check")


# --- get_settings() --------------------------------------------------------------------


def test_get_settings_uses_valid_project_values(settings):
    settings.TASKSTATE = {"PROGRESS_INTERVAL": 2, "STORE_RESULT": False}
    current = get_settings()
    assert current.PROGRESS_INTERVAL == 2
    assert current.STORE_RESULT is False
    assert current.RUNNING_TIMEOUT == 3600  # the default


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PROGRESS_INTERVAL", "fast"),
        ("RUNNING_TIMEOUT", -1),
        ("STORE_RESULT", "yes"),
        ("DATABASE", ""),
        ("CHANNEL_NAMESPACE", "a,b"),
        ("CHANNEL_NAMESPACE", "x;prev-id=1"),
    ],
)
def test_get_settings_falls_back_to_the_default_for_a_bad_value(settings, key, value):
    settings.TASKSTATE = {key: value}
    assert getattr(get_settings(), key) == DEFAULTS[key]


@pytest.mark.parametrize("value", [None, "fast", ["PROGRESS_INTERVAL"]])
def test_get_settings_ignores_a_taskstate_that_is_not_a_dict(settings, value: Any):
    settings.TASKSTATE = value
    assert get_settings().PROGRESS_INTERVAL == 0.5  # the default


def test_get_settings_ignores_unknown_keys(settings):
    settings.TASKSTATE = {"NOPE": 1}
    assert not hasattr(get_settings(), "NOPE")


# --- silent misconfigurations of the stack (W002-W004) ---------------------------------


def test_real_broker_without_eventstream_redis_is_w002(settings):
    settings.DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        "OPTIONS": {"url": "redis://127.0.0.1:6379/0"},
        "MIDDLEWARE": ["taskstate.middleware.StateMiddleware"],
    }
    if hasattr(settings, "EVENTSTREAM_REDIS"):
        del settings.EVENTSTREAM_REDIS
    messages = check_event_bus()
    assert ids(messages) == ["taskstate.W002"]
    assert "RedisBroker" in messages[0].msg
    assert "EVENTSTREAM_REDIS" in messages[0].hint

    settings.EVENTSTREAM_REDIS = {"host": "127.0.0.1", "port": 6379, "db": 0}
    assert check_event_bus() == []


def test_stub_broker_needs_no_event_bus(settings):
    settings.DRAMATIQ_BROKER = {"BROKER": "dramatiq.brokers.stub.StubBroker"}
    if hasattr(settings, "EVENTSTREAM_REDIS"):
        del settings.EVENTSTREAM_REDIS
    assert check_event_bus() == []


def test_missing_channel_manager_is_w003(settings):
    del settings.EVENTSTREAM_CHANNELMANAGER_CLASS
    messages = check_channel_manager()
    assert ids(messages) == ["taskstate.W003"]
    assert "taskstate.channels.TaskstateChannelManager" in messages[0].hint


def test_a_channel_manager_that_does_not_guard_taskstate_channels_is_w003(settings):
    settings.EVENTSTREAM_CHANNELMANAGER_CLASS = (
        "django_eventstream.channelmanager.DefaultChannelManager"
    )
    messages = check_channel_manager()
    assert ids(messages) == ["taskstate.W003"]
    assert "DefaultChannelManager" in messages[0].msg


def test_the_taskstate_channel_manager_passes():
    # tests/settings.py sets it, as the Quickstart says.
    assert check_channel_manager() == []


def test_missing_htmx_middleware_is_w004(settings):
    settings.MIDDLEWARE = [
        m for m in settings.MIDDLEWARE if m != "django_htmx.middleware.HtmxMiddleware"
    ]
    messages = check_htmx_middleware()
    assert ids(messages) == ["taskstate.W004"]
    assert "django_htmx.middleware.HtmxMiddleware" in messages[0].hint


@pytest.mark.django_db  # Django 6.1's JSONField model check asks the database
def test_the_stack_checks_show_in_manage_py_check(settings, capsys):
    del settings.EVENTSTREAM_CHANNELMANAGER_CLASS
    settings.MIDDLEWARE = [
        m for m in settings.MIDDLEWARE if m != "django_htmx.middleware.HtmxMiddleware"
    ]
    call_command("check")
    err = capsys.readouterr().err
    assert "taskstate.W003" in err
    assert "taskstate.W004" in err


@pytest.mark.parametrize("broker", [None, "dramatiq.brokers.redis.RedisBroker"])
def test_a_broker_setting_that_is_not_a_dict_is_left_to_django_dramatiq(settings, broker):
    # django_dramatiq's own checks say what is wrong with it; ours have nothing to read.
    settings.DRAMATIQ_BROKER = broker
    assert check_middleware() == []
    assert check_event_bus() == []


def test_a_channel_manager_path_that_does_not_import_is_w003(settings):
    settings.EVENTSTREAM_CHANNELMANAGER_CLASS = "myproject.nowhere.ChannelManager"
    messages = check_channel_manager()
    assert ids(messages) == ["taskstate.W003"]
    assert "myproject.nowhere.ChannelManager" in messages[0].msg
