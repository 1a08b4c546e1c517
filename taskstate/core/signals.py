"""Signals, and the one function that announces a committed write.

The state machine (``taskstate.core.transitions``) writes and tells no one; whoever made the
write announces it here, and listeners (``taskstate.web.publish`` among them, connected in
``TaskstateConfig.ready``) react. Announcing waits for the writer's transaction to commit,
and a listener's failure is logged, never raised into a worker or a view: Django's
``Signal.send_robust`` logs it once, with its traceback, on the ``django.dispatch`` logger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.dispatch import Signal

from taskstate.core.conf import get_settings

if TYPE_CHECKING:
    from taskstate.core.models import Task


#: Public. Sent once a write that sets a task's status is committed, in the process and
#: thread that made it, with ``sender`` always :class:`taskstate.middleware.StateMiddleware`
#: and ``task``: the :class:`taskstate.core.models.Task` as written. Those writes are:
#:
#: - the sender's ``enqueued`` row, and each of a worker's writes, after the commit of the
#:   background writer's batch: changes of one message that meet in a batch are one
#:   write, announced once with the furthest status (a quick ``retrying`` may never be
#:   sent);
#: - rows the cleanup ends ``failed``;
#: - ``taskstate.core.control.cancel`` (the Cancel view, the admin action) when it ends a task
#:   ``cancelled`` at once; a request that leaves the task to a worker sends nothing until
#:   the worker's write does;
#: - a group's or pipeline's row, when ``track_group`` writes it and when a refresh or a
#:   cancel changes its status.
#:
#: Progress reports never send it. Receivers' exceptions are logged (logger
#: ``django.dispatch``), not raised.
task_changed = Signal()

#: The ``sender`` of every signal here: ``StateMiddleware``, given by the app's
#: ``ready()`` (:func:`use_sender`), since the layers that announce writes sit below it.
_sender: Any = None


def use_sender(sender: Any) -> None:
    """Make ``sender`` the sender of every signal here (``TaskstateConfig.ready``)."""
    global _sender
    _sender = sender


#: Internal. Sent after every committed write of a task row (status or not), with
#: ``task``: what the live page shows is rendered from it.
task_committed = Signal()

#: Internal. Sent after a committed progress write of a running attempt, with
#: ``task_pk``, ``user_pk``, ``percent``, ``message`` (None: unchanged) and ``order`` (the
#: attempt's order key, so a page can refuse a bar older than the row it shows) and
#: ``group_pk`` (the task's group or pipeline row, or None). Carries keys, not a row, so
#: reporting progress reads nothing.
progress_committed = Signal()

#: Internal. Sent by the worker's ``after_worker_shutdown``, once its actors and acks
#: are done: whatever owns both sides (``taskstate.shutdown``, connected in
#: ``TaskstateConfig.ready``) writes and sends what is pending before the process goes.
worker_stopped = Signal()


def announce(task: Task, *, status_changed: bool = True, committed: bool = False) -> None:
    """Announce a write of ``task`` once the writer's transaction commits. Never raises.

    ``committed``: the caller knows the write is committed already (announce now).
    """
    alias = get_settings().DATABASE
    if not committed and connections[alias].in_atomic_block:
        transaction.on_commit(lambda: _send(task, status_changed), using=alias, robust=True)
    else:
        _send(task, status_changed)


def announce_progress(
    *,
    task_pk: int,
    user_pk: Any,
    percent: int,
    message: str | None,
    order: int | None = None,
    group_pk: int | None = None,
) -> None:
    """Announce a committed progress write (progress writes are autocommit). Never raises."""
    progress_committed.send_robust(
        _sender,
        task_pk=task_pk,
        user_pk=user_pk,
        percent=percent,
        message=message,
        order=order,
        group_pk=group_pk,
    )


def _send(task: Task, status_changed: bool) -> None:
    if status_changed:
        task_changed.send_robust(_sender, task=task)
    task_committed.send_robust(_sender, task=task)
