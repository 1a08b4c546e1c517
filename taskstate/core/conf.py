"""The ``TASKSTATE`` settings dict: every key, its default and its rule, in one place.

A bad value falls back to its default here; ``taskstate.checks`` reports it.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

# --- constants: values taskstate fixes, read as ``conf.NAME`` at call time -------------

#: Background writer: most messages written by one batch.
WRITE_BATCH_SIZE = 200
#: Background writer: seconds a change may wait for others to share its batch.
WRITE_MAX_DELAY = 0.01
#: PostgreSQL: seconds a tracking write may wait to open a connection it needs (libpq
#: ``connect_timeout``, whole seconds, at least 2; the project's own ``OPTIONS`` win).
DB_CONNECT_TIMEOUT = 5.0
#: PostgreSQL: seconds one tracking write may run (``statement_timeout``, local to our
#: statement); a server that stops answering is cut off one second later by the client.
DB_STATEMENT_TIMEOUT = 5.0
#: PostgreSQL: seconds one tracking write may wait for a row lock (``lock_timeout``, local
#: to our statement).
DB_LOCK_TIMEOUT = 2.0
#: Seconds between two checks that each open stream's session is still valid.
STREAM_CHECK_INTERVAL = 2.0
#: Sessions one stream check reads at most; more are checked in turns within the interval.
STREAMS_PER_CHECK = 100
#: Seconds a running message's knowledge of cancel requests may be old.
CANCEL_CHECK_INTERVAL = 1.0
#: Seconds between two refreshes of one group's row in one process; the last one always runs.
GROUP_INTERVAL = 1.0
#: Tracebacks are cut to their last this many characters.
TRACEBACK_MAX_CHARS = 16_000
#: A user's SSE channel is CHANNEL_PREFIX + namespace + "-" + str(user.pk).
CHANNEL_PREFIX = "taskstate-user-"


# --- settings: the ``TASKSTATE`` dict ----------------------------------------------------

_ABOVE_ZERO = {"rule": "above zero"}
#: A string whose empty value means "work it out".
_MAY_BE_EMPTY = {"rule": "may be empty"}
#: Parts of channel names: GRIP's Grip-Channel header splits channels at commas and their
#: parameters at semicolons, so a name keeps to characters no header or URL treats apart.
_CHANNEL_PART = re.compile(r"[A-Za-z0-9_.:-]*")
_CHANNEL_KEYS = frozenset({"CHANNEL_NAMESPACE"})


@dataclass(frozen=True)
class TaskstateSettings:
    """The effective settings; each field's default is the documented default."""

    #: Seconds between two progress writes of one message; the last value is always written.
    PROGRESS_INTERVAL: float = 0.5
    #: Store the actor's return value on the task when it is JSON-serialisable.
    STORE_RESULT: bool = True
    #: Results whose JSON is larger than this many bytes are not stored (a warning is logged).
    RESULT_MAX_BYTES: int = 16_384
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
    #: The site's part of every channel name, so that two sites sharing a Redis (or a
    #: Pushpin) never read each other's events. Empty: derived from SECRET_KEY and the
    #: NAME of the DATABASE alias (taskstate.web.channels.site_namespace). Set it when the web
    #: and worker processes of one site differ in either.
    CHANNEL_NAMESPACE: str = field(default="", metadata=_MAY_BE_EMPTY)
    #: Open streams one user may have on one web process; one more is answered 429.
    STREAMS_PER_USER: int = field(default=20, metadata=_ABOVE_ZERO)
    #: Seen tasks stay in the display list this many seconds after they were seen.
    DISPLAY_SECONDS_SINCE_SEEN: int = 0
    #: The list (and its resync) shows at most this many tasks, newest first, then
    #: "and N more".
    LIST_MAX_ROWS: int = field(default=50, metadata=_ABOVE_ZERO)
    #: Tell users about tasks that end while their tab is hidden: a count in the page
    #: title and, once they opt in with the list's bell button, a browser notification.
    #: False: neither, no button, and the stream pauses while the tab is hidden.
    NOTIFY_WHEN_HIDDEN: bool = True
    #: Seconds between two runs of the cleanup job started by ``taskstate_scheduler``.
    CLEANUP_INTERVAL: int = field(default=300, metadata=_ABOVE_ZERO)
    #: Database alias the middleware writes through (see docs/deployment.md).
    DATABASE: str = "default"
    #: Dotted path to ``policy(user, task, action) -> bool``: who may cancel (action
    #: "cancel") or retry ("retry") a task, and see the tasks about an object ("view").
    #: The default lets the owner act on their own tasks, staff with the change
    #: permission act from the admin, and, for a task about an object, users with the
    #: object's view permission see it and those with its change permission act on it.
    CONTROL_POLICY: str = "taskstate.policy.owner_or_staff"
    #: What a retry needs (actor, args, kwargs, options) is kept only when its JSON is at
    #: most this many bytes; a larger message is not retryable (a warning is logged).
    RETRY_MESSAGE_MAX_BYTES: int = 65_536
    #: With dramatiq-abort's Abortable middleware on the broker: seconds a running task
    #: that was asked to cancel gets to stop on its own before it is interrupted.
    #: 0: never interrupt (cooperative cancel only).
    HARD_CANCEL_AFTER: float = 0.0


#: Every key a project may set in ``settings.TASKSTATE``, with its default.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TaskstateSettings)}
#: Keys taskstate no longer reads, each with what replaces it. A project that still sets
#: one gets a warning (taskstate.W005) and the key is ignored.
REMOVED_KEYS: dict[str, str] = {
    "PUBLISH_WITHOUT_LISTENERS": "Rows are rendered and sent for every user whenever "
    "events can leave the process (EVENTSTREAM_REDIS or a GRIP proxy); in the embedded "
    "setup only for users with a stream open.",
    "WRITE_MODE": "Every worker-side change goes through the background writer.",
    "SYNCHRONOUS_COMMIT": "Task-state commits wait for the WAL flush, as the project's "
    "other commits do (skipping it gained under 1 %).",
    **{
        name: f"Fixed at {globals()[name]!r} (taskstate.core.conf.{name})."
        for name in (
            "WRITE_BATCH_SIZE",
            "WRITE_MAX_DELAY",
            "DB_CONNECT_TIMEOUT",
            "DB_STATEMENT_TIMEOUT",
            "DB_LOCK_TIMEOUT",
            "STREAM_CHECK_INTERVAL",
            "CANCEL_CHECK_INTERVAL",
            "GROUP_INTERVAL",
            "TRACEBACK_MAX_CHARS",
            "CHANNEL_PREFIX",
        )
    },
}
_RULES = {f.name: f.metadata.get("rule") for f in fields(TaskstateSettings)}


@functools.cache
def get_settings() -> TaskstateSettings:
    """The effective settings: the project's valid ``TASKSTATE`` values over the defaults."""
    given = getattr(django_settings, "TASKSTATE", None)
    if not isinstance(given, dict):
        given = {}
    return TaskstateSettings(
        **{k: v for k, v in given.items() if k in DEFAULTS and setting_problem(k, v) is None}
    )


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
        if _RULES[key] != "may be empty" and not (isinstance(value, str) and value):
            return "must be a non-empty string"
        if not isinstance(value, str):
            return "must be a string"
        if key in _CHANNEL_KEYS and not _CHANNEL_PART.fullmatch(value):
            return "may hold only ASCII letters, digits and _ . : -"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    if isinstance(default, int) and not isinstance(value, int):
        return "must be a whole number"
    if not math.isfinite(value):
        return "must be a finite number"
    if value < 0:
        return "must not be negative"
    if value == 0 and _RULES[key] == "above zero":
        return "must be above zero"
    return None
