"""Owner control: cancel a task, or send a failed or cancelled one again.

Called by the views and the admin once the policy (``taskstate.core.policy``) allowed it. A
cancel is one guarded statement (``taskstate.core.transitions.request_cancel``) announced at
once; the worker does the rest (``taskstate.worker.middleware``, ``taskstate.worker.tracking``). A retry
sends the stored message again to the same actor, and dismisses the old row.

A group or pipeline row is controlled as one: a cancel reaches every unfinished child
(two statements whatever the group's size), a retry sends its failed and cancelled
children again as a new group (``taskstate.core.grouping``), linked to the old one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import dramatiq
from django.db import transaction
from django.utils import timezone

from taskstate.core.conf import get_settings
from taskstate.core.policy import controlled_by_group
from taskstate.core.signals import announce
from taskstate.core.states import RETRYABLE_STATUSES, Kind, Status
from taskstate.core.transitions import request_cancel, request_group_cancel

if TYPE_CHECKING:
    from taskstate.core.models import Task

__all__ = ["RETRY_OF_OPTION", "RetryRefused", "cancel", "retry"]

logger = logging.getLogger("taskstate")

#: Option on a message sent by a retry: the pk of the task it retries (read by the
#: middleware, which links the new row to the old one).
RETRY_OF_OPTION = "taskstate_retry_of"


class RetryRefused(Exception):
    """The task cannot be sent again (already retried, its actor is gone, or it is a child
    of a group or pipeline)."""


def cancel(task: Task) -> Task | None:
    """Ask for ``task`` to be cancelled; the row as written, or None when it had ended.

    Announced (pushed to the owner's page) when committed: ``cancelled`` at once for a
    task still waiting to run, "Cancelling" for a running one. A group or pipeline:
    every unfinished child is asked, and the group's row reads ``cancelled`` once none
    runs any more.
    """
    if task.is_group:
        return _cancel_group(task)
    if not request_cancel(task.pk):
        return None
    from taskstate.core.models import Task  # the middleware imports this module before models

    written = Task.objects.using(get_settings().DATABASE).filter(pk=task.pk).first()
    if written is None:
        return None
    announce(written, status_changed=written.status == Status.CANCELLED)
    if written.status == Status.RUNNING:
        _hard_cancel(written)
    return written


def retry(task: Task) -> dramatiq.Message[Any] | Task:
    """Send ``task``'s stored message again, and dismiss ``task``. Returns the new message.

    A new message id and a fresh attempt count; the new row links to ``task``
    (``retry_of``). Raises :class:`RetryRefused` when the task was retried already (a
    double click), has no stored message, or its actor is not declared here.

    A group or pipeline: see :func:`_retry_group`; returns the new group's row. A child
    of one is retried only with its group (``taskstate.core.policy.controlled_by_group``):
    refused.
    """
    if controlled_by_group(task):
        raise RetryRefused("a task of a group or pipeline is retried with its group")
    if task.is_group:
        return _retry_group(task)
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
    from taskstate.core.models import Task

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


def _cancel_group(task: Task) -> Task | None:
    from taskstate.core.groups import refresh_group
    from taskstate.core.models import Task

    if not request_group_cancel(task.pk):
        return None
    rows = Task.objects.using(get_settings().DATABASE)
    # Refreshed now, not when the refresher's turn comes: the row the owner gets back
    # reads "Cancelling" or, with no child running, cancelled.
    refreshed = refresh_group(task.pk)
    written = refreshed.task if refreshed is not None else rows.filter(pk=task.pk).first()
    if written is None:
        return None
    changed = refreshed is not None and refreshed.status_changed
    announce(written, status_changed=changed)
    if get_settings().HARD_CANCEL_AFTER:
        for child in rows.filter(parent_id=task.pk, status=Status.RUNNING):
            _hard_cancel(child)
    return written


def _retry_group(task: Task) -> Task:
    """Send the failed and cancelled children of group ``task`` again, as a new group.

    Only children with a stored message (sent with ``retryable``); those that did their
    work are not run again. A pipeline is sent again from its first failed or cancelled
    step, with the steps after it (their messages ride with that step's, as Dramatiq's
    ``Pipelines`` sends them). The new group's row links to ``task`` (``retry_of``), each
    new child to the one it retries; ``task`` and its children are dismissed. Raises
    :class:`RetryRefused` when no child can be sent again, or ``task`` was retried already.
    """
    from taskstate.core.grouping import _track
    from taskstate.core.models import Task

    alias = get_settings().DATABASE
    rows = Task.objects.using(alias)
    stopped = list(
        rows.filter(
            parent_id=task.pk, status__in=RETRYABLE_STATUSES, retry_message__isnull=False
        ).order_by("position", "pk")
    )
    if not stopped:
        raise RetryRefused("no child to send again")
    broker = dramatiq.get_broker()
    composition: Any  # a dramatiq.pipeline or dramatiq.group
    if task.kind == Kind.PIPELINE:
        first = stopped[0]
        stored = dict(first.retry_message or {})
        steps = [_message(broker, stored, first.pk)]
        later = _later_steps(stored)
        if later:
            known = dict(
                rows.filter(
                    parent_id=task.pk, message_id__in=[step.get("message_id") for step in later]
                ).values_list("message_id", "pk")
            )
            steps += [
                _message(broker, step, known.get(str(step.get("message_id")))) for step in later
            ]
        composition = dramatiq.pipeline(steps, broker=broker)
    else:
        messages = [_message(broker, child.retry_message or {}, child.pk) for child in stopped]
        composition = dramatiq.group(messages, broker=broker)  # type: ignore[no-untyped-call]
    for_state = {
        "user_pk": task.user_id,
        "description": task.description,
        "app_name": task.app_name,
        "model_name": task.model_name,
    }
    with transaction.atomic(using=alias):
        now = timezone.now()
        # Guarded as for one task: of two retries of one group, one sends.
        dismissed = rows.filter(pk=task.pk, status__in=RETRYABLE_STATUSES, seen=False).update(
            seen=True, seen_at=now, updated_at=now
        )
        if not dismissed:
            raise RetryRefused("retried already")
        rows.filter(parent_id=task.pk, seen=False).update(seen=True, seen_at=now, updated_at=now)
        tracked = _track(composition, for_state, retry_of=task.pk)
        if tracked.task is None:
            raise RetryRefused("the new group could not be recorded")
        tracked.run()  # sent once this transaction commits
    return tracked.task


def _message(
    broker: dramatiq.Broker, stored: dict[str, Any], retry_of: int | None
) -> dramatiq.Message[Any]:
    """A new message (new id) from a stored one, without the pipeline's own option."""
    try:
        actor = broker.get_actor(str(stored.get("actor_name")))
    except dramatiq.errors.ActorNotFound as exc:
        raise RetryRefused(f"actor {stored.get('actor_name')!r} is not declared") from exc
    options = dict(stored.get("options") or {})
    options.pop("pipe_target", None)  # dramatiq.pipeline sets it again
    if retry_of is not None:
        options[RETRY_OF_OPTION] = retry_of
    return actor.message_with_options(
        args=tuple(stored.get("args") or ()), kwargs=dict(stored.get("kwargs") or {}), **options
    )


def _later_steps(stored: dict[str, Any]) -> list[dict[str, Any]]:
    """The pipeline steps after a stored one: its ``pipe_target`` chain, in order."""
    steps: list[dict[str, Any]] = []
    target = (stored.get("options") or {}).get("pipe_target")
    while isinstance(target, dict) and len(steps) < 10_000:
        steps.append(target)
        target = (target.get("options") or {}).get("pipe_target")
    return steps


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
