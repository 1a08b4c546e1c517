"""The state machine's writes: one guarded upsert per change, which tells no one.

Every transition is a single upsert keyed by the message id and guarded by
``state_order`` (see ``taskstate.states``): a write lands only when it moves the task
forwards. Hooks may run in any order, in any process, before or after the sender's
transaction commits; the row always ends at the furthest state any of them reached.

A write returns the row as written; announcing it (``taskstate.signals``) is the
caller's business, so this module knows nothing of who listens.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Case, CharField, F, Field, PositiveIntegerField, Q, Value, When
from django.db.models.expressions import Col, RawSQL
from django.utils import timezone

from taskstate.bounds import bounded, server_bounds
from taskstate.conf import get_settings
from taskstate.for_state import Origin
from taskstate.states import (
    ABANDONED_ERROR,
    ACTIVE_STATUSES,
    DELAYED_ORDER,
    ENQUEUED_ORDER,
    TERMINAL_ORDER,
    WAITING_STATUSES,
    Status,
    cancelling_order,
    retrying_order,
    running_order,
)
from taskstate.values import clean_text, text_of

if TYPE_CHECKING:
    from taskstate.models import Task

__all__ = [
    "ABANDONED_ERROR",
    "DELAYED_ORDER",
    "ENQUEUED_ORDER",
    "TERMINAL_ORDER",
    "Origin",
    "Status",
    "cancel_requested",
    "cancelling_order",
    "request_cancel",
    "request_group_cancel",
    "retrying_order",
    "running_order",
    "update_progress",
    "write",
]

logger = logging.getLogger("taskstate")


def _model() -> type[Task]:
    # django_dramatiq imports the middleware, and with it this module, while Django is
    # still creating app configs: the model can only be imported once a write happens.
    from taskstate.models import Task

    return Task


def _defaults() -> dict[str, Any]:
    """Every column's default, for the insert branch of an upsert (no DB defaults exist)."""
    return {f.attname: f.get_default() for f in _model()._meta.concrete_fields if not f.primary_key}


def write(
    origin: Origin,
    status: Status,
    order: int,
    values: dict[str, Any],
    *,
    same_order_wins: bool = False,
    keep: Sequence[str] = (),
) -> Task | None:
    """Move the task of ``origin`` to ``status`` in one statement, if that is forwards.

    ``values`` are further columns to set. Columns in ``keep`` keep a value the row
    already has (``COALESCE``). Returns the row as written, or None when the write was
    refused as a step backwards or failed (failures are logged, never raised).
    """
    alias = _alias()
    try:
        return _write_once(alias, origin, status, order, values, same_order_wins, keep)
    except _OUTAGES as exc:
        _outage.failed(alias, exc)
        return None
    except _BAD_VALUES as exc:
        problem: BaseException = exc
    # The database answered but refused a value (or a value could not even be sent): the
    # status still matters more than the value, so write it without the values at fault.
    logger.warning(
        "taskstate: task %s could not be written as %s with its values (%s: %s); writing "
        "the status without result, progress message and error text.",
        origin.message_id,
        status.value,
        type(problem).__name__,
        text_of(problem, 500),
    )
    try:
        return _write_once(
            alias,
            _plain_origin(origin),
            status,
            order,
            _without_values(values),
            same_order_wins,
            keep,
        )
    except Exception as exc:
        _outage.failed(alias, exc)
        return None


# A database that cannot be reached (or timed out): an outage, logged once.
_OUTAGES = (OperationalError, InterfaceError)
# A database that answered but refused a value, or a value that could not be sent.
_BAD_VALUES = (DatabaseError, ValueError, TypeError, RecursionError, OverflowError)

#: What the error text becomes when the write with it failed.
DROPPED_TEXT = "[not stored: taskstate could not write this text, see the worker log]"


def _without_values(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every column an actor fills replaced by something surely storable."""
    safe = dict(values)
    if "result" in safe:
        safe["result"] = None
    if safe.get("progress_message"):
        safe["progress_message"] = ""
    for column in ("error_message", "traceback"):
        if safe.get(column):
            safe[column] = DROPPED_TEXT
    if safe.get("error_type"):
        safe["error_type"] = _ascii(safe["error_type"], 255)
    return safe


def _plain_origin(origin: Origin) -> Origin:
    identity = origin.identity
    return replace(
        origin,
        actor_name=_ascii(origin.actor_name, 255),
        queue_name=_ascii(origin.queue_name, 255),
        language=_ascii(origin.language, 16),
        identity=replace(
            identity,
            description=_ascii(identity.description, 255),
            app_name=_ascii(identity.app_name, 100),
            model_name=_ascii(identity.model_name, 100),
        ),
    )


def _ascii(value: Any, limit: int) -> str:
    # ASCII with escapes: storable by every backend and charset, and still readable.
    text = text_of(value).encode("ascii", "backslashreplace").decode("ascii")
    return clean_text(text, limit)


def _write_once(
    alias: str,
    origin: Origin,
    status: Status,
    order: int,
    values: dict[str, Any],
    same_order_wins: bool,
    keep: Sequence[str],
) -> Task | None:
    connection = connections[alias]
    now = timezone.now()
    updated: dict[str, Any] = {
        "status": status.value,
        "state_order": order,
        "updated_at": now,
        **values,
    }
    columns: dict[str, Any] = {
        **_defaults(),
        "message_id": origin.message_id,
        "actor_name": origin.actor_name,
        "queue_name": origin.queue_name,
        "description": origin.identity.description,
        "app_name": origin.identity.app_name,
        "model_name": origin.identity.model_name,
        "created_at": origin.sent_at,
        "user_id": origin.identity.user_pk,
        "language": origin.language,
        **updated,
    }
    columns = {name: _storable(name, value) for name, value in columns.items()}
    sql, params = _upsert_sql(
        connection, columns, list(updated), same_order_wins=same_order_wins, keep=keep
    )
    task = _execute_returning(connection, alias, sql, params, origin.message_id, now)
    _outage.recovered(alias)
    return task


def update_progress(message_id: str, attempt: int, progress: int, message: str | None) -> bool:
    """Set the progress of a running attempt; one UPDATE, no read. True if a row changed."""
    alias = _alias()
    values: dict[str, Any] = {"progress": progress, "updated_at": timezone.now()}
    if message is not None:
        values["progress_message"] = _storable("progress_message", message)
    try:
        # Inside the actor's own transaction, a savepoint keeps a failed write from
        # aborting it.
        in_caller = connections[alias].in_atomic_block
        guard = transaction.atomic(using=alias) if in_caller else nullcontext()
        with bounded(connections[alias]), guard:
            try:
                changed = _update_progress(alias, message_id, attempt, values)
            except _OUTAGES:
                raise
            except _BAD_VALUES as exc:
                if "progress_message" not in values:
                    raise
                logger.warning(
                    "taskstate: progress message of task %s not stored (%s: %s).",
                    message_id,
                    type(exc).__name__,
                    text_of(exc, 500),
                )
                values.pop("progress_message")
                changed = _update_progress(alias, message_id, attempt, values)
    except Exception as exc:
        _outage.failed(alias, exc)
        return False
    _outage.recovered(alias)
    return bool(changed)


def _update_progress(alias: str, message_id: str, attempt: int, values: dict[str, Any]) -> int:
    rows = _model().objects.using(alias)
    connection = connections[alias]
    if (
        not _synchronous_commit()
        and connection.vendor == "postgresql"
        and not connection.in_atomic_block  # it would last the caller's whole transaction
    ):
        rows = rows.alias(_async=_ASYNC_COMMIT).filter(_async="off")
    # A cancel request stops progress writes: the row says "Cancelling" until the end.
    return rows.filter(
        message_id=message_id,
        status=Status.RUNNING,
        attempts=attempt,
        cancel_requested_at__isnull=True,
    ).update(**values)


# --- owner control -----------------------------------------------------------------------


def request_cancel(pk: int) -> bool:
    """Record a cancel request on task ``pk`` in one guarded statement. True if it landed.

    A task waiting to run (queued, scheduled, between retries) ends ``cancelled`` at once:
    its worker sees that and skips the message. A running task keeps running, marked
    (``cancel_requested_at``, order key ``cancelling``) for its worker to notice. A task
    already complete, or already asked, is left alone: whichever end lands first stays.
    """
    return bool(
        _model()
        .objects.using(_alias())
        .filter(pk=pk, status__in=ACTIVE_STATUSES, cancel_requested_at__isnull=True)
        .update(**_cancel_changes(timezone.now()))
    )


def request_group_cancel(pk: int) -> bool:
    """Record a cancel request on group ``pk`` and on each of its unfinished children.

    Two guarded statements whatever the group's size, in one transaction: the group's row
    (asked once: a second request changes nothing and returns False), then every child
    still active, as :func:`request_cancel` does one task. Children waiting to run (a
    pipeline's steps not sent yet among them) end ``cancelled`` at once; running ones stop
    at their next ``progress()``. The group's own status follows its children
    (``taskstate.groups.refresh_group``).
    """
    now = timezone.now()
    alias = _alias()
    rows = _model().objects.using(alias)
    with transaction.atomic(using=alias):
        asked = (
            rows.filter(pk=pk, status__in=ACTIVE_STATUSES, cancel_requested_at__isnull=True)
            .exclude(kind="")
            .update(
                cancel_requested_at=now,
                updated_at=now,
                # A running group's refresh computed before this request cannot land after it.
                state_order=Case(
                    When(status=Status.RUNNING, then=Value(cancelling_order(1))),
                    default=F("state_order"),
                    output_field=PositiveIntegerField(),
                ),
            )
        )
        if not asked:
            return False
        rows.filter(
            parent_id=pk, status__in=ACTIVE_STATUSES, cancel_requested_at__isnull=True
        ).update(**_cancel_changes(now))
    return True


def _cancel_changes(now: Any) -> dict[str, Any]:
    waiting = Q(status__in=WAITING_STATUSES)
    # Assignments in this order: MySQL evaluates each one with the columns set before it,
    # so status, which the others test, is set last.
    return {
        "cancel_requested_at": now,
        "updated_at": now,
        "finished_at": Case(When(waiting, then=Value(now)), default=F("finished_at")),
        "state_order": Case(
            When(waiting, then=Value(TERMINAL_ORDER)),
            default=F("attempts") * 10 + (cancelling_order(1) - 10),
        ),
        "status": Case(When(waiting, then=Value(Status.CANCELLED.value)), default=F("status")),
    }


def cancel_requested(message_id: str) -> bool:
    """Whether the task of ``message_id`` was asked to cancel: one read, never raises.

    While the database is failing (the write before this one failed) nothing is read: a
    cancel cannot be known then, and a second wait would double the hold-up of the actor.
    """
    alias = _alias()
    if _outage.is_down(alias):
        return False
    try:
        with bounded(connections[alias]):
            return (
                _model()
                .objects.using(alias)
                .filter(message_id=message_id, cancel_requested_at__isnull=False)
                .exists()
            )
    except Exception as exc:
        _outage.failed(alias, exc)
        return False


# In the UPDATE's WHERE clause: its commit skips the WAL flush wait (local to that statement's
# transaction, so the connection's own setting is untouched).
_ASYNC_COMMIT = RawSQL(
    "set_config('synchronous_commit', 'off', true)", [], output_field=CharField()
)


def _synchronous_commit() -> bool:
    return get_settings().SYNCHRONOUS_COMMIT


def _storable(column: str, value: Any) -> Any:
    # Text from actors and senders: no lone surrogates, no NUL (PostgreSQL refuses both),
    # cut to the column, so one odd character never costs the row.
    if isinstance(value, str):
        return clean_text(value, getattr(_field(column), "max_length", None))
    return value


def _alias() -> str:
    return get_settings().DATABASE


# --- SQL -------------------------------------------------------------------------------


def _quote(connection: BaseDatabaseWrapper, name: str) -> str:
    return connection.ops.quote_name(name)


@functools.cache
def _field(column: str) -> Field[Any, Any]:
    # Called for every column of every write: looked up once per column, then cached.
    for field in _model()._meta.concrete_fields:
        if field.attname == column:
            return field
    raise LookupError(column)


def _upsert_sql(
    connection: BaseDatabaseWrapper,
    columns: dict[str, Any],
    updated: list[str],
    *,
    same_order_wins: bool,
    keep: Sequence[str],
) -> tuple[str, list[Any]]:
    def q(name: str) -> str:
        return _quote(connection, name)

    table = q(_model()._meta.db_table)
    user_model = get_user_model()
    user_table = q(user_model._meta.db_table)
    user_pk_field = user_model._meta.pk
    assert user_pk_field is not None
    user_pk_column = q(user_pk_field.column or user_pk_field.attname)

    placeholders: list[str] = []
    params: list[Any] = []
    for column, value in columns.items():
        if column == "retry_of_id" and value is not None:
            # Same as user_id below: a retried task deleted meanwhile leaves no link.
            placeholders.append(f"(SELECT {q('id')} FROM {table} AS _old WHERE {q('id')} = %s)")
            params.append(int(value))
            continue
        if column == "user_id":
            if value is None:
                placeholders.append("NULL")
            else:
                # A user_pk that names no user leaves the task without one, in the same
                # statement, so a bad pk can neither fail the write nor need a lookup.
                placeholders.append(
                    f"(SELECT {user_pk_column} FROM {user_table} WHERE {user_pk_column} = %s)"
                )
                params.append(user_pk_field.get_db_prep_value(value, connection))
            continue
        placeholders.append("%s")
        params.append(_field(column).get_db_prep_save(value, connection))

    names = ", ".join(q(c) for c in columns)
    op = "<=" if same_order_wins else "<"
    if connection.vendor in ("postgresql", "sqlite"):
        sets = ", ".join(
            f"{q(c)} = COALESCE({table}.{q(c)}, EXCLUDED.{q(c)})"
            if c in keep
            else f"{q(c)} = EXCLUDED.{q(c)}"
            for c in updated
        )
        if (
            connection.vendor == "postgresql"
            and not _synchronous_commit()
            and not connection.in_atomic_block  # it would last the caller's transaction
        ):
            # Same statement, but its commit does not wait for the WAL flush: the setting is
            # made local to this statement's own transaction, which is all of it.
            source = (
                f"SELECT {', '.join(placeholders)} FROM "
                f"(SELECT set_config('synchronous_commit', 'off', true)) AS _taskstate WHERE true"
            )
        else:
            source = f"VALUES ({', '.join(placeholders)})"
        sql = (
            f"INSERT INTO {table} ({names}) {source} "
            f"ON CONFLICT ({q('message_id')}) DO UPDATE SET {sets} "
            f"WHERE {table}.{q('state_order')} {op} EXCLUDED.{q('state_order')}"
        )
        if connection.features.can_return_rows_from_bulk_insert:
            sql += " RETURNING " + ", ".join(f"{table}.{q(c)}" for c in _returned_columns())
        return sql, params
    if connection.vendor == "mysql":
        # MySQL applies the assignments left to right: the guard column goes last.
        cond = f"{q('state_order')} {op} VALUES({q('state_order')})"
        assignments = []
        for c in [c for c in updated if c != "state_order"] + ["state_order"]:
            new = f"VALUES({q(c)})"
            if c in keep:
                new = f"COALESCE({q(c)}, {new})"
            assignments.append(f"{q(c)} = IF({cond}, {new}, {q(c)})")
        sql = (
            f"INSERT INTO {table} ({names}) VALUES ({', '.join(placeholders)}) "
            f"ON DUPLICATE KEY UPDATE {', '.join(assignments)}"
        )
        return sql, params
    raise NotImplementedError(f"taskstate does not support the {connection.vendor} backend")


def _returned_columns() -> list[str]:
    # Task has no db_column overrides: its column names are its attribute names.
    return [f.attname for f in _model()._meta.concrete_fields]


def _execute_returning(
    connection: BaseDatabaseWrapper,
    alias: str,
    sql: str,
    params: list[Any],
    message_id: str,
    written_at: Any,
) -> Task | None:
    returning = " RETURNING " in sql
    # Inside a caller's transaction, a savepoint keeps a failed write from breaking it;
    # statement timeouts would outlive the savepoint and a cut socket would break the
    # caller's transaction, so there the write is not bounded (taskstate.bounds).
    in_caller = connection.in_atomic_block
    guard = transaction.atomic(using=alias) if in_caller else nullcontext()
    with bounded(connection), guard, connection.cursor() as cursor:
        bounds = [] if in_caller else _statement_bounds(connection)
        if bounds:
            sql, params = _with_bounds(bounds, sql, params)
        cursor.execute(sql, params)
        if bounds and _is_psycopg3(connection):
            cursor.nextset()  # past the set_config row, to the upsert's own result
        if returning:
            row = cursor.fetchone()
            return None if row is None else _task_from_row(connection, alias, row)
        changed = cursor.rowcount
    if not changed:
        return None
    # Backends without RETURNING after an upsert (MySQL, MariaDB): one read to publish
    # what was written. Their row count cannot tell a refused write from an insert
    # (both count 1), the row's updated_at can: only a write that landed set it to ours.
    task = _model().objects.using(alias).filter(message_id=message_id).first()
    return task if task is not None and task.updated_at == written_at else None


def _statement_bounds(connection: BaseDatabaseWrapper) -> list[tuple[str, str]]:
    # Server-side binding (OPTIONS server_side_binding) cannot send two statements at once.
    if connection.settings_dict.get("OPTIONS", {}).get("server_side_binding") is True:
        return []
    return server_bounds(connection)


def _with_bounds(
    bounds: list[tuple[str, str]], sql: str, params: list[Any]
) -> tuple[str, list[Any]]:
    """Prefix the upsert with its own timeouts, in the same round trip and transaction.

    A statement_timeout set inside a statement does not bound that statement, so the
    set_config runs as a statement of its own, first, in the same implicit transaction.
    """
    calls = ", ".join("set_config(%s, %s, true)" for _ in bounds)
    prefix = [value for pair in bounds for value in pair]
    return f"SELECT {calls}; {sql}", prefix + params


def _is_psycopg3(connection: BaseDatabaseWrapper) -> bool:
    return getattr(getattr(connection, "Database", None), "__name__", "") == "psycopg"


def _task_from_row(connection: BaseDatabaseWrapper, alias: str, row: Sequence[Any]) -> Task:
    values = []
    for field, value in zip(_model()._meta.concrete_fields, row, strict=True):
        col = Col(_model()._meta.db_table, field)
        for converter in connection.ops.get_db_converters(col) + field.get_db_converters(
            connection
        ):
            value = converter(value, col, connection)
        values.append(value)
    return _model().from_db(alias, [f.attname for f in _model()._meta.concrete_fields], values)


class _OutageLog:
    """Log a database failure once per outage, not once per message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down: set[str] = set()

    def failed(self, alias: str, exc: BaseException) -> None:
        with self._lock:
            first = alias not in self._down
            self._down.add(alias)
        if first:
            logger.error(
                "taskstate: cannot write task state to database %r (%s); tasks run on, "
                "their state is not recorded until the database answers again.",
                alias,
                exc,
                exc_info=True,
            )
        else:
            logger.debug("taskstate: database %r still failing: %s", alias, exc)

    def is_down(self, alias: str) -> bool:
        """Whether the last write through ``alias`` failed for want of the database."""
        return alias in self._down

    def recovered(self, alias: str) -> None:
        if alias in self._down:
            with self._lock:
                if alias not in self._down:
                    return
                self._down.discard(alias)
            logger.warning("taskstate: database %r answers again; recording task state.", alias)


_outage = _OutageLog()
