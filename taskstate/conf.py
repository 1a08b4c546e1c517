"""The ``TASKSTATE`` settings dict: every key, its default and its rule, in one place.

``get_settings()`` merges the project's ``TASKSTATE`` over the defaults once and caches
the result; Django's ``setting_changed`` signal (``override_settings`` in tests) clears
the cache. A bad value falls back to its default here, and ``taskstate.checks`` reports
it at startup from the same definitions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

#: Rules a number may have to meet besides its type.
_ABOVE_ZERO = {"rule": "above zero"}


@dataclass(frozen=True)
class TaskstateSettings:
    """The effective settings; each field's default is the documented default."""

    #: Seconds between two progress writes of one message; the last value is always written.
    PROGRESS_INTERVAL: float = 0.5
    #: Store the actor's return value on the task when it is JSON-serialisable.
    STORE_RESULT: bool = True
    #: Results whose JSON is larger than this many bytes are not stored (a warning is logged).
    RESULT_MAX_BYTES: int = 16_384
    #: Tracebacks are cut to their last this many characters.
    TRACEBACK_MAX_CHARS: int = 16_000
    #: Seen tasks are deleted this many seconds after they were seen.
    DELETE_SEEN_AFTER: int = 86_400
    #: Completed tasks nobody saw are deleted this many seconds after they finished.
    DELETE_UNSEEN_AFTER: int = 7 * 86_400
    #: Tasks still enqueued this many seconds after their last change are deleted as stale.
    STALE_ENQUEUED_AFTER: int = field(default=1_200, metadata=_ABOVE_ZERO)
    #: Running tasks with no change for this many seconds are marked failed (worker died).
    RUNNING_TIMEOUT: int = field(default=3_600, metadata=_ABOVE_ZERO)
    #: Retrying or delayed tasks still waiting this many seconds after their message was
    #: due (its eta, or its next retry) are marked failed (message lost).
    OVERDUE_AFTER: int = field(default=3_600, metadata=_ABOVE_ZERO)
    #: SSE channel of a user is CHANNEL_PREFIX + str(user.pk).
    CHANNEL_PREFIX: str = "taskstate-user-"
    #: Seen tasks stay in the display list this many seconds after they were seen.
    DISPLAY_SECONDS_SINCE_SEEN: int = 0
    #: The list (and its resync) shows at most this many tasks, newest first, then
    #: "and N more".
    LIST_MAX_ROWS: int = field(default=50, metadata=_ABOVE_ZERO)
    #: Seconds between two runs of the cleanup job started by ``taskstate_scheduler``.
    CLEANUP_INTERVAL: int = field(default=300, metadata=_ABOVE_ZERO)
    #: Database alias the middleware writes through (see docs/deployment.md).
    DATABASE: str = "default"
    #: PostgreSQL only: False lets task-state commits skip waiting for the WAL flush
    #: (synchronous_commit=off for those statements alone). Much cheaper per message; a
    #: database crash may lose the last fraction of a second of task state.
    SYNCHRONOUS_COMMIT: bool = True
    #: PostgreSQL: seconds a tracking write may wait to open a connection it needs
    #: (libpq ``connect_timeout``, whole seconds, at least 2). 0: the project's own setting.
    DB_CONNECT_TIMEOUT: float = 5.0
    #: PostgreSQL: seconds one tracking write may run (``statement_timeout``, local to our
    #: statement); a server that stops answering is cut off one second later by the client.
    #: 0: unbounded.
    DB_STATEMENT_TIMEOUT: float = 5.0
    #: PostgreSQL: seconds one tracking write may wait for a row lock (``lock_timeout``,
    #: local to our statement). 0: unbounded.
    DB_LOCK_TIMEOUT: float = 2.0
    #: How the worker's state changes reach the database. "background": a hook queues the
    #: change and returns; one thread per process writes them in batches (one statement
    #: per batch, after at most WRITE_MAX_DELAY). "immediate": each hook writes its change
    #: itself, one statement each, before the message goes on. The sender's write is
    #: immediate either way. See docs/reliability.md, "The background writer".
    WRITE_MODE: str = field(default="background", metadata={"choices": ("background", "immediate")})
    #: Background writer: most rows written by one statement.
    WRITE_BATCH_SIZE: int = field(default=200, metadata=_ABOVE_ZERO)
    #: Background writer: seconds a change may wait for others to share its statement.
    WRITE_MAX_DELAY: float = 0.01


def _defaults() -> dict[str, Any]:
    values = {}
    for f in fields(TaskstateSettings):
        assert f.default is not MISSING
        values[f.name] = f.default
    return values


#: Every key a project may set in ``settings.TASKSTATE``, with its default.
DEFAULTS: dict[str, Any] = _defaults()
_ABOVE_ZERO_KEYS = frozenset(
    f.name for f in fields(TaskstateSettings) if f.metadata.get("rule") == "above zero"
)

_CHOICES: dict[str, tuple[str, ...]] = {
    f.name: f.metadata["choices"] for f in fields(TaskstateSettings) if "choices" in f.metadata
}


def user_settings() -> dict[str, Any]:
    """The project's raw ``TASKSTATE`` dict (empty when unset or not a dict)."""
    value = getattr(django_settings, "TASKSTATE", None)
    return value if isinstance(value, dict) else {}


@functools.cache
def get_settings() -> TaskstateSettings:
    """The effective settings: the project's valid ``TASKSTATE`` values over the defaults."""
    chosen = {
        key: value
        for key, value in user_settings().items()
        if key in DEFAULTS and setting_problem(key, value) is None
    }
    return TaskstateSettings(**chosen)


@receiver(setting_changed)
def _forget_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "TASKSTATE":
        get_settings.cache_clear()


def setting_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for ``key``, or None when it is."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be True or False"
    if isinstance(default, str):
        choices = _CHOICES.get(key)
        if choices is not None:
            return None if value in choices else "must be one of " + ", ".join(map(repr, choices))
        return None if isinstance(value, str) and value else "must be a non-empty string"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    if isinstance(default, int) and not isinstance(value, int):
        return "must be a whole number"
    if not math.isfinite(value):
        return "must be a finite number"
    if value < 0:
        return "must not be negative"
    if value == 0 and key in _ABOVE_ZERO_KEYS:
        return "must be above zero"
    return None
