"""System checks: a bad ``TASKSTATE`` setting or a missing piece fails at startup."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from taskstate.conf import DEFAULTS, setting_problem

_MIDDLEWARE_PATH = "taskstate.middleware.StateMiddleware"


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
