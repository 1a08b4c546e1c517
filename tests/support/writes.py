"""One transition written now, as a batch of one: how tests set a row up through the
state machine's own statement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskstate.core.for_state import Origin
from taskstate.core.models import Task
from taskstate.core.states import Status, running_order
from taskstate.core.transitions import Change, Outage, write_batch


def write_one(
    origin: Origin,
    status: Status,
    order: int,
    values: dict[str, Any],
    *,
    keep: Sequence[str] = (),
) -> Task | None:
    """The row as written, or None when the write was refused (a step backwards) or the
    database could not be reached."""
    try:
        (task,) = write_batch([Change(origin, status, order, values, keep=tuple(keep))])
    except Outage:
        return None
    return task


def progress_one(origin: Origin, attempt: int, percent: int, message: str = "") -> Task | None:
    """A progress report of ``attempt``, written now as the background writer writes one
    (a running change of that attempt): the row, or None when refused."""
    change = Change(
        origin,
        Status.RUNNING,
        running_order(attempt),
        {"attempts": attempt, "progress": percent, "progress_message": message},
        keep=("started_at",),
        progress_only=True,
    )
    try:
        (task,) = write_batch([change])
    except Outage:
        return None
    return task
