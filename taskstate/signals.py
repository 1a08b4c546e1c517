"""Signals, and the one function that announces a committed write.

The state machine (``taskstate.transitions``) writes and tells no one; whoever made the
write announces it here, and listeners (``taskstate.publish`` among them, connected in
``TaskstateConfig.ready``) react. Announcing waits for the writer's transaction to commit,
and a listener's failure is logged, never raised into a worker or a view: Django's
``Signal.send_robust`` logs it once, with its traceback, on the ``django.dispatch`` logger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.dispatch import Signal

from taskstate.conf import get_settings

if TYPE_CHECKING:
    from taskstate.models import Task


#: Public. Sent after a task's status changed and the change is committed.
#: ``sender`` is :class:`taskstate.middleware.StateMiddleware` for a worker's or sender's
#: write, :class:`taskstate.models.Task` for a cancel made by a view or the admin;
#: ``task`` is the :class:`taskstate.models.Task` as written. Receivers' exceptions are
#: logged (logger ``django.dispatch``), not raised.
task_changed = Signal()

#: Internal. Sent after every committed write of a task row (status or not), with
#: ``task``: what the live page shows is rendered from it.
task_committed = Signal()

#: Internal. Sent after a committed progress write of a running attempt, with
#: ``task_pk``, ``user_pk``, ``percent``, ``message`` (None: unchanged) and ``order`` (the
#: attempt's order key, so a page can refuse a bar older than the row it shows) and
#: ``group_pk`` (the task's group or pipeline row, or None). Carries keys, not a row, so
#: reporting progress reads nothing.
progress_committed = Signal()


def announce(
    task: Task, *, sender: Any, status_changed: bool = True, committed: bool = False
) -> None:
    """Announce a write of ``task`` once the writer's transaction commits. Never raises.

    ``committed``: the caller knows the write is committed already (announce now).
    """
    alias = get_settings().DATABASE
    if not committed and connections[alias].in_atomic_block:
        transaction.on_commit(lambda: _send(task, sender, status_changed), using=alias, robust=True)
    else:
        _send(task, sender, status_changed)


def announce_progress(
    *,
    sender: Any,
    task_pk: int,
    user_pk: Any,
    percent: int,
    message: str | None,
    order: int | None = None,
    group_pk: int | None = None,
) -> None:
    """Announce a committed progress write (progress writes are autocommit). Never raises."""
    progress_committed.send_robust(
        sender,
        task_pk=task_pk,
        user_pk=user_pk,
        percent=percent,
        message=message,
        order=order,
        group_pk=group_pk,
    )


def _send(task: Task, sender: Any, status_changed: bool) -> None:
    if status_changed:
        task_changed.send_robust(sender, task=task)
    task_committed.send_robust(sender, task=task)
