"""Owner control: cancel a task, or send a failed or cancelled one again.

Called by the views and the admin once the policy allowed it. A group or pipeline row is
controlled as one: a cancel reaches every unfinished child, a retry sends its failed and
cancelled children again as a new group linked to the old one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import dramatiq
from django.db import transaction
from django.utils import timezone

from taskstate.core.conf import get_settings
from taskstate.core.for_state import RETRY_OF_OPTION
from taskstate.core.policy import controlled_by_group
from taskstate.core.signals import announce
from taskstate.core.states import RETRYABLE_STATUSES, Kind, Status
from taskstate.core.transitions import request_cancel, request_group_cancel

if TYPE_CHECKING:
    from datetime import datetime

    from django.db.models import QuerySet

    from taskstate.core.models import Task

__all__ = ["RETRY_OF_OPTION", "RetryRefused", "cancel", "retry"]

logger = logging.getLogger("taskstate")


class RetryRefused(Exception):
    """The task cannot be sent again (already retried, its actor is gone, or it is a child
    of a group or pipeline)."""


def cancel(task: Task) -> Task | None:
    """Ask for ``task`` to be cancelled; the row as written and announced, or None when it
    had ended. A task still waiting reads ``cancelled`` at once, a running one "Cancelling"."""
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
    """Send ``task``'s stored message again (a new message whose row links to ``task``)
    and dismiss ``task``; returns the new message, or a group's new row.

    Raises :class:`RetryRefused` when the task was retried already, has no stored message,
    its actor is not declared here, or it is a child of a group (retried with its group).
    """
    if controlled_by_group(task):
        raise RetryRefused("a task of a group or pipeline is retried with its group")
    if task.is_group:
        return _retry_group(task)
    stored = task.retry_message
    if not isinstance(stored, dict):
        raise RetryRefused("no stored message")
    broker = dramatiq.get_broker()
    message = _message(broker, stored, task.pk, keep_pipe_target=True)
    from taskstate.core.models import Task

    with transaction.atomic():
        # Guarded: of two retries of one row (two tabs, a double click), one sends.
        if not _dismiss(
            Task.objects.all(), timezone.now(), pk=task.pk, status__in=RETRYABLE_STATUSES
        ):
            raise RetryRefused("retried already")
        broker.enqueue(message)
    return message


def _cancel_group(task: Task) -> Task | None:
    from taskstate.core.groups import refresh_group
    from taskstate.core.models import Task

    if not request_group_cancel(task.pk):
        return None
    rows = Task.objects.using(get_settings().DATABASE)
    # Refreshed now: the row the owner gets back reads "Cancelling" or cancelled.
    refreshed = refresh_group(task.pk)
    written = refreshed.task if refreshed is not None else rows.filter(pk=task.pk).first()
    if written is None:
        return None
    announce(written, status_changed=refreshed is not None and refreshed.status_changed)
    if get_settings().HARD_CANCEL_AFTER:
        for child in rows.filter(parent_id=task.pk, status=Status.RUNNING):
            _hard_cancel(child)
    return written


def _retry_group(task: Task) -> Task:
    """Send the failed and cancelled children of group ``task`` that have a stored message
    again, as a new group; a pipeline from its first such step, with the steps after it.
    ``task`` and its children are dismissed."""
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
        ids = [step.get("message_id") for step in later]
        # An empty ``__in`` runs no query.
        known = dict(
            rows.filter(parent_id=task.pk, message_id__in=ids).values_list("message_id", "pk")
        )
        steps += [_message(broker, step, known.get(str(step.get("message_id")))) for step in later]
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
        if not _dismiss(rows, now, pk=task.pk, status__in=RETRYABLE_STATUSES):
            raise RetryRefused("retried already")
        _dismiss(rows, now, parent_id=task.pk)
        tracked = _track(composition, for_state, retry_of=task.pk)
        if tracked.task is None:
            raise RetryRefused("the new group could not be recorded")
        tracked.run()  # sent once this transaction commits
    return tracked.task


def _dismiss(rows: QuerySet[Task], now: datetime, **lookup: Any) -> int:
    return int(rows.filter(seen=False, **lookup).update(seen=True, seen_at=now, updated_at=now))


def _message(
    broker: dramatiq.Broker,
    stored: dict[str, Any],
    retry_of: int | None,
    *,
    keep_pipe_target: bool = False,
) -> dramatiq.Message[Any]:
    """A new message (new id) from a stored one."""
    try:
        actor = broker.get_actor(str(stored.get("actor_name")))
    except dramatiq.errors.ActorNotFound as exc:
        raise RetryRefused(f"actor {stored.get('actor_name')!r} is not declared") from exc
    options = dict(stored.get("options") or {})
    if not keep_pipe_target:
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
