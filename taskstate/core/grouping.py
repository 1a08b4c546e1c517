"""``track_group()``: a Dramatiq group or pipeline tracked as one row.

Dramatiq's ``group`` and ``pipeline`` hold their messages, ids and all, before anything is
sent, so the parent row and a child row per message are written first; each message gets
``for_state``, which makes the middleware track it. No result backend, no callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

import dramatiq
from django.db import DatabaseError, connections, transaction
from django.utils import timezone
from django.utils.translation import get_language
from dramatiq.common import q_name

from taskstate.core.bounds import bounded
from taskstate.core.conf import get_settings
from taskstate.core.for_state import (
    RETRY_OF_OPTION,
    group_sending,
    make_encodable,
    parse_for_state,
    retry_message,
    tracked_for_state,
)
from taskstate.core.groups import Member, create_group
from taskstate.core.models import Task
from taskstate.core.signals import announce
from taskstate.core.states import ENQUEUED_ORDER, WAITING_ORDER, Kind, Status

C = TypeVar("C", dramatiq.group, dramatiq.pipeline)
logger = logging.getLogger("taskstate")


@dataclass(frozen=True)
class TrackedGroup(Generic[C]):
    """A group or pipeline whose messages are tracked, and its row. ``composition`` is a
    copy of the one given, its messages carrying ``for_state``: run it, not the original."""

    composition: C
    #: The group's row; None when it could not be written (the group then runs untracked).
    task: Task | None
    #: The messages whose rows ``run()`` moves on itself, all in one statement: every
    #: message, unless one carries what only its sender's own write stores (a retry's).
    moved_by_run: frozenset[str] = field(default=frozenset(), repr=False)

    def run(self, *, delay: int | None = None) -> TrackedGroup[C]:
        """Run the group or pipeline, as its own ``run()`` would; returns itself.

        Inside a transaction, once it commits: no worker waits for rows it cannot see yet,
        and a rollback sends nothing. ``delay`` (ms) shows the messages as scheduled.
        """
        alias = get_settings().DATABASE
        if connections[alias].in_atomic_block:
            transaction.on_commit(lambda: self._send(delay), using=alias)
        else:
            self._send(delay)
        return self

    def _send(self, delay: int | None) -> None:
        # In a transaction of its own: the children's rows move on in one statement at its
        # end (a retried group's, each written by StateMiddleware as its message is sent,
        # in one too). No database: sent anyway.
        alias = get_settings().DATABASE
        connection = connections[alias]
        try:
            with bounded(connection):
                connection.ensure_connection()
        except DatabaseError:
            together: AbstractContextManager[object] | None = None
        else:
            together = transaction.atomic(using=alias)
        # Without a database, each child's own write finds the outage: nothing to move.
        moving = self.moved_by_run if together is not None else frozenset()
        with together or nullcontext():
            token = group_sending.set(moving)
            try:
                self.composition.run(delay=delay)  # type: ignore[no-untyped-call]
            finally:
                group_sending.reset(token)
            if self.task is not None and (moving or delay):
                _move_on(self.task, connection, delay)


def _move_on(task: Task, connection: Any, delay: int | None) -> None:
    """Show the children sent as queued, or scheduled (``delay``, ms): the group's every
    child, a pipeline's first step. Their rows say all the senders' own writes would, but
    that they were sent (a delayed one's could not: its order is a waiting row's). Never
    raises: the messages are sent, and each child's first write from a worker moves it."""
    children = Task.objects.using(connection.alias).filter(
        parent_id=task.pk, status=Status.ENQUEUED, state_order=WAITING_ORDER
    )
    if task.kind == Kind.PIPELINE:
        children = children.filter(position=1)
    now = timezone.now()
    sent: dict[str, Any] = {"state_order": ENQUEUED_ORDER}
    if delay:
        sent = {"status": Status.DELAYED, "due_at": now + timedelta(milliseconds=delay)}
    try:
        with bounded(connection), transaction.atomic(using=connection.alias):
            children.update(**sent, updated_at=now)
    except DatabaseError:
        logger.error(
            "taskstate: the children of %s %s were sent but could not be shown as queued.",
            task.kind,
            task.pk,
            exc_info=True,
        )


def track_group(composition: C, for_state: dict[str, Any] | None = None) -> TrackedGroup[C]:
    """Record ``composition`` (a ``dramatiq.group`` or ``dramatiq.pipeline``) as one row.

    Writes a parent row (``Task.kind`` "group" or "pipeline", described by ``for_state``:
    ``user_pk``, ``description``, ...) and a child row per message, linked to it, before
    anything is sent; returns a :class:`TrackedGroup` whose ``run()`` sends it::

        batch = dramatiq.group(process.message(item) for item in items)
        taskstate.track_group(batch, for_state={"user_pk": user.pk, "description": "Import"}).run()

    A message's own ``for_state`` keys win over the group's. A group of groups or of
    pipelines raises ``TypeError``. From async code, call it through ``sync_to_async``
    (it writes). If the rows cannot be written, the group runs untracked (``task`` None).
    """
    return _track(composition, for_state)


def _track(
    composition: C, for_state: dict[str, Any] | None, *, retry_of: int | None = None
) -> TrackedGroup[C]:
    if isinstance(composition, dramatiq.pipeline):
        kind, messages = Kind.PIPELINE, list(composition.messages)
    elif isinstance(composition, dramatiq.group):
        kind, messages = Kind.GROUP, list(composition.children)
        if any(isinstance(child, (dramatiq.group, dramatiq.pipeline)) for child in messages):
            raise TypeError(
                "taskstate.track_group(): a group of groups or pipelines is not supported; "
                "track each pipeline with its own track_group()"
            )
    else:
        raise TypeError(
            "taskstate.track_group() takes a dramatiq.group or dramatiq.pipeline, "
            f"not {type(composition).__name__}"
        )
    if not messages:
        raise ValueError("taskstate.track_group(): the group or pipeline holds no message")
    encodable = {"for_state": dict(for_state or {})}
    make_encodable(encodable, f"{kind.value} of {messages[0].message_id}")
    group_state = encodable["for_state"] or {}
    identity = parse_for_state(group_state, kind.value, warn=True)

    tracked = [_with_for_state(message, group_state) for message in messages]
    rebuilt: Any
    if kind == Kind.PIPELINE:
        # Rebuilt, so that each step's pipe_target is the next step as tracked.
        rebuilt = dramatiq.pipeline(tracked, broker=composition.broker)
        to_send = list(rebuilt.messages)
    else:
        rebuilt = dramatiq.group(tracked, broker=composition.broker)  # type: ignore[no-untyped-call]
        rebuilt.completion_callbacks = list(getattr(composition, "completion_callbacks", []))
        to_send = tracked
    members = [
        Member(
            message_id=message.message_id,
            actor_name=message.actor_name,
            queue_name=q_name(message.queue_name),
            description=_describe(original, position, len(messages), kind),
            retry_message=(
                retry_message(message)
                if message.kwargs["for_state"].get("retryable") is True
                else None
            ),
        )
        for position, (original, message) in enumerate(zip(messages, to_send, strict=True), start=1)
    ]
    try:
        parent = create_group(
            kind,
            identity,
            members,
            actor_name=_actor_name(kind, messages),
            retry_of=retry_of,
            # The sender's active language (a view's: the request's), as a single task's.
            language=get_language() or "",
        )
    except DatabaseError:
        # Tracking never stops work: the group runs as it would have, untracked.
        logger.error(
            "taskstate: could not record a %s of %d messages; it runs untracked.",
            kind.value,
            len(messages),
            exc_info=True,
        )
        return TrackedGroup(composition, None)
    # The rows say all the senders' own writes would, but which task each retries (a
    # retried group's children): those are written by their own sends.
    retried = any(RETRY_OF_OPTION in message.options for message in to_send)
    moved_by_run = frozenset(() if retried else (message.message_id for message in to_send))
    announce(parent)
    return TrackedGroup(rebuilt, parent, moved_by_run)


def _with_for_state(
    message: dramatiq.Message[Any], group_state: dict[str, Any]
) -> dramatiq.Message[Any]:
    for_state = {**group_state, **(tracked_for_state(message.kwargs) or {})}
    return message.copy(kwargs={**(message.kwargs or {}), "for_state": for_state})


def _describe(message: dramatiq.Message[Any], position: int, total: int, kind: Kind) -> str:
    description = (tracked_for_state(message.kwargs) or {}).get("description")
    if description:
        return str(description)
    if kind == Kind.PIPELINE:
        return f"Step {position} of {total}: {message.actor_name}"
    return f"{message.actor_name} ({position} of {total})"


def _actor_name(kind: Kind, messages: Sequence[dramatiq.Message[Any]]) -> str:
    # What the row's time-left estimate learns from: groups of the same actors alike.
    names = list(dict.fromkeys(message.actor_name for message in messages))
    return f"{kind.value}: " + (" | " if kind == Kind.PIPELINE else ", ").join(names)
