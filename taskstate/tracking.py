"""Progress reports from inside an actor: ``progress()`` and ``track()``.

The middleware puts a small record of the running message in a context variable, so an
actor reports progress without knowing its task. Writes are throttled per message: at
most one per ``PROGRESS_INTERVAL`` and only when the value changed; the value held back
last is written with the final status, so it is never lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.utils.translation import gettext

from taskstate.for_state import Origin
from taskstate.handoff import handoff, in_event_loop
from taskstate.signals import announce_progress
from taskstate.states import Status, running_order
from taskstate.transitions import Change, update_progress
from taskstate.values import text_of
from taskstate.writer import background, writer

logger = logging.getLogger("taskstate")
T = TypeVar("T")
#: Characters of a progress message kept: the column's length.
PROGRESS_MESSAGE_MAX = 255


@dataclass(eq=False)
class MessageRun:
    """One attempt of one tracked message in this worker thread."""

    origin: Origin
    attempt: int
    interval: float
    started_at: datetime | None = None
    task_pk: int | None = None
    user_pk: Any = None
    # Last value written and the value held back by the throttle (percent, message).
    written: tuple[int, str | None] = (0, None)
    pending: tuple[int, str | None] | None = None
    next_write_at: float = 0.0
    exception: BaseException | None = None
    finished: bool = False
    # Handed to a thread from an event loop, not known to be written yet.
    unconfirmed: tuple[int, str | None] | None = None


_current: ContextVar[MessageRun | None] = ContextVar("taskstate_run", default=None)


def current_run() -> MessageRun | None:
    return _current.get()


def progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report the progress of the tracked message this actor is running.

    ``progress(40)`` reads as 40 %; ``progress(4, 10)`` as 4 of 10 (40 %). ``message``
    replaces the progress message; None keeps the previous one. Outside a tracked
    message this does nothing. Never raises: bad values are logged and ignored.
    """
    run = _current.get()
    if run is None:
        return
    try:
        percent = int(done * 100 / total) if total is not None else int(done)
    except Exception:
        logger.warning(
            "taskstate: progress(%s, %s) ignored: not numbers",
            text_of(done, 80),
            text_of(total, 80),
        )
        return
    if percent < 0:
        percent = 0
    elif percent > 100:
        percent = 100
    base = run.written if run.pending is None else run.pending
    # Cut and cleaned here, so the page is sent exactly what the row holds.
    value = (percent, base[1] if message is None else text_of(message, PROGRESS_MESSAGE_MAX))
    if value == base:
        return
    now = time.monotonic()
    if now < run.next_write_at:
        run.pending = value
        return
    _write(run, value, now)


def track(iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
    """Yield from ``iterable``, reporting progress after each item.

    ``total`` defaults to ``len(iterable)`` when it has one; without a total the
    progress message counts the items done.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    for count, item in enumerate(iterable, start=1):
        yield item
        if total:
            progress(count, total)
        else:
            progress(0, message=gettext("%(count)d done") % {"count": count})


def _write(run: MessageRun, value: tuple[int, str | None], now: float) -> None:
    run.pending = None
    run.next_write_at = now + run.interval
    if background():
        # Queued: the writer merges it with the attempt's other changes and announces
        # the bar once written. Counted as written: the queue writes it or a later change.
        run.written = value
        percent, message = value
        values = {
            "attempts": run.attempt,
            "started_at": run.started_at,
            "progress": percent,
            # None: unchanged since the running write, which cleared it.
            "progress_message": message or "",
        }
        change = Change(
            run.origin,
            Status.RUNNING,
            running_order(run.attempt),
            values,
            keep=("started_at",),
            progress_only=True,
        )
        writer.submit(change)
    elif in_event_loop():
        # An async actor, in Dramatiq's event loop thread: never block the loop.
        run.unconfirmed = value
        handoff.submit(lambda: _store(run, value))
    else:
        _store(run, value)


def _store(run: MessageRun, value: tuple[int, str | None]) -> None:
    percent, message = value
    if update_progress(run.origin.message_id, run.attempt, percent, message):
        run.written = value
        if run.unconfirmed == value:
            run.unconfirmed = None
        if run.task_pk is not None:
            announce_progress(
                sender=MessageRun,
                task_pk=run.task_pk,
                user_pk=run.user_pk,
                percent=percent,
                message=message,
                order=running_order(run.attempt),
            )


def held_back(run: MessageRun) -> dict[str, Any]:
    """Columns for the value the throttle held back, to go with the final write."""
    pending = run.pending or run.unconfirmed
    if pending is None:
        if not background():
            return {}
        # The background writer: the final change names the progress as it stands, so
        # that it has the same columns as the attempt's other changes (one statement).
        pending = run.written
    percent, message = pending
    run.pending = run.unconfirmed = None
    values: dict[str, Any] = {"progress": percent}
    if message is not None:
        values["progress_message"] = message
    elif background():
        values["progress_message"] = ""  # cleared by the running write, never set since
    return values
