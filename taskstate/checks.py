"""System checks: a bad ``TASKSTATE`` setting or a missing piece fails at startup."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string

from taskstate.conf import DEFAULTS, setting_problem

_MIDDLEWARE_PATH = "taskstate.middleware.StateMiddleware"
_CHANNEL_MANAGER_PATH = "taskstate.channels.TaskstateChannelManager"
_HTMX_MIDDLEWARE_PATH = "django_htmx.middleware.HtmxMiddleware"
# Brokers whose worker runs in the web process (tests, the embedded demo).
_IN_PROCESS_BROKERS = ("dramatiq.brokers.stub.StubBroker",)


@register()
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    value = getattr(settings, "TASKSTATE", None)
    if value is None:
        return []
    if not isinstance(value, dict):
        return [
            Error(
                "TASKSTATE must be a dict.",
                hint="For example TASKSTATE = {'PROGRESS_INTERVAL': 1}.",
                id="taskstate.E001",
            )
        ]
    messages: list[CheckMessage] = []
    for key, item in value.items():
        if key not in DEFAULTS:
            messages.append(
                Error(
                    f"TASKSTATE[{key!r}] is not a taskstate setting.",
                    hint="Known settings: " + ", ".join(sorted(DEFAULTS)) + ".",
                    id="taskstate.E002",
                )
            )
            continue
        problem = setting_problem(key, item)
        if problem:
            messages.append(
                Error(
                    f"TASKSTATE[{key!r}] {problem} (got {item!r}).",
                    hint=f"The default is {DEFAULTS[key]!r}.",
                    id="taskstate.E003",
                )
            )
    policy = value.get("CONTROL_POLICY")
    if isinstance(policy, str) and policy and not _is_callable_path(policy):
        messages.append(
            Error(
                f"TASKSTATE['CONTROL_POLICY'] names {policy!r}, which is not an importable "
                "callable.",
                hint="Give the dotted path of a function (user, task, action) -> bool, or "
                f"leave it out for the default {DEFAULTS['CONTROL_POLICY']!r}.",
                id="taskstate.E005",
            )
        )
    alias = value.get("DATABASE")
    if isinstance(alias, str) and alias not in settings.DATABASES:
        messages.append(
            Error(
                f"TASKSTATE['DATABASE'] names {alias!r}, which is not in DATABASES.",
                id="taskstate.E004",
            )
        )
    return messages


@register()
def check_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    broker = getattr(settings, "DRAMATIQ_BROKER", None)
    if not isinstance(broker, dict):
        return []
    middleware = broker.get("MIDDLEWARE") or []
    if _MIDDLEWARE_PATH not in middleware:
        return [
            Warning(
                f"{_MIDDLEWARE_PATH} is not in DRAMATIQ_BROKER['MIDDLEWARE']; no task is tracked.",
                hint=f"Add {_MIDDLEWARE_PATH!r} to DRAMATIQ_BROKER['MIDDLEWARE'].",
                id="taskstate.W001",
            )
        ]
    return []


@register()
def check_event_bus(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W002: with a broker whose workers are other processes, events need a shared bus.

    Without ``EVENTSTREAM_REDIS`` (or a GRIP proxy such as Pushpin) django-eventstream
    keeps events in the process that sent them: the worker's, where no browser listens.
    """
    broker = getattr(settings, "DRAMATIQ_BROKER", None)
    if not isinstance(broker, dict):
        return []
    broker_path = broker.get("BROKER")
    if not isinstance(broker_path, str) or broker_path in _IN_PROCESS_BROKERS:
        return []
    if getattr(settings, "EVENTSTREAM_REDIS", None) or getattr(settings, "GRIP_URL", None):
        return []
    return [
        Warning(
            f"DRAMATIQ_BROKER uses {broker_path} but EVENTSTREAM_REDIS is not set: events "
            "sent by worker processes never reach the browsers.",
            hint="Add EVENTSTREAM_REDIS = {'host': ..., 'port': 6379, 'db': 0} so that "
            "workers and web processes share events through Redis pub/sub.",
            id="taskstate.W002",
        )
    ]


@register()
def check_channel_manager(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W003: without taskstate's channel manager, django-eventstream's own views would
    serve a user's channel to anyone who asks for it."""
    from taskstate.channels import TaskstateChannelManager

    hint = f"Set EVENTSTREAM_CHANNELMANAGER_CLASS = {_CHANNEL_MANAGER_PATH!r} (or a subclass)."
    path = getattr(settings, "EVENTSTREAM_CHANNELMANAGER_CLASS", None)
    if not path:
        return [
            Warning(
                "EVENTSTREAM_CHANNELMANAGER_CLASS is not set: django-eventstream's own views "
                "would let anyone read a taskstate channel.",
                hint=hint,
                id="taskstate.W003",
            )
        ]
    try:
        manager = import_string(path)
    except ImportError:
        manager = None
    if isinstance(manager, type) and issubclass(manager, TaskstateChannelManager):
        return []
    return [
        Warning(
            f"EVENTSTREAM_CHANNELMANAGER_CLASS is {path!r}, which is not "
            f"{_CHANNEL_MANAGER_PATH} or a subclass: taskstate channels are not kept private.",
            hint=hint,
            id="taskstate.W003",
        )
    ]


@register()
def check_htmx_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W004: the list view tells an htmx resync from a page load by ``request.htmx``."""
    if _HTMX_MIDDLEWARE_PATH in (getattr(settings, "MIDDLEWARE", None) or []):
        return []
    return [
        Warning(
            f"{_HTMX_MIDDLEWARE_PATH} is not in MIDDLEWARE: each resync of the task list "
            "nests a whole new list inside the old one.",
            hint=f"Add {_HTMX_MIDDLEWARE_PATH!r} to MIDDLEWARE.",
            id="taskstate.W004",
        )
    ]


def _is_callable_path(path: str) -> bool:
    try:
        return callable(import_string(path))
    except ImportError:
        return False
