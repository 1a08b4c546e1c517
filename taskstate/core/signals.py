"""Signals, and the functions that announce a committed write (docs/reference/signals.md).

The writes tell no one; whoever made one announces it here. A listener's failure is
logged by ``Signal.send_robust``, never raised into a worker or a view.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.dispatch import Signal

from taskstate.core.conf import get_settings

if TYPE_CHECKING:
    from taskstate.core.models import Task


#: Public. Sent once a write that sets a task's status is committed, with ``task`` as
#: written; never for progress reports.
task_changed = Signal()

#: ``StateMiddleware``, set by the app's ``ready()``: the layers that announce sit below it.
_sender: Any = None


def use_sender(sender: Any) -> None:
    global _sender
    _sender = sender


#: Internal. Sent after every committed write of a task row (status or not), with
#: ``task``: what the live page shows is rendered from it.
task_committed = Signal()

#: Internal. Sent after a committed progress write, with ``bar`` (a :class:`Bar`),
#: ``user_pk`` and ``group_pk``: keys, not a row, so reporting progress reads nothing.
progress_committed = Signal()


@dataclass(frozen=True)
class Bar:
    """A committed progress report: the task's percent and message (None: unchanged), and
    its row's order key and ``updated_at``, so a page can refuse a bar older than the one
    it shows."""

    task_pk: int
    percent: int
    message: str | None
    order: int | None = None
    updated: datetime | None = None


#: Internal. Sent once a worker's actors and acks are done: ``taskstate.shutdown`` then
#: writes and sends what is pending.
worker_stopped = Signal()


def announce(task: Task, *, status_changed: bool = True, committed: bool = False) -> None:
    """Announce a write of ``task`` once its transaction commits (``committed``: it is)."""
    alias = get_settings().DATABASE
    if not committed and connections[alias].in_atomic_block:
        transaction.on_commit(lambda: _send(task, status_changed), using=alias, robust=True)
    else:
        _send(task, status_changed)


def announce_progress(bar: Bar, *, user_pk: Any, group_pk: int | None = None) -> None:
    progress_committed.send_robust(_sender, bar=bar, user_pk=user_pk, group_pk=group_pk)


def _send(task: Task, status_changed: bool) -> None:
    if status_changed:
        task_changed.send_robust(_sender, task=task)
    task_committed.send_robust(_sender, task=task)
