"""The ``TASKSTATE`` settings dict: defaults, validation and one accessor.

Settings are read at call time (``get_settings()``), so ``override_settings`` works in
tests. Hot paths read what they need once per message, not once per call.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings as django_settings

#: Every key a project may set in ``settings.TASKSTATE``, with its default.
DEFAULTS: dict[str, Any] = {
    # Seconds between two progress writes of one message; the last value is always written.
    "PROGRESS_INTERVAL": 0.5,
    # Store the actor's return value on the task when it is JSON-serialisable.
    "STORE_RESULT": True,
    # Results whose JSON is larger than this many bytes are not stored (a warning is logged).
    "RESULT_MAX_BYTES": 16_384,
    # Tracebacks are cut to their last this many characters.
    "TRACEBACK_MAX_CHARS": 16_000,
    # Seen tasks are deleted this many seconds after they were seen.
    "DELETE_SEEN_AFTER": 86_400,
    # Completed tasks nobody saw are deleted this many seconds after they finished.
    "DELETE_UNSEEN_AFTER": 7 * 86_400,
    # Tasks still enqueued this many seconds after their last change are deleted as stale.
    "STALE_ENQUEUED_AFTER": 1_200,
    # Running tasks with no change for this many seconds are marked failed (worker died).
    "RUNNING_TIMEOUT": 3_600,
    # SSE channel of a user is CHANNEL_PREFIX + str(user.pk).
    "CHANNEL_PREFIX": "taskstate-user-",
    # Seen tasks stay in the display list this many seconds after they were seen.
    "DISPLAY_SECONDS_SINCE_SEEN": 0,
    # Seconds between two runs of the cleanup job started by ``taskstate_scheduler``.
    "CLEANUP_INTERVAL": 300,
    # Database alias the middleware writes through (see docs/deployment.md).
    "DATABASE": "default",
    # PostgreSQL only: False lets task-state commits skip waiting for the WAL flush
    # (synchronous_commit=off for those statements alone). Much cheaper per message; a
    # database crash may lose the last fraction of a second of task state.
    "SYNCHRONOUS_COMMIT": True,
}


@dataclass(frozen=True)
class TaskstateSettings:
    PROGRESS_INTERVAL: float
    STORE_RESULT: bool
    RESULT_MAX_BYTES: int
    TRACEBACK_MAX_CHARS: int
    DELETE_SEEN_AFTER: int
    DELETE_UNSEEN_AFTER: int
    STALE_ENQUEUED_AFTER: int
    RUNNING_TIMEOUT: int
    CHANNEL_PREFIX: str
    DISPLAY_SECONDS_SINCE_SEEN: int
    CLEANUP_INTERVAL: int
    DATABASE: str
    SYNCHRONOUS_COMMIT: bool


def user_settings() -> dict[str, Any]:
    """The project's raw ``TASKSTATE`` dict (empty when unset)."""
    value = getattr(django_settings, "TASKSTATE", None)
    return value if isinstance(value, dict) else {}


def get_settings() -> TaskstateSettings:
    """The effective settings: the project's ``TASKSTATE`` over :data:`DEFAULTS`.

    Unknown keys and bad values are reported by the system checks in
    ``taskstate.checks``; here a bad value falls back to its default.
    """
    merged = dict(DEFAULTS)
    for key, value in user_settings().items():
        if key in DEFAULTS and not setting_problem(key, value):
            merged[key] = value
    return TaskstateSettings(**{f.name: merged[f.name] for f in fields(TaskstateSettings)})


#: Settings that must be above zero: zero would fail every running task, delete every
#: queued one, or spin the scheduler.
_POSITIVE = frozenset({"RUNNING_TIMEOUT", "STALE_ENQUEUED_AFTER", "CLEANUP_INTERVAL"})


def setting_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for ``key``, or None when it is."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be True or False"
    if isinstance(default, str):
        return None if isinstance(value, str) and value else "must be a non-empty string"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    if isinstance(default, int) and not isinstance(value, int):
        return "must be a whole number"
    if value < 0:
        return "must not be negative"
    if value == 0 and key in _POSITIVE:
        return "must be above zero"
    return None
