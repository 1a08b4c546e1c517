"""The ``TASKSTATE`` settings dict: every key, its default and its rule, in one place.

``get_settings()`` merges the project's ``TASKSTATE`` over the defaults once and caches
the result; Django's ``setting_changed`` signal (``override_settings`` in tests) clears
the cache. A bad value falls back to its default here, and ``taskstate.checks`` reports
it at startup from the same definitions.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

#: Rules a number may have to meet besides its type.
_ABOVE_ZERO = {"rule": "above zero"}
#: A string whose empty value means "work it out".
_MAY_BE_EMPTY = {"rule": "may be empty"}
#: Parts of channel names: GRIP's Grip-Channel header splits channels at commas and their
#: parameters at semicolons, so a name keeps to characters no header or URL treats apart.
_CHANNEL_PART = re.compile(r"[A-Za-z0-9_.:-]*")
_CHANNEL_KEYS = frozenset({"CHANNEL_PREFIX", "CHANNEL_NAMESPACE"})


@dataclass(frozen=True)
class TaskstateSettings:
    """The effective settings; each field's default is the documented default."""

    #: Seconds between two progress writes of one message; the last value is always written.
    PROGRESS_INTERVAL: float = 0.5
    #: Seconds between two refreshes of one group's or pipeline's row (its counts, combined
    #: progress and status) in one process; the last change is always refreshed.
    GROUP_INTERVAL: float = 1.0
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
    #: SSE channel of a user is CHANNEL_PREFIX + namespace + "-" + str(user.pk).
    CHANNEL_PREFIX: str = "taskstate-user-"
    #: The site's part of every channel name, so that two sites sharing a Redis (or a
    #: Pushpin) never read each other's events. Empty: derived from SECRET_KEY and the
    #: NAME of the DATABASE alias (taskstate.channels.site_namespace). Set it when the web
    #: and worker processes of one site differ in either.
    CHANNEL_NAMESPACE: str = field(default="", metadata=_MAY_BE_EMPTY)
    #: Open streams one user may have on one web process; one more is answered 429.
    STREAMS_PER_USER: int = field(default=20, metadata=_ABOVE_ZERO)
    #: Seconds between two checks that each open stream's session is still valid (not
    #: logged out, password unchanged, user active). A stream whose session fails is
    #: closed within this plus the time the check takes.
    STREAM_CHECK_INTERVAL: float = field(default=2.0, metadata=_ABOVE_ZERO)
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
    #: Dotted path to ``policy(user, task, action) -> bool``: who may cancel (action
    #: "cancel") or retry ("retry") a task. The default lets the owner act on their own
    #: tasks and staff with the change permission act from the admin.
    CONTROL_POLICY: str = "taskstate.policy.owner_or_staff"
    #: Seconds between two looks at the row, from progress()/track()/cancel_requested(),
    #: for a cancel request; a progress write that lands counts as one.
    CANCEL_CHECK_INTERVAL: float = field(default=1.0, metadata=_ABOVE_ZERO)
    #: What a retry needs (actor, args, kwargs, options) is kept only when its JSON is at
    #: most this many bytes; a larger message is not retryable (a warning is logged).
    RETRY_MESSAGE_MAX_BYTES: int = 65_536
    #: With dramatiq-abort's Abortable middleware on the broker: seconds a running task
    #: that was asked to cancel gets to stop on its own before it is interrupted.
    #: 0: never interrupt (cooperative cancel only).
    HARD_CANCEL_AFTER: float = 0.0
    #: How the worker's state changes reach the database. "background": a hook hands the
    #: change to one thread per process, which writes the changes of many messages in
    #: batches (one multi-row upsert, one commit per batch); no hook waits for it (cancel
    #: requests are known from taskstate.writer.CancelWatch, see docs/owner-control.md
    #: and docs/reliability.md, "The background writer"). "immediate": each hook writes its
    #: own change, one statement each, before the message goes on. The sender's write is
    #: immediate either way.
    WRITE_MODE: str = field(default="background", metadata={"choices": ("background", "immediate")})
    #: Background writer: most messages written by one batch.
    WRITE_BATCH_SIZE: int = field(default=200, metadata=_ABOVE_ZERO)
    #: Background writer: seconds a change may wait for others to share its batch.
    WRITE_MAX_DELAY: float = 0.01
    #: Render and send rows and bars for users with no stream open too. False (the
    #: default): skipped, as nobody can receive them and a page reads its rows when its
    #: stream opens (taskstate.presence). Set True when something other than
    #: django-eventstream's streams delivers taskstate channels. Under a GRIP proxy
    #: (Pushpin) everything is always sent.
    PUBLISH_WITHOUT_LISTENERS: bool = False


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
_MAY_BE_EMPTY_KEYS = frozenset(
    f.name for f in fields(TaskstateSettings) if f.metadata.get("rule") == "may be empty"
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
        if key not in _MAY_BE_EMPTY_KEYS and not (isinstance(value, str) and value):
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
    if value == 0 and key in _ABOVE_ZERO_KEYS:
        return "must be above zero"
    return None
