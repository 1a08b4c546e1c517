"""Progress reports from inside an actor: ``progress()`` and ``track()``.

The middleware keeps the running message in a context variable. Reports go to the
background writer, at most one per ``PROGRESS_INTERVAL``; the value held back last goes
with the final status. Both raise :class:`Cancelled` once a cancel request is known.
"""

from __future__ import annotations

import contextlib
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
    # The worker's own options dict: a cancelled attempt is marked there for Retries.
    options: dict[str, Any] | None = None
    cancel_requested: bool = False
    # A change of the attempt was refused: the next look reads the row (maybe a cancel).
    read_row: bool = False

    def attempt_columns(self) -> dict[str, Any]:
        """The attempt's own facts, sent with every worker write so any order ends right."""
        return {
            "attempts": self.attempt,
            "started_at": self.started_at,
            "attempt_started_at": self.started_at,
        }


class Cancelled(Exception):
    """Raised by :func:`progress` and :func:`track` once the task's owner asked to cancel it.

    Let it propagate (clean up in ``finally``): the task ends ``cancelled``, not retried.
    """


_current: ContextVar[MessageRun | None] = ContextVar("taskstate_run", default=None)


def current_run() -> MessageRun | None:
    return _current.get()


def progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report the progress of the tracked message this actor is running.

    ``progress(40)`` reads as 40 %; ``progress(4, 10)`` as 4 of 10. ``message`` replaces
    the progress message (None keeps it). Bad values are logged and ignored.
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
    percent = min(max(percent, 0), 100)
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
    """Yield from ``iterable``, reporting progress after each item (``total`` defaults to
    its ``len()``; without one the progress message counts the items done)."""
    if total is None:
        with contextlib.suppress(TypeError):
            total = len(iterable)  # type: ignore[arg-type]
    for count, item in enumerate(iterable, start=1):
        yield item
        if total:
            progress(count, total)
        else:
            progress(0, message=gettext("%(count)d done") % {"count": count})


def cancel_requested() -> bool:
    """Whether the owner of the task this actor is running asked to cancel it, as the
    process knew at most ``CANCEL_CHECK_INTERVAL`` ago; False outside a tracked message."""
    run = _current.get()
    return run is not None and _cancel_seen(run)


def _cancel_seen(run: MessageRun) -> bool:
    if run.cancel_requested:
        return True
    if run.read_row:
        run.read_row = False
        if in_event_loop():
            # Django refuses a query here: another thread reads for a later look.
            background.submit(lambda: _read_row(run))
        else:
            _read_row(run)
    elif cancels.requested(run.origin.message_id):
        mark_cancelled(run)
    return run.cancel_requested


def _read_row(run: MessageRun) -> None:
    if cancel_was_requested(run.origin.message_id):
        mark_cancelled(run)


def mark_cancelled(run: MessageRun) -> None:
    """This attempt was asked to cancel: it ends ``cancelled`` and is never retried.

    Set before any middleware hears how the attempt ended, so it works wherever
    ``StateMiddleware`` stands: ``Retries`` leaves alone an exception in ``throws``, and
    ``Pipelines`` sends no next step without ``pipe_target``.
    """
    run.cancel_requested = True
    if run.options is not None:
        run.options["throws"] = (BaseException,)
        run.options.pop("pipe_target", None)


def _write(run: MessageRun, value: tuple[int, str | None], now: float) -> None:
    """Hand the report to the background writer; never waits."""
    run.pending = None
    run.next_write_at = now + run.interval
    # Counted as written: the writer writes it, or a later change of the attempt does.
    run.written = value
    values = {**run.attempt_columns(), **_progress_columns(value)}
    order = running_order(run.attempt)
    keep = ("started_at",)
    change = Change(run.origin, Status.RUNNING, order, values, keep=keep, progress_only=True)
    change.notify.append(lambda task, written: _refused(run, task, written))
    writer.submit(change)


def _refused(run: MessageRun, task: Task | None, written: bool) -> None:
    # In the writer's thread: a refused report makes the next look read the row.
    if written and task is None:
        run.read_row = True


def held_back(run: MessageRun) -> dict[str, Any]:
    """The progress columns for the final change: the value the throttle held back, else
    the last one written (the same columns as the attempt's other changes)."""
    value, run.pending = run.pending or run.written, None
    return _progress_columns(value)


def _progress_columns(value: tuple[int, str | None]) -> dict[str, Any]:
    # A None message: never set since the running write, which cleared it.
    return {"progress": value[0], "progress_message": value[1] or ""}
