"""The state machine's writes: upserts keyed by the message id and guarded by
``state_order``, so hooks may run in any order, in any process, and the row ends at the
furthest state any of them reached. Every write is a batch (:func:`write_batch`), one
statement per shape of row; it returns the rows as written and tells no one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import (
    BooleanField,
    Case,
    CharField,
    DateTimeField,
    F,
    Field,
    JSONField,
    PositiveIntegerField,
    PositiveSmallIntegerField,
    Q,
    TextField,
    Value,
    When,
)
from django.db.models.expressions import Col
from django.utils import timezone

from taskstate.core import conf
from taskstate.core.bounds import bounded, server_bounds
from taskstate.core.conf import get_settings
from taskstate.core.for_state import Origin
from taskstate.core.states import (
    ACTIVE_STATUSES,
    ENQUEUED_ORDER,
    TERMINAL_ORDER,
    Status,
    cancel_at_once_margin,
    cancelling_order,
    running_order,
)
from taskstate.core.values import clean_text, text_of

if TYPE_CHECKING:
    from taskstate.core.models import Task

logger = logging.getLogger("taskstate")


def _model() -> type[Task]:
    # django_dramatiq imports the middleware, and with it this module, while Django is
    # still creating app configs: the model can only be imported once a write happens.
    from taskstate.core.models import Task

    return Task


def _stored_defaults() -> dict[str, Any]:
    # Every column's default for an upsert's insert: callable ones (a time) made each call.
    fixed, made = _defaults()
    return fixed | {f.attname: _storable(f.attname, f.get_default()) for f in made}


@functools.cache
def _defaults() -> tuple[dict[str, Any], list[Field[Any, Any]]]:
    fields = [f for f in _model()._meta.concrete_fields if not f.primary_key]
    # (A field without a default has NOT_PROVIDED, a class, so callable too: made once.)
    made = [f for f in fields if f.has_default() and callable(f.default)]
    fixed = {f.attname: _storable(f.attname, f.get_default()) for f in fields if f not in made}
    return fixed, made


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
            object_type=_ascii(identity.object_type, 201),
            object_pk=_ascii(identity.object_pk, 255),
        ),
    )


def _ascii(value: Any, limit: int) -> str:
    # ASCII with escapes: storable by every backend and charset, and still readable.
    text = text_of(value).encode("ascii", "backslashreplace").decode("ascii")
    return clean_text(text, limit)


# --- owner control -----------------------------------------------------------------------


def request_cancel(pk: int) -> bool:
    """Record a cancel request on task ``pk`` in one guarded statement. True if it landed.

    A task scheduled well ahead ends ``cancelled`` at once; any other active task keeps its
    status, marked, for a worker to end (docs/owner-control.md).
    """
    return bool(
        _model()
        .objects.using(_alias())
        .filter(pk=pk, status__in=ACTIVE_STATUSES, cancel_requested_at__isnull=True)
        .update(**_cancel_changes(timezone.now()))
    )


def request_group_cancel(pk: int) -> bool:
    """Record a cancel request on group ``pk`` (False if asked already) and, as
    :func:`request_cancel` does, on each active child: two statements in one transaction."""
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
    # Only a task whose message cannot be taken before every worker knows of the request
    # ends now; a worker that had not heard of it would run the body of a cancelled row.
    margin = cancel_at_once_margin(float(conf.CANCEL_CHECK_INTERVAL))
    at_once = Q(status__in=(Status.DELAYED, Status.RETRYING), due_at__gt=now + margin)
    # Assignments in this order: MySQL evaluates each one with the columns set before it,
    # so status, which the others test, is set last.
    return {
        "cancel_requested_at": now,
        "updated_at": now,
        "finished_at": Case(When(at_once, then=Value(now)), default=F("finished_at")),
        "state_order": Case(
            When(at_once, then=Value(TERMINAL_ORDER)),
            When(
                status=Status.RUNNING,
                then=F("attempts") * 10 + (cancelling_order(1) - 10),
            ),
            default=F("state_order"),
            output_field=PositiveIntegerField(),
        ),
        "status": Case(When(at_once, then=Value(Status.CANCELLED.value)), default=F("status")),
    }


#: Seconds each look for cancel requests reaches back beyond the last: a request stamped by
#: a web server's clock a little before a look may commit after it.
CANCEL_LOOK_OVERLAP = 30.0


def cancels_since(since: datetime | None, connection: BaseDatabaseWrapper) -> list[str] | None:
    """Message ids of the tasks asked to cancel since ``since`` (None: every request a
    worker may still meet), in one indexed read of fixed text on the caller's
    ``connection``. None when the database could not be read (the connection is closed)."""
    alias = _alias()
    later, first = _cancel_reads(connection)
    adapt = connection.ops.adapt_datetimefield_value
    if since is not None:
        sql, params = later, [adapt(since - timedelta(seconds=CANCEL_LOOK_OVERLAP))]
    else:
        recently = timezone.now() - timedelta(days=1)
        sql, params = first, [*(s.value for s in ACTIVE_STATUSES), adapt(recently)]
    try:
        with bounded(connection), connection.cursor() as cursor:
            cursor.execute(sql, params)
            found = [row[0] for row in cursor.fetchall()]
    except Exception as exc:
        _outage.failed(alias, exc)
        with contextlib.suppress(Exception):
            connection.close()
        return None
    _outage.recovered(alias)
    return found


_CANCEL_READS: dict[str, tuple[str, str]] = {}


def _cancel_reads(connection: BaseDatabaseWrapper) -> tuple[str, str]:
    # The requests since a time, and the first look; unordered (no sort of every row read).
    known = _CANCEL_READS.get(connection.vendor)
    if known is not None:
        return known

    q = connection.ops.quote_name
    asked = q("cancel_requested_at")
    read = f"SELECT {q('message_id')} FROM {q(_model()._meta.db_table)} WHERE {asked} IS NOT NULL"
    statuses = ", ".join("%s" for _ in ACTIVE_STATUSES)
    texts = (
        f"{read} AND {asked} >= %s",
        # Still waiting or running, ended early with its message still due (a scheduled
        # task), or ended lately (its message may be delivered again).
        f"{read} AND ({q('status')} IN ({statuses}) OR ({q('due_at')} IS NOT NULL AND "
        f"{q('finished_at')} < {q('due_at')}) OR {asked} >= %s)",
    )
    _CANCEL_READS[connection.vendor] = texts
    return texts


def database_down() -> bool:
    """Whether the last statement through the task database failed for want of it."""
    return _outage.is_down(_alias())


def cancel_requested(message_id: str) -> bool:
    """Whether the task of ``message_id`` was asked to cancel: one read, never raises.
    Nothing is read while the database is failing: a second wait would double the actor's."""
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


def _storable(column: str, value: Any) -> Any:
    # Text from actors and senders: no lone surrogates, no NUL (PostgreSQL refuses both),
    # cut to the column, so one odd character never costs the row.
    if isinstance(value, str):
        return clean_text(value, getattr(_field(column), "max_length", None))
    return value


def _alias() -> str:
    return get_settings().DATABASE


# --- SQL -------------------------------------------------------------------------------


@functools.cache
def _field(column: str) -> Field[Any, Any]:
    for field in _model()._meta.concrete_fields:
        if field.attname == column:
            return field
    raise LookupError(column)


#: Fields whose database value is a value of this exact type unchanged, on every backend
#: (an aware datetime too, on PostgreSQL): skipping get_db_prep_save saves most of a
#: row's parameter preparation.
_STORED_AS_IS: dict[type, type] = {
    CharField: str,
    TextField: str,
    PositiveIntegerField: int,
    PositiveSmallIntegerField: int,
    BooleanField: bool,
}


def _preparer(field: Field[Any, Any], connection: BaseDatabaseWrapper) -> Callable[[Any], Any]:
    """How a value of ``field`` becomes its database value; None is None for every field."""
    prep = functools.partial(field.get_db_prep_save, connection=connection)
    as_is = _STORED_AS_IS.get(type(field))
    if as_is is not None:
        return lambda v: v if v is None or type(v) is as_is else prep(v)
    if type(field) is DateTimeField and connection.vendor == "postgresql":
        return lambda v: v if v is None or (type(v) is datetime and v.tzinfo) else prep(v)
    return lambda v: None if v is None else prep(v)


def _links(
    connection: BaseDatabaseWrapper,
) -> dict[str, tuple[str, str | None, Callable[[Any], Any]]]:
    """For the user and the retried task: the subquery that turns a key into a link (``{}``:
    the key; one that names no row leaves no link, so it never fails the write), the key's
    type, and how a key is prepared."""
    q = connection.ops.quote_name
    user_model = get_user_model()
    user_pk, own_pk = user_model._meta.pk, _model()._meta.pk
    assert user_pk is not None
    assert own_pk is not None
    user_column = q(user_pk.column or user_pk.attname)
    return {
        "user_id": (
            f"(SELECT {user_column} FROM {q(user_model._meta.db_table)} "
            f"WHERE {user_column} = {{}})",
            user_pk.rel_db_type(connection),
            functools.partial(user_pk.get_db_prep_value, connection=connection),
        ),
        "retry_of_id": (
            f"(SELECT {q('id')} FROM {q(_model()._meta.db_table)} AS _old WHERE {q('id')} = {{}})",
            own_pk.rel_db_type(connection),
            int,
        ),
    }


#: Placeholder makers by connection (each thread has its own connection object).
_makers: weakref.WeakKeyDictionary[
    BaseDatabaseWrapper, Callable[[dict[str, Any]], tuple[list[str], list[Any]]]
] = weakref.WeakKeyDictionary()


def _placeholder_maker(
    connection: BaseDatabaseWrapper,
) -> Callable[[dict[str, Any]], tuple[list[str], list[Any]]]:
    # A row's VALUES placeholders and parameters; what does not depend on the row made once.
    known = _makers.get(connection)
    if known is None:
        known = _makers[connection] = _new_placeholder_maker(connection)
    return known


def _new_placeholder_maker(
    connection: BaseDatabaseWrapper,
) -> Callable[[dict[str, Any]], tuple[list[str], list[Any]]]:
    links = _links(connection)
    prepare: dict[str, Callable[[Any], Any]] = {}

    def make(columns: dict[str, Any]) -> tuple[list[str], list[Any]]:
        placeholders: list[str] = []
        params: list[Any] = []
        for column, value in columns.items():
            link = links.get(column)
            if link is not None and value is None:
                placeholders.append("NULL")  # no lookup: MySQL refuses a subquery on the table
                continue
            if link is not None:
                lookup, _, prepare_key = link
                placeholders.append(lookup.format("%s"))
                params.append(prepare_key(value))
                continue
            placeholders.append("%s")
            known = prepare.get(column)
            if known is None:
                known = prepare[column] = _preparer(_field(column), connection)
            params.append(known(value))
        return placeholders, params

    return make


def _with_bounds(
    bounds: list[tuple[str, str]], sql: str, params: list[Any]
) -> tuple[str, list[Any]]:
    """Prefix the upsert with its timeouts: a statement of their own (a statement_timeout
    set inside a statement does not bound it), in the same round trip and transaction."""
    calls = ", ".join("set_config(%s, %s, true)" for _ in bounds)
    prefix = [value for pair in bounds for value in pair]
    return f"SELECT {calls}; {sql}", prefix + params


def _is_psycopg3(connection: BaseDatabaseWrapper) -> bool:
    return getattr(getattr(connection, "Database", None), "__name__", "") == "psycopg"


def _read_times_in_c(connection: BaseDatabaseWrapper, cursor: Any) -> None:
    """Read this cursor's ``timestamptz`` values with psycopg's own loader where it gives
    what Django's does (a UTC session, ``USE_TZ``): Django's subclasses the pure-Python
    loader, about 6 µs a value against under 1 for the C one of psycopg-binary."""
    if _is_psycopg3(connection) and connection.timezone is dt_timezone.utc:
        cursor.cursor.adapters.register_loader("timestamptz", _psycopg_timestamptz())


@functools.cache
def _psycopg_timestamptz() -> type:
    from psycopg import adapters, postgres
    from psycopg.pq import Format

    loader = adapters.get_loader(postgres.types["timestamptz"].oid, Format.TEXT)
    assert loader is not None  # psycopg has one for every built-in type
    return loader


#: Row readers by connection (each thread has its own connection object), with the alias.
_readers: weakref.WeakKeyDictionary[
    BaseDatabaseWrapper, tuple[str, Callable[[Sequence[Any]], Task]]
] = weakref.WeakKeyDictionary()


def _row_reader(connection: BaseDatabaseWrapper, alias: str) -> Callable[[Sequence[Any]], Task]:
    """Turns a returned row into a Task as Django's queries do, with the column converters
    worked out once per connection."""
    known = _readers.get(connection)
    if known is not None and known[0] == alias:
        return known[1]
    model = _model()
    fields = model._meta.concrete_fields
    attnames = [f.attname for f in fields]
    # Only the columns that have converters (a few): the others are taken as they come.
    steps = []
    for index, field in enumerate(fields):
        col = Col(model._meta.db_table, field)
        converters = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
        if converters:
            steps.append((index, col, converters))
    width = len(fields)

    def read(row: Sequence[Any]) -> Task:
        if len(row) != width:
            raise ValueError(f"a row of {len(row)} columns, not {width}")
        values = list(row)
        for index, col, converters in steps:
            value = values[index]
            for converter in converters:
                value = converter(value, col, connection)
            values[index] = value
        return model.from_db(alias, attnames, values)

    _readers[connection] = (alias, read)
    return read


# --- batches: every write (the sender's, the worker's, the background writer's) -------

#: Order keys of running attempts (``running_order``): the only ones a write may repeat.
_RUNNING_STEP = running_order(2) - running_order(1)
_RUNNING_REST = running_order(1) % _RUNNING_STEP
#: Columns of an attempt's error: a running write keeps the ones of the attempt before.
_ERROR_COLUMNS = ("error_type", "error_message", "traceback")

#: Told how a queued change ended: the row as written (None: refused, or not written),
#: and whether it was written (False: the database could not be reached).
Notify = Callable[["Task | None", bool], None]


def is_running_order(order: int) -> bool:
    """True for the order key of a running attempt (a write may repeat it)."""
    return order % _RUNNING_STEP == _RUNNING_REST and order < TERMINAL_ORDER


class Outage(Exception):
    """The database could not be reached: nothing of the batch was written, or, row by row,
    only the first ``len(written)`` changes (committed)."""

    def __init__(self, *args: object, written: list[Task | None] | None = None) -> None:
        super().__init__(*args)
        self.written: list[Task | None] = written or []


@dataclass(eq=False)
class Change:
    """One transition (or progress report) of one message, for :func:`write_batch`."""

    origin: Origin
    status: Status
    order: int
    values: dict[str, Any]
    keep: tuple[str, ...] = ()
    #: A progress report alone: announced as progress, not as a status change.
    progress_only: bool = False
    #: Someone waits for this change: its batch is written without waiting for others.
    urgent: bool = False
    #: Called by the writer once the change's batch is written (or could not be).
    notify: list[Notify] = dataclass_field(default_factory=list)
    #: Set by the writer: the monotonic time of the oldest change merged in.
    since: float = 0.0
    #: It ends an attempt (an ack waits for it), or a change merged into it did.
    final: bool = False

    def then(self, later: Change) -> Change:
        """This change and a later one of the same message, as one: what the row would hold
        had both been written in turn (both are told how it ended)."""
        notify = self.notify + later.notify
        urgent = self.urgent or later.urgent
        final = self.final or later.final
        since = min(self.since, later.since) if self.since and later.since else self.since
        if later.order < self.order or (
            later.order == self.order and not is_running_order(later.order)
        ):
            return replace(self, notify=notify, urgent=urgent, since=since, final=final)
        values = {**self.values, **later.values}
        for column in self.keep:
            if self.values.get(column) is not None:
                values[column] = self.values[column]  # as COALESCE would keep it
        if (
            is_running_order(later.order)
            and self.values.get("error_type")
            and not later.values.get("error_type")
        ):
            # A running write keeps the error of the retrying attempt before it.
            for column in _ERROR_COLUMNS:
                values[column] = self.values.get(column, "")
        return Change(
            origin=later.origin,
            status=later.status,
            order=later.order,
            values=values,
            keep=tuple(dict.fromkeys(self.keep + later.keep)),
            progress_only=self.progress_only and later.progress_only,
            urgent=urgent,
            notify=notify,
            since=since,
            final=final,
        )


#: Written by the sender's and the running change only: no later write puts them back.
_WRITTEN_ONCE = ("retry_message", "retry_of_id")


def waits_for_disk(change: Change) -> bool:
    """Whether ``change``'s commit must wait for the disk: an ack relies on it, or no later
    write of the task repeats what it carries (any other is repaired by the task's next)."""
    return change.final or any(change.values.get(c) is not None for c in _WRITTEN_ONCE)


def write_batch(changes: Sequence[Change], *, durable: bool = True) -> list[Task | None]:
    """Write ``changes`` (at most one per message) in one transaction: one statement per
    shape of row (usually one), one commit. Returns each change's row as written, or None
    when it was refused (a step backwards); raises :class:`Outage` when the database
    cannot be reached. A refused value costs the batch its statement: its rows are written
    one by one, and a row refused alone without the values at fault. ``keep`` columns keep
    a value the row has (``COALESCE``); the same order key lands again only for a running
    attempt (a redelivery); a running change keeps the row's error unless it brings one.

    ``durable=False`` (PostgreSQL, own transaction): ``synchronous_commit`` off for this
    transaction alone, for rows a later write of the task repairs (docs/reliability.md).
    """
    alias = _alias()
    try:
        return _write_or_raise(alias, changes, durable)
    except _BAD_VALUES as exc:
        problem: BaseException = exc
    if len(changes) > 1:
        logger.info(
            "taskstate: a batch of %d task-state rows was refused (%s: %s); writing "
            "them one by one.",
            len(changes),
            type(problem).__name__,
            text_of(problem, 300),
        )
        one_by_one: list[Task | None] = []
        for change in changes:
            try:
                one_by_one.extend(write_batch([change], durable=durable))
            except Outage as outage:
                # The rows before this one are committed: the caller announces them.
                raise Outage(str(outage), written=one_by_one) from outage
        return one_by_one
    (change,) = changes
    logger.warning(
        "taskstate: task %s could not be written as %s with its values (%s: %s); writing "
        "the status without result, progress message and error text.",
        change.origin.message_id,
        change.status.value,
        type(problem).__name__,
        text_of(problem, 500),
    )
    plain = replace(
        change, origin=_plain_origin(change.origin), values=_without_values(change.values)
    )
    try:
        return _write_or_raise(alias, [plain], durable)
    except Outage:
        raise
    except Exception as exc:
        _outage.failed(alias, exc)
        return [None]


def _write_or_raise(alias: str, changes: Sequence[Change], durable: bool) -> list[Task | None]:
    try:
        written = _batch_once(alias, changes, durable)
    except _OUTAGES as exc:
        _outage.failed(alias, exc)
        raise Outage(str(exc)) from exc
    _outage.recovered(alias)
    return written


def _batch_once(alias: str, changes: Sequence[Change], durable: bool) -> list[Task | None]:
    connection = connections[alias]
    now = timezone.now()
    shapes: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
    rows = []
    defaults = _stored_defaults()
    for index, change in enumerate(changes):
        updated = _batch_values(change, now)
        rows.append(_row(change.origin, updated, defaults))
        # Columns kept that the change does not set play no part: same statement.
        keep = tuple(sorted(c for c in set(change.keep) if c in updated))
        shapes.setdefault((tuple(updated), keep), []).append(index)
    found: dict[str, Task] = {}
    # Senders' rows, nearly always new: of a row it inserted the database returns only what
    # it decided, the rest is as sent (building it costs less than reading it back).
    fresh = connection.vendor == "postgresql" and all(c.order <= ENQUEUED_ORDER for c in changes)
    statements = []
    #: Each statement's rows as sent, by message id.
    sent: list[dict[str, dict[str, Any]]] = []
    #: Rows a statement returned not whole: read back.
    moved: list[str] = []
    for (names, kept), indexes in shapes.items():
        # As many rows per statement as the database takes parameters (PostgreSQL: all, in JSON).
        per = (
            len(indexes)
            if connection.vendor == "postgresql"
            else max(1, _max_params(connection) // (len(rows[indexes[0]]) + 1))
        )
        for start in range(0, len(indexes), per):
            chunk = [rows[i] for i in indexes[start : start + per]]
            statements.append(_batch_sql(connection, chunk, list(names), kept, fresh=fresh))
            sent.append({row["message_id"]: row for row in chunk} if fresh else {})
    came = [change.origin.message_id for change in changes if change.status is Status.CANCELLED]
    if came:
        # A worker's cancel refused by a row cancelled before its message was due: the
        # message came, so the cleanup may delete the row. After the upserts, same transaction.
        statements.append(_message_came(connection, came))
        sent.append({})
    # One commit per batch. Inside a caller's transaction a savepoint keeps a failed write
    # from breaking it, and nothing is bounded: settings local to the transaction would
    # outlast the write. Server-side binding cannot send two statements at once.
    in_caller = connection.in_atomic_block
    several = len(statements) > 1 or in_caller
    guard = transaction.atomic(using=alias) if several else nullcontext()
    with bounded(connection), guard, connection.cursor() as cursor:
        if not fresh:
            _read_times_in_c(connection, cursor)  # the rows returned whole
        options = connection.settings_dict.get("OPTIONS", {})
        bounds = []
        if not in_caller and options.get("server_side_binding") is not True:
            bounds = server_bounds(connection)
        if bounds and not durable:
            bounds = [*bounds, ("synchronous_commit", "off")]
        for number, (sql, params) in enumerate(statements):
            if bounds and number == 0:
                # Local to the batch's transaction: they bound every statement of it.
                sql, params = _with_bounds(bounds, sql, params)
            cursor.execute(sql, params)
            if bounds and number == 0 and _is_psycopg3(connection):
                cursor.nextset()
            if " RETURNING " in sql and fresh:
                for message_id, *decided, inserted in cursor.fetchall():
                    if inserted:
                        found[message_id] = _built(alias, sent[number][message_id], decided)
                    else:
                        moved.append(message_id)
            elif " RETURNING " in sql:
                read = _row_reader(connection, alias)
                for row in cursor.fetchall():
                    task = read(row)
                    found[task.message_id] = task
        if not any(" RETURNING " in sql for sql, _ in statements):
            moved = [change.origin.message_id for change in changes]  # MySQL: every row
        if moved:
            # Read back within the bounds: only a write that landed set updated_at to ours
            # (MySQL's row count cannot tell a refused write from an insert).
            for task in _model().objects.using(alias).filter(message_id__in=moved):
                if task.updated_at == now:
                    found[task.message_id] = task
    return [found.get(change.origin.message_id) for change in changes]


#: What the database decides in a sender's row: its key and the links it found.
_DECIDED = ("id", "user_id", "retry_of_id")


def _built(alias: str, row: dict[str, Any], decided: Sequence[Any]) -> Task:
    """The Task a sender's statement inserted: ``row`` as sent, with what the database
    decided (``_DECIDED``)."""
    values = {**row, **dict(zip(_DECIDED, decided, strict=True))}
    model = _model()
    attnames = [f.attname for f in model._meta.concrete_fields]
    return model.from_db(alias, attnames, [values[name] for name in attnames])


def _message_came(connection: BaseDatabaseWrapper, message_ids: list[str]) -> tuple[str, list[Any]]:
    # Of these rows, those cancelled before their message was due lose their due time.
    q = connection.ops.quote_name
    table = q(_model()._meta.db_table)
    ids = ", ".join("%s" for _ in message_ids)
    sql = (
        f"UPDATE {table} SET {q('due_at')} = NULL WHERE {q('message_id')} IN ({ids}) "
        f"AND {q('status')} = %s AND {q('cancel_requested_at')} IS NOT NULL "
        f"AND {q('finished_at')} < {q('due_at')}"
    )
    return sql, [*message_ids, Status.CANCELLED.value]


#: With the columns a change sets, the only ones whose values differ between rows of a batch.
_ORIGIN_COLUMNS = frozenset(
    {
        "message_id",
        "actor_name",
        "queue_name",
        "description",
        "app_name",
        "model_name",
        "object_type",
        "object_pk",
        "created_at",
        "user_id",
        "language",
    }
)


def _row(origin: Origin, updated: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Every column of the row an upsert inserts, each as the database stores it."""
    own: dict[str, Any] = {
        "message_id": origin.message_id,
        "actor_name": origin.actor_name,
        "queue_name": origin.queue_name,
        "description": origin.identity.description,
        "app_name": origin.identity.app_name,
        "model_name": origin.identity.model_name,
        "object_type": origin.identity.object_type,
        "object_pk": origin.identity.object_pk,
        "created_at": origin.sent_at,
        "user_id": origin.identity.user_pk,
        "language": origin.language,
        **updated,
    }
    return {**defaults, **{name: _storable(name, value) for name, value in own.items()}}


def _max_params(connection: BaseDatabaseWrapper) -> int:
    # SQLite's own limit (Django says 999 for every version); 65,535 elsewhere.
    if connection.vendor == "sqlite":
        import sqlite3

        return 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return int(connection.features.max_query_params or 65_535)


def _batch_values(change: Change, now: Any) -> dict[str, Any]:
    """The columns ``change`` sets. A change of an attempt sets every column any of the
    attempt's changes sets (with the value the row holds anyway): one shape, one statement."""
    values = change.values
    updated: dict[str, Any] = {"status": change.status.value, "state_order": change.order}
    if "attempts" in values:
        for column in ("result", "due_at"):
            updated[column] = None
        if change.order < TERMINAL_ORDER:
            updated["finished_at"] = None
        if is_running_order(change.order):
            for column in _ERROR_COLUMNS:
                updated[column] = ""  # kept by the statement unless an error comes with it
    updated.update(values)
    updated["updated_at"] = now
    return dict(sorted(updated.items()))


def _batch_sql(
    connection: BaseDatabaseWrapper,
    rows: list[dict[str, Any]],
    updated: list[str],
    keep: Sequence[str],
    *,
    fresh: bool = False,
) -> tuple[str, list[Any]]:
    """One multi-row upsert of ``rows`` (same columns), guarded row by row; ``fresh``: it
    returns ``message_id``, the ``_DECIDED`` columns and whether the row was inserted."""
    names = list(rows[0])
    if connection.vendor == "postgresql" and len(rows) > 1:
        # Its text depends on the columns alone: built once per shape. A single row goes
        # as VALUES: half the planning and execution on the server.
        key = (connection.alias, tuple(names), tuple(updated), tuple(keep), fresh)
        known = _pg_statements.get(key)
        if known is None:
            if len(_pg_statements) > 256:
                _pg_statements.clear()  # shapes are few: only a changed schema gets here
            # A column neither the message nor the change sets: one value, not an array.
            shared = [n for n in names if n not in updated and n not in _ORIGIN_COLUMNS]
            source, prepares = _json_rows(connection, names, shared)
            known = _pg_statements[key] = (
                _upsert_text(connection, source, names, updated, keep, fresh),
                [(name in shared, prepare) for name, prepare in zip(names, prepares, strict=True)],
            )
        sql, steps = known
        first = rows[0]
        # The single values come first in the text, then the rows as one JSON document.
        params = [
            prepare([first[name]], connection)[0]
            for name, (single, prepare) in zip(names, steps, strict=True)
            if single
        ]
        columns = [
            prepare([row[name] for row in rows], connection)
            for name, (single, prepare) in zip(names, steps, strict=True)
            if not single
        ]
        params.append(json.dumps(list(zip(*columns, strict=True)), default=_json_scalar))
        return sql, params
    params = []
    tuples = []
    make = _placeholder_maker(connection)
    for row in rows:
        placeholders, values = make(row)
        tuples.append(f"({', '.join(placeholders)})")
        params.extend(values)
    source = f"VALUES {', '.join(tuples)}"
    if len(rows) > 1:
        return _upsert_text(connection, source, names, updated, keep, fresh), params
    # A single row's text depends on its shape and which links it leaves empty.
    shape = (connection.alias, source, tuple(names), tuple(updated), tuple(keep), fresh)
    text = _values_statements.get(shape)
    if text is None:
        if len(_values_statements) > 256:
            _values_statements.clear()  # shapes are few: only a changed schema gets here
        text = _values_statements[shape] = _upsert_text(
            connection, source, names, updated, keep, fresh
        )
    return text, params


#: Single-row VALUES statements by database, placeholders and shape: their text.
_values_statements: dict[tuple[Any, ...], str] = {}


#: PostgreSQL statements by database and shape: their text, how each column's array is made.
_pg_statements: dict[tuple[Any, ...], tuple[str, list[tuple[bool, _Prepare]]]] = {}
#: Makes one column's array of database values from its Python values.
_Prepare = Callable[[list[Any], BaseDatabaseWrapper], list[Any]]


def _upsert_text(
    connection: BaseDatabaseWrapper,
    source: str,
    names: list[str],
    updated: list[str],
    keep: Sequence[str],
    fresh: bool = False,
) -> str:
    """The upsert of the rows of ``source`` (columns ``names``), guarded row by row."""
    mysql = connection.vendor == "mysql"
    if not mysql and connection.vendor not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"taskstate does not support the {connection.vendor} backend")
    q = connection.ops.quote_name
    table = q(_model()._meta.db_table)

    def old(c: str) -> str:
        return q(c) if mysql else f"{table}.{q(c)}"

    def new(c: str) -> str:
        return f"VALUES({q(c)})" if mysql else f"EXCLUDED.{q(c)}"

    order, new_order = old("state_order"), new("state_order")
    # %% : a literal % in a statement with parameters.
    running = f"{new_order} %% {_RUNNING_STEP} = {_RUNNING_REST}"
    forwards = f"({order} < {new_order} OR ({order} = {new_order} AND {running}))"
    sets = []
    # MySQL evaluates each assignment with the columns set before it: state_order goes last.
    for c in sorted(updated, key=lambda c: c == "state_order"):
        value = new(c)
        if c in keep:
            value = f"COALESCE({old(c)}, {value})"
        elif c in _ERROR_COLUMNS:
            value = (
                f"CASE WHEN {running} AND {new('error_type')} = '' THEN {old(c)} ELSE {value} END"
            )
        sets.append(f"{q(c)} = IF({forwards}, {value}, {q(c)})" if mysql else f"{q(c)} = {value}")
    sql = f"INSERT INTO {table} ({', '.join(q(c) for c in names)}) {source} "
    if mysql:
        return sql + f"ON DUPLICATE KEY UPDATE {', '.join(sets)}"
    sql += f"ON CONFLICT ({q('message_id')}) DO UPDATE SET {', '.join(sets)} WHERE {forwards}"
    if fresh:
        # PostgreSQL leaves xmax 0 in a row it inserted, not in one it updated on conflict.
        # (Every column, each NULL when inserted, costs the server more than all of them.)
        returned = [f"{table}.{q(c)}" for c in ("message_id", *_DECIDED)]
        sql += " RETURNING " + ", ".join(returned) + f", {table}.xmax = 0"
    elif connection.features.can_return_rows_from_bulk_insert:
        # Task has no db_column overrides: its column names are its attribute names.
        returned = [f"{table}.{q(f.attname)}" for f in _model()._meta.concrete_fields]
        sql += " RETURNING " + ", ".join(returned)
    return sql


def _json_rows(
    connection: BaseDatabaseWrapper, names: list[str], shared: Sequence[str]
) -> tuple[str, list[_Prepare]]:
    """PostgreSQL: the rows as one JSON array of arrays (``shared`` columns: one value), so
    the text does not depend on the number of rows and is parsed once; and how each
    column's values are made. One document costs the server and the client less than one
    array per column."""
    links = _links(connection)
    selected = []
    prepares: list[_Prepare] = []
    index = 0
    for name in names:
        field = _field(name)
        link = links.get(name)
        db_type = link[1] if link is not None else field.db_type(connection)
        if name in shared:
            column = f"%s::{db_type}"
        elif isinstance(field, JSONField):
            # A JSON null is no value: SQL NULL, as Django stores None.
            column = f"NULLIF(_rows.r->{index}, 'null'::jsonb)"
            index += 1
        else:
            column = f"(_rows.r->>{index})::{db_type}"
            index += 1
        if link is not None:
            selected.append(link[0].format(column))
            prepares.append(functools.partial(_keys, link[2]))
        else:
            selected.append(column)
            prepares.append(functools.partial(_column_values, field, name in shared))
    source = f"SELECT {', '.join(selected)} FROM jsonb_array_elements(%s::jsonb) AS _rows(r)"
    return source, prepares


def _json_scalar(value: Any) -> Any:
    # What json.dumps cannot write itself: times (ISO 8601, which PostgreSQL reads in any
    # DateStyle) and keys such as UUIDs.
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _keys(
    prepare_key: Callable[[Any], Any], values: list[Any], connection: BaseDatabaseWrapper
) -> list[Any]:
    return [None if v is None else prepare_key(v) for v in values]


def _column_values(
    field: Field[Any, Any], single: bool, values: list[Any], connection: BaseDatabaseWrapper
) -> list[Any]:
    if isinstance(field, JSONField) and not single:
        return values  # already plain JSON (values.json_value): nested in the document
    prepare = _preparer(field, connection)
    return [prepare(v) for v in values]


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
        return alias in self._down

    def recovered(self, alias: str) -> None:
        if alias in self._down:
            with self._lock:
                if alias not in self._down:
                    return
                self._down.discard(alias)
            logger.warning("taskstate: database %r answers again; recording task state.", alias)


_outage = _OutageLog()
