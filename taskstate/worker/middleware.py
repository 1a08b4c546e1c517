"""``StateMiddleware``: Dramatiq hooks turned into task state transitions, nothing else.

Only messages with a ``for_state`` dict are tracked; hooks never raise into the sender or
the actor. A tracked message is acked only once its final state is committed
(docs/reliability.md, "Acks and final rows").
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings as django_settings
from django.db import connections, transaction
from django.utils import timezone as dj_timezone
from django.utils.translation import get_language
from dramatiq import Broker, Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import Middleware, MiddlewareError, SkipMessage

from taskstate.core import conf
from taskstate.core import transitions as t
from taskstate.core.background import background, in_event_loop
from taskstate.core.conf import get_settings
from taskstate.core.for_state import (
    LANGUAGE_OPTION,
    RETRY_OF_OPTION,
    Origin,
    make_encodable,
    moved_by_its_group,
    parse_for_state,
    retry_message,
    tracked_for_state,
)
from taskstate.core.signals import announce, worker_stopped
from taskstate.core.states import (
    DELAYED_ORDER,
    ENQUEUED_ORDER,
    TERMINAL_ORDER,
    Status,
    retrying_order,
    running_order,
)
from taskstate.core.values import UNPRINTABLE, NotStorable, clean_text, exception_facts, json_value
from taskstate.worker.tracking import Cancelled, MessageRun, _current, held_back, mark_cancelled
from taskstate.worker.writer import cancels, writer

if TYPE_CHECKING:
    from taskstate.core.models import Task

logger = logging.getLogger("taskstate")
F = TypeVar("F", bound=Callable[..., Any])


def _never_raises(hook: F) -> F:
    @wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except Exception:
            logger.exception("taskstate: %s failed; the message goes on untracked", hook.__name__)
            return None

    return guarded  # type: ignore[return-value]


class StateMiddleware(Middleware):
    """Record the life of messages sent with ``for_state={...}`` in ``Task`` rows.

    Add ``"taskstate.middleware.StateMiddleware"`` to ``DRAMATIQ_BROKER["MIDDLEWARE"]``,
    anywhere in the list.
    """

    def __init__(self) -> None:
        # Attempts in flight, by message proxy: one message's hooks may run in different
        # threads (the ack in the consumer thread on older Dramatiq).
        self._runs: dict[int, tuple[weakref.ref[Any], MessageRun]] = {}
        self._lock = threading.Lock()
        # Due time of each retried message's next attempt, noted when Retries re-enqueues
        # it: a message acked after an exception and absent here was not retried.
        self._retry_due: dict[str, datetime | None] = {}

    @_never_raises
    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        if message.kwargs and "for_state" in message.kwargs:
            make_encodable(message.kwargs, message.message_id)
            # Travels with the message: whichever write creates the row records it.
            language = (get_language() or "")[:16]
            if language and LANGUAGE_OPTION not in message.options:
                message.options[LANGUAGE_OPTION] = language

    @_never_raises
    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        for_state = tracked_for_state(message.kwargs)
        if for_state is None:
            return
        if moved_by_its_group(message.message_id):
            return  # its group's run() moves its row on, with its siblings'
        if message.options.get("retries"):
            # A retry's re-enqueue: the worker records it as retrying when it acks.
            self._note_retry_due(message)
            return
        origin = _origin(message, for_state, warn=True)
        values: dict[str, Any] = _control_columns(message, origin)
        if delay is not None or "eta" in message.options:
            status, order = Status.DELAYED, DELAYED_ORDER
            values["due_at"] = _due(message)
        else:
            status, order = Status.ENQUEUED, ENQUEUED_ORDER
        # Not queued for the background writer: a page rendered right after send() shows it.
        _sent(t.Change(origin, status, order, values, keep=_CONTROL_KEEP))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if self._start(message):
            # Outside _never_raises: Dramatiq skips the message (the body never runs) and
            # calls after_skip_message, which records it cancelled.
            raise SkipMessage("taskstate: cancelled by its owner")

    @_never_raises
    def _start(self, message: MessageProxy) -> bool | None:
        """Record the attempt as running; True when it was cancelled before it started."""
        for_state = tracked_for_state(message.kwargs)
        if for_state is None:
            return None
        attempt = int(message.options.get("retries") or 0) + 1
        run = MessageRun(
            origin=_origin(message, for_state, warn=False),
            attempt=attempt,
            interval=float(get_settings().PROGRESS_INTERVAL),
            started_at=dj_timezone.now(),
            options=message.options,
        )
        self._remember(message, run)
        _current.set(run)
        if cancels.heard_of(run.origin.message_id):
            # Every request committed before this start is known: the body never runs,
            # and the attempt does not count as one.
            mark_cancelled(run)
            run.attempt -= 1
            run.started_at = None
            return True
        values = {
            **run.attempt_columns(),
            "finished_at": None,
            "due_at": None,
            "progress": 0,
            "progress_message": "",
            **_control_columns(message, run.origin),
        }
        order, keep = running_order(attempt), _KEEP + _CONTROL_KEEP
        change = t.Change(run.origin, Status.RUNNING, order, values, keep=keep)
        # Not waited for: a request committed after the watch's read is a running task's
        # cancel, seen when this row comes back or at the next look.
        change.notify.append(lambda task, written: _running_written(run, task, written))
        writer.submit(change)
        return False

    @_never_raises
    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        run = self._run_of(message)
        if run is None:
            return
        _current.set(None)
        if exception is not None and _is_cancel(exception):
            mark_cancelled(run)
        if exception is not None and run.cancel_requested:
            # Final now: Retries leaves it alone (mark_cancelled), or its retry is skipped.
            run.finished = True
            _write_cancelled(run)
            return
        if exception is None and not message.failed:
            run.finished = True
            values = {**_ended(run), **_NO_ERROR, "progress": 100}
            values["result"] = _storable_result(result, run)
            _write(run.origin, Status.DONE, TERMINAL_ORDER, values)
            if "pipe_target" in message.options and cancels.requested(run.origin.message_id):
                # Asked to cancel and ended before it noticed: the pipeline goes no further
                # (or, with Pipelines after us, its next step is sent and skipped).
                message.options.pop("pipe_target", None)
            return
        # Whether Retries retries it is known once every middleware ran: see _end.
        run.exception = exception

    @_never_raises
    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        for_state = tracked_for_state(message.kwargs)
        if for_state is None:
            return
        _current.set(None)
        run = self._run_of(message)
        if run is not None:
            run.finished = True
            if run.cancel_requested:
                _write_cancelled(run)
                return
        origin = run.origin if run else _origin(message, for_state, warn=False)
        _write(origin, Status.SKIPPED, TERMINAL_ORDER, _ended(run))

    def before_ack(self, broker: Broker, message: MessageProxy) -> None:
        # After every after_process_message: decide, then hold the ack until committed.
        self._end(message, rejected=False)
        self._hold_ack(message)

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message, rejected=True)
        self._hold_ack(message)

    @_never_raises
    def _end(self, message: MessageProxy, *, rejected: bool) -> None:
        """Write the final change of an attempt that ended with an exception."""
        run = self._run_of(message, forget=True)
        if run is None:
            if rejected:
                # Rejected before our worker hooks ran: a tracked task that never runs.
                for_state = tracked_for_state(message.kwargs)
                if for_state is not None:
                    self._fail(_origin(message, for_state, warn=False), None, message)
            return
        if run.finished:
            return
        run.finished = True
        if run.cancel_requested:
            _write_cancelled(run)
            return
        # Acked after an exception: retried if Retries re-enqueued it (after_enqueue saw
        # it), else over (no Retries, or one that failed on this exception). Rejected:
        # Retries gave up, or another middleware failed it.
        retried = not rejected and message.message_id in self._retry_due
        due_at = self._retry_due.pop(message.message_id, None)
        if retried:
            values = {**_error(run.exception, message), **held_back(run), **run.attempt_columns()}
            values["due_at"] = due_at
            _write(run.origin, Status.RETRYING, retrying_order(run.attempt), values)
        else:
            self._fail(run.origin, run, message)

    def _hold_ack(self, message: MessageProxy) -> None:
        """Return once the message's final change is committed; raise :class:`AckWithheld`
        when the worker stops and the database did not answer in ``STOP_ACK_WAIT``."""
        try:
            if tracked_for_state(message.kwargs) is None or "eta" in message.options:
                # A delayed copy, acked by the consumer thread once the copy to run is
                # enqueued: it ran nothing, and the consumer (heartbeats) must not wait.
                return
            if writer.wait_written(message.message_id):
                return
        except Exception:
            logger.exception("taskstate: waiting for the final state of %s failed", message)
            return
        logger.error(
            "taskstate: message %s is left unacknowledged: its final state could not be "
            "written before the worker stops (the database does not answer). The broker "
            "delivers it again to a worker (Redis: once this worker's heartbeat expires).",
            message.message_id,
        )
        raise AckWithheld(message.message_id)

    def _fail(self, origin: Origin, run: MessageRun | None, message: MessageProxy) -> None:
        values = {**_error(run.exception if run else None, message), **_ended(run)}
        _write(origin, Status.FAILED, TERMINAL_ORDER, values)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        writer.stopping(False)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        writer.stopping()  # acks held for a database that does not answer: bounded now

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        # After the running actors and acks are done, not before (their changes would be
        # left behind): ``taskstate.shutdown`` writes and sends what is left.
        worker_stopped.send(StateMiddleware)

    def _note_retry_due(self, message: Any) -> None:
        with self._lock:
            if len(self._retry_due) > 10_000:
                # Retries whose ack never came (a lost broker connection): oldest half.
                for key in list(self._retry_due)[:5_000]:
                    del self._retry_due[key]
            self._retry_due[message.message_id] = _due(message)

    def _remember(self, message: Any, run: MessageRun) -> None:
        with self._lock:
            if len(self._runs) > 10_000:
                # Entries whose message never reached an ack (a lost broker connection).
                self._runs = {k: v for k, v in self._runs.items() if v[0]() is not None}
            self._runs[id(message)] = (weakref.ref(message), run)

    def _run_of(self, message: Any, *, forget: bool = False) -> MessageRun | None:
        with self._lock:
            entry = self._runs.pop(id(message), None) if forget else self._runs.get(id(message))
        if entry is None or entry[0]() is not message:
            return None
        return entry[1]


class AckWithheld(MiddlewareError):
    """Raised from ``before_ack``/``before_nack`` so that Dramatiq does not ack a message
    whose final state is not written. A ``MiddlewareError``: Dramatiq swallows any other
    exception of a ``before_`` hook and acks all the same."""


def _origin(message: Any, for_state: dict[str, Any], *, warn: bool) -> Origin:
    language = message.options.get(LANGUAGE_OPTION)
    return Origin(
        message_id=message.message_id,
        actor_name=message.actor_name,
        queue_name=q_name(message.queue_name),
        sent_at=_at(message.message_timestamp),
        identity=parse_for_state(for_state, message.message_id, warn=warn),
        language=language[:16] if isinstance(language, str) else "",
    )


def _due(message: Any) -> datetime | None:
    """When a delayed message is due to run: its ``eta`` option (milliseconds)."""
    eta = message.options.get("eta")
    if isinstance(eta, (int, float)) and not isinstance(eta, bool):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            return _at(eta)
    return None


def _at(milliseconds: float) -> datetime:
    """A message's time (epoch milliseconds) as Django stores it: naive and local under
    ``USE_TZ = False``."""
    moment = datetime.fromtimestamp(milliseconds / 1000, tz=timezone.utc)
    if django_settings.USE_TZ:
        return moment
    return dj_timezone.make_naive(moment, dj_timezone.get_default_timezone())


# The first start of a task stays its start, whichever write lands first.
_KEEP = ("started_at",)


def _write(
    origin: Origin,
    status: Status,
    order: int,
    values: dict[str, Any],
    keep: tuple[str, ...] = _KEEP,
) -> None:
    """Hand a final change to the background writer; never waits. The ack waits for it,
    and a full queue never drops it."""
    writer.submit(t.Change(origin, status, order, values, keep=keep), final=True)


def _running_written(run: MessageRun, task: Task | None, written: bool) -> None:
    """In the writer's thread, once an attempt's running change is written."""
    if not written:
        return  # the database is away: it is tried again
    if task is None:
        # Refused: the row had ended (cancelled early, or a redelivery); the next look reads it.
        run.read_row = True
    elif task.cancel_requested_at is not None:
        mark_cancelled(run)


def _sent(change: t.Change) -> None:
    """Write a sender's row once the sender's transaction commits (now without one), the
    rows of one transaction in one statement: a failure never breaks the caller's
    transaction, and a worker is never blocked by the sender's uncommitted row."""
    if in_event_loop():
        # Django refuses database calls here (and runs no transaction): a thread writes it.
        background.submit(lambda: _write_sent([change]))
        return
    connection = connections[get_settings().DATABASE]
    if not connection.in_atomic_block:
        _write_sent([change])
        return
    _SentRows.of(connection).add(change)


class _SentRows:
    """The sender's rows of one transaction, written by one ``on_commit`` callback: one per
    savepoint, so a rollback drops the rows sent inside it with the callback."""

    #: The collector in use, by connection and by the savepoints open when it was made.
    _open: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], _SentRows]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.changes: dict[str, t.Change] = {}
        #: The connection's list of pending callbacks this one was last seen in.
        self.hooks: list[Any] | None = None

    @classmethod
    def of(cls, connection: Any) -> _SentRows:
        """The collector of ``connection``'s transaction at its current savepoint."""
        key = tuple(connection.savepoint_ids)
        hooks = connection.run_on_commit
        rows = cls._open.get(connection, {}).get(key)
        if rows is not None and rows.hooks is hooks:
            return rows  # Django drops a callback only by replacing the list: still pending
        pending = {id(hook[1]) for hook in hooks}
        if rows is not None and id(rows) in pending:
            rows.hooks = hooks
            return rows
        # A collector whose callback is no longer pending belongs to an ended transaction.
        by_savepoint = {k: v for k, v in cls._open.get(connection, {}).items() if id(v) in pending}
        rows = by_savepoint[key] = cls()
        cls._open[connection] = by_savepoint
        transaction.on_commit(rows, using=connection.alias, robust=True)
        rows.hooks = connection.run_on_commit
        return rows

    def add(self, change: t.Change) -> None:
        known = self.changes.get(change.origin.message_id)
        # The same message sent twice: one row, as two writes in turn would leave it.
        self.changes[change.origin.message_id] = change if known is None else known.then(change)

    def __call__(self) -> None:
        changes, self.changes = list(self.changes.values()), {}
        _write_sent(changes)


def _write_sent(changes: list[t.Change]) -> None:
    """The senders' rows in one statement, each announced when it landed; never raises.
    Not durable unless a row carries what a retry needs: a row lost with a database crash
    is written again by the worker's first write of its message."""
    try:
        written = t.write_batch(changes, durable=any(t.waits_for_disk(c) for c in changes))
    except t.Outage as outage:
        # Not kept for later: the worker writes the row when it takes the message.
        written = outage.written
    except Exception:
        logger.exception("taskstate: the senders' rows of %d messages failed", len(changes))
        return
    for task in written:
        if task is not None:
            announce(task, committed=True)


def _ended(run: MessageRun | None) -> dict[str, Any]:
    """What every final change of an attempt carries: its end, its progress and its facts."""
    ended = {"finished_at": dj_timezone.now()}
    return ended if run is None else {**ended, **held_back(run), **run.attempt_columns()}


_NO_ERROR = {"error_type": "", "error_message": "", "traceback": ""}


def _error(exception: BaseException | None, message: Any) -> dict[str, Any]:
    exception = exception or getattr(message, "_exception", None)
    if exception is None:
        return dict(_NO_ERROR)
    name, text = exception_facts(exception, 2000)
    try:
        trace = "".join(
            traceback.format_exception(type(exception), exception, exception.__traceback__)
        )
    except Exception:
        # A hostile exception can break even the traceback module; its type still tells.
        trace = UNPRINTABLE.format("traceback")
    trace = clean_text(trace[-conf.TRACEBACK_MAX_CHARS :])
    return {"error_type": name, "error_message": text, "traceback": trace}


def _storable_result(result: Any, run: MessageRun) -> Any:
    settings = get_settings()
    if result is None or not settings.STORE_RESULT:
        return None
    try:
        return json_value(result, settings.RESULT_MAX_BYTES)
    except NotStorable as exc:
        logger.warning(
            "taskstate: result of message %s not stored: %s.", run.origin.message_id, exc
        )
        return None


# Kept as first written, whichever of the sender's and the worker's writes lands first.
_CONTROL_KEEP = ("retry_message", "retry_of_id")


def _control_columns(message: Any, origin: Origin) -> dict[str, Any]:
    """What a retry of this task needs (opted in) and which task it retries, if any."""
    values: dict[str, Any] = {}
    retry_of = message.options.get(RETRY_OF_OPTION)
    if isinstance(retry_of, int) and not isinstance(retry_of, bool) and retry_of > 0:
        values["retry_of_id"] = retry_of
    if origin.identity.retryable:
        values["retry_message"] = retry_message(message)
    return values


def _is_cancel(exception: BaseException) -> bool:
    """Our cooperative cancel, or dramatiq-abort's interrupt (a hard cancel)."""
    if isinstance(exception, Cancelled):
        return True
    cls = type(exception)
    return cls.__name__ == "Abort" and cls.__module__.startswith("dramatiq_abort")


def _write_cancelled(run: MessageRun) -> None:
    """The attempt ended after a cancel request: the task is ``cancelled``, for good."""
    values = {
        **_ended(run),
        **_NO_ERROR,
        # Also for a cancel from elsewhere (dramatiq-abort): a redelivered copy is skipped.
        "cancel_requested_at": dj_timezone.now(),
    }
    _write(run.origin, Status.CANCELLED, TERMINAL_ORDER, values, (*_KEEP, "cancel_requested_at"))
