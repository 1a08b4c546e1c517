"""The writes of group and pipeline rows: created with their children, refreshed from them.

A parent row's counts, progress and status are not written by its children's own writes
(one statement each): :func:`refresh_group` recomputes them from one aggregate query,
throttled per group by ``taskstate.core.group_refresh``. Writes, and tells no one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connections, transaction
from django.db.models import Case, Count, IntegerField, Max, Min, Q, QuerySet, Sum, Value, When
from django.utils import timezone
from django.utils.translation import gettext

from taskstate.core import conf
from taskstate.core.bounds import bounded_transaction
from taskstate.core.conf import get_settings
from taskstate.core.for_state import TaskIdentity
from taskstate.core.models import Task
from taskstate.core.states import (
    COMPLETE_STATUSES,
    ENQUEUED_ORDER,
    NOT_RUN_ERROR,
    RETRYABLE_STATUSES,
    TERMINAL_ORDER,
    WAITING_ORDER,
    Kind,
    Status,
    cancel_at_once_margin,
    cancelling_order,
    running_order,
)
from taskstate.core.values import clean_text, text_of

#: Failed children named on the group's row at most.
NAMED_FAILURES = 3


@dataclass(frozen=True)
class Member:
    """One message of a group or pipeline, as its child row is first written."""

    message_id: str
    actor_name: str
    queue_name: str
    description: str
    #: What a retry of it sends again (``for_state`` ``retryable``), else None.
    retry_message: dict[str, Any] | None = None


def create_group(
    kind: Kind,
    identity: TaskIdentity,
    members: Sequence[Member],
    *,
    actor_name: str,
    retry_of: int | None = None,
    language: str = "",
) -> Task:
    """Write a parent row and one child row per member, in one transaction; return the parent.

    The children start waiting (enqueued, ``WAITING_ORDER``): the middleware's own write
    when a message is sent moves each on. ``retry_of``: the group this one retries.
    """
    alias = get_settings().DATABASE
    now = timezone.now()
    common: dict[str, object] = {
        "user_id": _existing_user(identity.user_pk, alias),
        "app_name": identity.app_name,
        "model_name": identity.model_name,
        "object_type": identity.object_type,
        "object_pk": identity.object_pk,
        "language": language[:16],
        "created_at": now,
        "updated_at": now,
    }
    with transaction.atomic(using=alias):
        parent = Task.objects.using(alias).create(
            message_id=f"taskstate-{kind.value}-{uuid.uuid4().hex}",
            actor_name=clean_text(actor_name, 255),
            kind=kind.value,
            status=Status.ENQUEUED,
            state_order=ENQUEUED_ORDER,
            description=identity.description,
            children_total=len(members),
            retry_of_id=retry_of,
            **common,
        )
        shared = {
            **common,
            "status": Status.ENQUEUED.value,
            "state_order": WAITING_ORDER,
            "parent_id": parent.pk,
        }
        _insert_children(alias, members, shared)
    return parent


#: A child's own columns (the rest it shares with its siblings, but ``position``).
_OWN_COLUMNS = ("message_id", "actor_name", "queue_name", "description", "retry_message")


def _insert_children(alias: str, members: Sequence[Member], shared: dict[str, object]) -> None:
    """Insert one child row per member, ``shared`` columns alike, the others defaults.

    On PostgreSQL one statement whatever the number of children (the own columns as one
    array each, unnested and numbered by the database: nothing is prepared per child);
    elsewhere ``bulk_create``.
    """
    own: list[list[Any]] = [
        [member.message_id for member in members],
        [clean_text(member.actor_name, 255) for member in members],
        [clean_text(member.queue_name, 255) for member in members],
        [clean_text(member.description, 255) for member in members],
        [member.retry_message for member in members],
    ]
    connection = connections[alias]
    if connection.vendor != "postgresql":
        Task.objects.using(alias).bulk_create(
            (
                Task(**dict(zip(_OWN_COLUMNS, values, strict=True)), **shared, position=position)
                for position, values in enumerate(zip(*own, strict=True), start=1)
            ),
            batch_size=500,
        )
        return
    q = connection.ops.quote_name
    columns, selected, params = [], [], []
    for field in Task._meta.concrete_fields:
        name = field.attname
        if field.primary_key or name in _OWN_COLUMNS:
            continue
        columns.append(q(name))
        if name == "position":
            selected.append(f"_own.{q(name)}::{field.db_type(connection)}")
            continue
        value = shared[name] if name in shared else field.get_default()
        selected.append(f"%s::{field.db_type(connection)}")
        params.append(field.get_db_prep_save(value, connection))
    # JSON goes as text, each cast on its own: a NULL stays SQL NULL.
    own[-1] = [None if value is None else json.dumps(value) for value in own[-1]]
    arrays = [f"%s::{Task._meta.get_field(name).db_type(connection)}[]" for name in _OWN_COLUMNS]
    arrays[-1] = "%s::text[]"
    own_selected = [f"_own.{q(n)}" for n in _OWN_COLUMNS]
    own_selected[-1] += "::jsonb"
    sql = (
        f"INSERT INTO {q(Task._meta.db_table)} ({', '.join(q(n) for n in _OWN_COLUMNS)}, "
        f"{', '.join(columns)}) SELECT {', '.join(own_selected)}, "
        f"{', '.join(selected)} FROM unnest({', '.join(arrays)}) WITH ORDINALITY "
        f"AS _own({', '.join(q(n) for n in (*_OWN_COLUMNS, 'position'))})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *own])


def _existing_user(user_pk: int | str | None, alias: str) -> int | str | None:
    if user_pk is None:
        return None
    users = get_user_model()._default_manager.using(alias)
    return user_pk if users.filter(pk=user_pk).exists() else None


@dataclass(frozen=True)
class Refreshed:
    """A group row as a refresh wrote it, and whether its status changed."""

    task: Task
    status_changed: bool


def refresh_group(pk: int) -> Refreshed | None:
    """Recompute the counts, progress and status of group ``pk`` from its children, in
    three statements whatever its size; None when it is gone, ended or unchanged.

    Running once a child started, until every child ended (a ``retrying`` child has not);
    then ``failed`` if any failed, else ``cancelled`` if any was (or never ran after a
    cancelled step), else ``done``. ``retry_message`` keeps how many children a retry
    would send (``{"children": n}``). Within the writes' database bounds: a refresh stuck
    behind a lock raises (logged); the next change, or the cleanup, refreshes it again.
    """
    alias = get_settings().DATABASE
    with bounded_transaction(alias):
        return _refresh(pk, alias)


def _refresh(pk: int, alias: str) -> Refreshed | None:
    rows = Task.objects.using(alias)
    parent = rows.filter(pk=pk).exclude(kind="").first()
    if parent is None or parent.is_complete:
        return None
    children = rows.filter(parent_id=pk)
    counts = _aggregate(children)
    ended = counts.ended
    if parent.kind == Kind.PIPELINE and counts.waiting:
        if counts.failed or counts.cancelled:
            # Nothing sends the steps after a failed or cancelled one: they will never run.
            ended += _mark_not_run(children, counts.first_stopped)
        elif (
            # Asked to cancel, and a step ended without sending the next one (it saw the
            # request). Not sooner: a step that ended without seeing it sent the next
            # one, whose row is no longer waiting once sent, and a worker takes it only
            # after every worker has heard of the request (CancelWatch).
            _asked_long_ago(parent)
            and not counts.running
            and not counts.queued
            and _mark_not_run(children, None)
        ):
            counts = _aggregate(children)  # they count as cancelled now
            ended = counts.ended
    total = counts.total
    now = timezone.now()
    values: dict[str, object] = {
        "children_total": total,
        "children_done": counts.done,
        "children_failed": counts.failed,
        "children_running": counts.running,
        "progress": min(100, counts.progress // total) if total else 0,
        "started_at": counts.started_at,
        "updated_at": now,
        "retry_message": None,
    }
    if total > 0 and ended >= total:  # settled
        status, order = Status.DONE, TERMINAL_ORDER
        if counts.failed:
            status = Status.FAILED
        elif counts.cancelled:
            status = Status.CANCELLED
        values["finished_at"] = counts.finished_at or now
        if status == Status.DONE:
            values["progress"] = 100
        elif counts.retryable:
            values["retry_message"] = {"children": counts.retryable}
    elif counts.started_at is not None:
        # Attempt 1's key: every refresh of a running group may land again (same order
        # wins), none after it ended. request_group_cancel writes the cancelling one too.
        status = Status.RUNNING
        order = cancelling_order(1) if parent.cancel_requested_at else running_order(1)
    else:
        status, order = Status.ENQUEUED, ENQUEUED_ORDER
    if counts.failed:
        values.update(_failures(children))
    values.update(status=status, state_order=order)
    if all(
        getattr(parent, name) == value for name, value in values.items() if name != "updated_at"
    ):
        # Nothing new: the row keeps its updated_at, by which the cleanup tells a group
        # that stopped moving (never run, or a child's message lost).
        return None
    if not rows.filter(pk=pk, state_order__lte=order).update(**values):
        return None
    changed = parent.status != status
    for name, value in values.items():
        setattr(parent, name, value)
    return Refreshed(parent, changed)


def _asked_long_ago(parent: Task) -> bool:
    asked = parent.cancel_requested_at
    margin = cancel_at_once_margin(float(conf.CANCEL_CHECK_INTERVAL))
    return asked is not None and asked < timezone.now() - margin


@dataclass(frozen=True)
class _Counts:
    total: int
    ended: int
    done: int
    failed: int
    cancelled: int
    running: int
    queued: int  # sent, not started
    waiting: int
    progress: int  # sum over the children, each 0 to 100
    retryable: int  # failed or cancelled, with a stored message
    first_stopped: int | None  # position of the first failed or cancelled child
    started_at: datetime | None
    finished_at: datetime | None


def _aggregate(children: QuerySet[Task]) -> _Counts:
    complete = Q(status__in=COMPLETE_STATUSES)
    not_run = Q(status=Status.SKIPPED, error_type=NOT_RUN_ERROR)
    waiting = Q(status=Status.ENQUEUED, state_order=WAITING_ORDER)
    result = children.aggregate(
        total=Count("pk"),
        ended=Count("pk", filter=complete),
        done=Count("pk", filter=Q(status__in=(Status.DONE, Status.SKIPPED)) & ~not_run),
        failed=Count("pk", filter=Q(status=Status.FAILED)),
        cancelled=Count("pk", filter=Q(status=Status.CANCELLED)),
        running=Count("pk", filter=Q(status__in=(Status.RUNNING, Status.RETRYING))),
        queued=Count("pk", filter=Q(status__in=(Status.ENQUEUED, Status.DELAYED)) & ~waiting),
        waiting=Count("pk", filter=waiting),
        # Each child counts with its own progress; a finished one as whole, a step that
        # never ran as nothing, a cancelled one as far as it got.
        progress=Sum(
            Case(
                When(not_run, then=Value(0)),
                When(status=Status.CANCELLED, then="progress"),
                When(complete, then=Value(100)),
                default="progress",
                output_field=IntegerField(),
            )
        ),
        retryable=Count("pk", filter=Q(status__in=RETRYABLE_STATUSES, retry_message__isnull=False)),
        first_stopped=Min("position", filter=Q(status__in=RETRYABLE_STATUSES)),
        started_at=Min("started_at"),
        finished_at=Max("finished_at"),
    )
    nullable = ("first_stopped", "started_at", "finished_at")
    counts: dict[str, Any] = {k: v if k in nullable else int(v or 0) for k, v in result.items()}
    return _Counts(**counts)


def _mark_not_run(children: QuerySet[Task], after_position: int | None) -> int:
    """Mark the steps still waiting after a failed or cancelled step as not run; those
    asked to cancel (the group was) end ``cancelled``, as a worker would have ended them."""
    now = timezone.now()
    asked = Q(cancel_requested_at__isnull=False)
    # Assignments in this order: MySQL evaluates each one with the columns set before it.
    return int(
        children.filter(
            position__gt=after_position or 0, status=Status.ENQUEUED, state_order=WAITING_ORDER
        ).update(
            error_type=Case(When(asked, then=Value("")), default=Value(NOT_RUN_ERROR)),
            finished_at=now,
            updated_at=now,
            state_order=TERMINAL_ORDER,
            status=Case(
                When(asked, then=Value(Status.CANCELLED.value)),
                default=Value(Status.SKIPPED.value),
            ),
        )
    )


def _failures(children: QuerySet[Task]) -> dict[str, str]:
    """The error of a group: which children failed, and the first one's error."""
    failed = list(
        children.filter(status=Status.FAILED)
        .order_by("position", "pk")
        .values_list("description", "actor_name", "error_type", "error_message")[
            : NAMED_FAILURES + 1
        ]
    )
    names = [text_of(description or actor) for description, actor, _, _ in failed]
    shown = ", ".join(names[:NAMED_FAILURES]) + (", \u2026" if len(names) > NAMED_FAILURES else "")
    error_type, error_message = failed[0][2], failed[0][3]
    detail = f": {error_message or error_type}" if (error_message or error_type) else ""
    return {
        "error_type": clean_text(error_type, 255),
        # "Check them failed: Order 4631 has no customer"
        "error_message": clean_text(gettext("%(names)s failed") % {"names": shown} + detail, 2000),
    }
