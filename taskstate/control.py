"""Owner control: cancel a task, or send a failed or cancelled one again.

Called by the views and the admin once the policy (``taskstate.policy``) allowed it. A
cancel is one guarded statement (``taskstate.transitions.request_cancel``) announced at
once; the worker does the rest (``taskstate.middleware``, ``taskstate.tracking``). A retry
sends the stored message again to the same actor, and dismisses the old row.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import dramatiq
from django.db import transaction
from django.utils import timezone

from taskstate.conf import get_settings
from taskstate.signals import announce
from taskstate.states import RETRYABLE_STATUSES, Status
from taskstate.transitions import request_cancel

if TYPE_CHECKING:
    from taskstate.models import Task

__all__ = ["RETRY_OF_OPTION", "RetryRefused", "cancel", "retry"]

logger = logging.getLogger("taskstate")

#: Option on a message sent by a retry: the pk of the task it retries (read by the
#: middleware, which links the new row to the old one).
RETRY_OF_OPTION = "taskstate_retry_of"


class RetryRefused(Exception):
    """The task cannot be sent again (already retried, or its actor is gone)."""


def cancel(task: Task) -> Task | None:
    """Ask for ``task`` to be cancelled; the row as written, or None when it had ended.

    Announced (pushed to the owner's page) when committed: ``cancelled`` at once for a
    task still waiting to run, "Cancelling" for a running one.
    """
    if not request_cancel(task.pk):
        return None
    from taskstate.models import Task  # the middleware imports this module before models

    written = Task.objects.using(get_settings().DATABASE).filter(pk=task.pk).first()
    if written is None:
        return None
    announce(written, sender=Task, status_changed=written.status == Status.CANCELLED)
    if written.status == Status.RUNNING:
        _hard_cancel(written)
    return written


def retry(task: Task) -> dramatiq.Message[Any]:
    """Send ``task``'s stored message again, and dismiss ``task``. Returns the new message.

    A new message id and a fresh attempt count; the new row links to ``task``
    (``retry_of``). Raises :class:`RetryRefused` when the task was retried already (a
    double click), has no stored message, or its actor is not declared here.
    """
    stored = task.retry_message
    if not isinstance(stored, dict):
        raise RetryRefused("no stored message")
    broker = dramatiq.get_broker()
    try:
        actor = broker.get_actor(str(stored.get("actor_name")))
    except dramatiq.errors.ActorNotFound as exc:
        raise RetryRefused(f"actor {stored.get('actor_name')!r} is not declared") from exc
    options = dict(stored.get("options") or {})
    options[RETRY_OF_OPTION] = task.pk
    message = actor.message_with_options(
        args=tuple(stored.get("args") or ()), kwargs=dict(stored.get("kwargs") or {}), **options
    )
    from taskstate.models import Task

    with transaction.atomic():
        now = timezone.now()
        # Guarded: of two retries of one row (two tabs, a double click), one sends.
        dismissed = Task.objects.filter(
            pk=task.pk, status__in=RETRYABLE_STATUSES, seen=False
        ).update(seen=True, seen_at=now, updated_at=now)
        if not dismissed:
            raise RetryRefused("retried already")
        broker.enqueue(message)
    return message


def _hard_cancel(task: Task) -> None:
    """With dramatiq-abort configured: interrupt the actor if it has not stopped by then."""
    after = get_settings().HARD_CANCEL_AFTER
    if not after:
        return
    try:
        from dramatiq_abort import abort
        from dramatiq_abort.middleware import AbortMode
    except ImportError:
        logger.warning(
            "taskstate: HARD_CANCEL_AFTER is set but dramatiq-abort is not installed "
            "(pip install 'dramatiq-taskstate[abort]'); the cancel stays cooperative."
        )
        return
    try:
        abort(task.message_id, mode=AbortMode.ABORT, abort_timeout=int(after * 1000))
    except Exception:
        logger.exception(
            "taskstate: could not ask dramatiq-abort to interrupt task %s; the cancel "
            "stays cooperative.",
            task.pk,
        )
