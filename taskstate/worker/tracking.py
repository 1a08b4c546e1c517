"""Progress reports from inside an actor: ``progress()`` and ``track()``.

The middleware puts a small record of the running message in a context variable, so an
actor reports progress without knowing its task. Writes are throttled per message: at
most one per ``PROGRESS_INTERVAL`` and only when the value changed; the value held back
last is written with the final status, so it is never lost.

Reports go to the background writer (``taskstate.worker.writer``); none waits for the database.

They are also where a running actor hears that its owner asked to cancel it: both raise
:class:`Cancelled` once the request is known, and :func:`cancel_requested` asks without
raising. They ask what the process knows (``taskstate.worker.writer.CancelWatch``, at most
``conf.CANCEL_CHECK_INTERVAL`` old); after a change of the attempt was refused (the row
may have been asked to cancel) the next look reads the row, or, in an event loop's thread
(an ``async def`` actor), has another thread read it for a later look.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from django.utils.translation import gettext

from taskstate.core.background import background, in_event_loop
from taskstate.core.for_state import Origin
from taskstate.core.states import Status, running_order
from taskstate.core.transitions import Change
from taskstate.core.transitions import cancel_requested as cancel_was_requested
from taskstate.core.values import text_of
from taskstate.worker.writer import cancels, writer

if TYPE_CHECKING:
    from taskstate.core.models import Task

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
    # Last value written and the value held back by the throttle (percent, message).
    written: tuple[int, str | None] = (0, None)
    pending: tuple[int, str | None] | None = None
    next_write_at: float = 0.0
    exception: BaseException | None = None
    finished: bool = False
    # The message's options (the worker's own dict): a cancelled attempt is marked there
    # so that Dramatiq's Retries does not retry it.
    options: dict[str, Any] | None = None
    # Owner control: a cancel request was seen; a change of the attempt was refused, so
    # the next look reads the row (the refusal may be a cancel request).
    cancel_requested: bool = False
    read_row: bool = False


class Cancelled(Exception):
    """Raised by :func:`progress` and :func:`track` once the task's owner asked to cancel it.

    Let it propagate (clean up in ``finally`` or ``except Cancelled: ...; raise``): the
    task then ends ``cancelled`` and Dramatiq does not retry it. Whatever else the attempt
    raises after a cancel request ends it ``cancelled`` too.
    """


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
    if _cancel_seen(run):
        raise Cancelled(gettext("Cancelled by its owner."))
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
    if run.cancel_requested:
        raise Cancelled(gettext("Cancelled by its owner."))


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


def cancel_requested() -> bool:
    """Whether the owner of the task this actor is running asked to cancel it.

    For actors that clean up before they stop, or that report no progress. Answers from
    what the process knows, at most ``conf.CANCEL_CHECK_INTERVAL`` old. Outside a tracked
    message: False.
    """
    run = _current.get()
    return run is not None and _cancel_seen(run)


def _cancel_seen(run: MessageRun) -> bool:
    if run.cancel_requested:
        return True
    if run.read_row:
        # A change of this attempt was refused: the row says whether it was a cancel.
        run.read_row = False
        if in_event_loop():
            # An async actor, in Dramatiq's event loop thread: Django refuses a query
            # here. Another thread reads the row; a later look hears what it found.
            background.submit(lambda: _read_row(run))
        else:
            _read_row(run)
    elif cancels.requested(run.origin.message_id):
        # What this process knows (refreshed with the writer's batches; CancelWatch):
        # a dictionary lookup, a read only in an otherwise idle process.
        mark_cancelled(run)
    return run.cancel_requested


def _read_row(run: MessageRun) -> None:
    if cancel_was_requested(run.origin.message_id):
        mark_cancelled(run)


def mark_cancelled(run: MessageRun) -> None:
    """This attempt was asked to cancel: it ends ``cancelled`` and is never retried.

    Dramatiq's ``Retries`` leaves alone an attempt whose exception is in its ``throws``
    option; set now, before any middleware hears how the attempt ended, it works wherever
    ``StateMiddleware`` stands in the list. A pipeline step asked to cancel does not send
    the next step, even if it returns normally: ``Pipelines`` finds no ``pipe_target``.
    """
    run.cancel_requested = True
    if run.options is not None:
        run.options["throws"] = (BaseException,)
        run.options.pop("pipe_target", None)


def _write(run: MessageRun, value: tuple[int, str | None], now: float) -> None:
    """Hand the report to the background writer, which merges it with the attempt's other
    changes and announces the bar once written; never waits (also in an event loop)."""
    run.pending = None
    run.next_write_at = now + run.interval
    # Counted as written: the writer writes it, or a later change of the attempt does.
    run.written = value
    percent, message = value
    values = {
        "attempts": run.attempt,
        "started_at": run.started_at,
        "attempt_started_at": run.started_at,
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
    change.notify.append(lambda task, written: _refused(run, task, written))
    writer.submit(change)


def _refused(run: MessageRun, task: Task | None, written: bool) -> None:
    # In the writer's thread: a report refused by a written batch makes the attempt's
    # next progress() look at the row (the refusal may be a cancel request).
    if written and task is None:
        run.read_row = True


def held_back(run: MessageRun) -> dict[str, Any]:
    """The progress columns to go with the final change: the value the throttle held
    back, else the last one written, so that the final change has the same columns as the
    attempt's other changes (one statement)."""
    percent, message = run.pending or run.written
    run.pending = None
    # None: never set since the running write, which cleared it.
    return {"progress": percent, "progress_message": message or ""}
