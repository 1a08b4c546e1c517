"""System checks: a bad ``TASKSTATE`` setting or a missing piece fails at startup."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string

from taskstate.core.conf import DEFAULTS, REMOVED_KEYS, setting_problem
from taskstate.core.diagnostics import (
    EVENT_BUS_ID,
    MIDDLEWARE_HINT,
    MIDDLEWARE_ID,
    MIDDLEWARE_MISSING,
    MIDDLEWARE_PATHS,
    event_bus_problem,
)

logger = logging.getLogger(__name__)
_CHANNEL_MANAGER_PATH = "taskstate.channels.TaskstateChannelManager"
_HTMX_MIDDLEWARE_PATH = "django_htmx.middleware.HtmxMiddleware"
_Configs = Sequence[AppConfig] | None


@register()
def check_settings(app_configs: _Configs = None, **kwargs: Any) -> list[CheckMessage]:
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
        if key in REMOVED_KEYS:
            messages.append(
                Warning(
                    f"TASKSTATE[{key!r}] is no longer a taskstate setting and is ignored.",
                    hint=REMOVED_KEYS[key] + " Remove the key.",
                    id="taskstate.W005",
                )
            )
        elif key not in DEFAULTS:
            messages.append(
                Error(
                    f"TASKSTATE[{key!r}] is not a taskstate setting.",
                    hint="Known settings: " + ", ".join(sorted(DEFAULTS)) + ".",
                    id="taskstate.E002",
                )
            )
        elif problem := setting_problem(key, item):
            messages.append(
                Error(
                    f"TASKSTATE[{key!r}] {problem} (got {item!r}).",
                    hint=f"The default is {DEFAULTS[key]!r}.",
                    id="taskstate.E003",
                )
            )
    policy = value.get("CONTROL_POLICY")
    if isinstance(policy, str) and policy and not callable(_imported(policy)):
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
def check_middleware(app_configs: _Configs = None, **kwargs: Any) -> list[CheckMessage]:
    broker = getattr(settings, "DRAMATIQ_BROKER", None)
    if not isinstance(broker, dict):
        return []
    middleware = broker.get("MIDDLEWARE") or []
    if not any(path in middleware for path in MIDDLEWARE_PATHS):
        return [Warning(MIDDLEWARE_MISSING, hint=MIDDLEWARE_HINT, id=MIDDLEWARE_ID)]
    return []


@register()
def check_event_bus(app_configs: _Configs = None, **kwargs: Any) -> list[CheckMessage]:
    """W002: with workers in other processes, events need a shared bus (Redis or GRIP)."""
    problem = event_bus_problem()
    return [] if problem is None else [Warning(problem[0], hint=problem[1], id=EVENT_BUS_ID)]


@register()
def check_channel_manager(app_configs: _Configs = None, **kwargs: Any) -> list[CheckMessage]:
    """W003: without taskstate's channel manager, django-eventstream's own views would
    serve a user's channel to anyone who asks for it."""
    from taskstate.web.channels import TaskstateChannelManager

    path = getattr(settings, "EVENTSTREAM_CHANNELMANAGER_CLASS", None)
    if not path:
        problem = (
            "is not set: django-eventstream's own views would let anyone read a taskstate channel."
        )
    else:
        manager = _imported(path)
        if isinstance(manager, type) and issubclass(manager, TaskstateChannelManager):
            return []
        problem = (
            f"is {path!r}, which is not {_CHANNEL_MANAGER_PATH} or a subclass: taskstate "
            "channels are not kept private."
        )
    hint = f"Set EVENTSTREAM_CHANNELMANAGER_CLASS = {_CHANNEL_MANAGER_PATH!r} (or a subclass)."
    return [Warning(f"EVENTSTREAM_CHANNELMANAGER_CLASS {problem}", hint=hint, id="taskstate.W003")]


@register()
def check_htmx_middleware(app_configs: _Configs = None, **kwargs: Any) -> list[CheckMessage]:
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


def _imported(path: str) -> Any:
    try:
        return import_string(path)
    except ImportError:
        return None


# uvicorn runs no checks: the first request of a process logs what they say, once.
_SETUP_CHECKS = (
    check_settings,
    check_middleware,
    check_event_bus,
    check_channel_manager,
    check_htmx_middleware,
)
_logged = False


def log_setup_problems(**kwargs: Any) -> None:
    """``request_started`` receiver: log each problem the checks find, in their words."""
    global _logged
    if _logged:
        return
    _logged = True
    for check in _SETUP_CHECKS:
        try:
            messages = check()
        except Exception:
            logger.exception("taskstate: a setup check failed")
            continue
        for message in messages:
            hint = f" HINT: {message.hint}" if message.hint else ""
            logger.warning("(%s) %s%s", message.id, message.msg, hint)


def forget_logged_setup(**kwargs: Any) -> None:
    """``setting_changed`` receiver: the next request checks the setup again."""
    global _logged
    _logged = False
