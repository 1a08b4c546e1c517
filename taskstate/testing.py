"""What a project's own test suite needs to test its tracked actors and pages
(docs/testing.md).

Worker hooks hand their changes to the background writer, group rows are refreshed by
another thread and events sent by a third: when ``worker.join()`` returns, the last
changes may still be on their way. :func:`settle` waits for all three;
:class:`SettlingWorker`, :func:`wait_for_status`, :func:`record_events` and
:class:`TaskstateTestMixin` build on it. This module imports Django's models only inside
its functions.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dramatiq

if TYPE_CHECKING:
    from taskstate.core.models import Task

#: Seconds :func:`settle` waits at most by default.
SETTLE_TIMEOUT = 10.0
#: Seconds :meth:`SettlingWorker.drain` waits at most for each queue by default.
DRAIN_TIMEOUT = 30.0

_ROW_ID = re.compile(r'id="taskstate-task-(\d+)"')
_REMOVED = re.compile(r'hx-target="#taskstate-task-(\d+)" hx-swap="delete"')


class NotSettled(AssertionError):
    """The background threads did not finish within the time given (the database or the
    event backend does not answer)."""


class UncommittedTestData(RuntimeError):
    """A worker was asked for inside a test whose transaction never commits."""


def require_committed_data() -> None:
    """Raise :class:`UncommittedTestData` when this test runs inside a transaction that is
    never committed (pytest-django's ``db``, Django's ``TestCase``): a worker's threads,
    with connections of their own, could not see what the test wrote."""
    from django.db import connections

    from taskstate.core.conf import get_settings

    if connections[get_settings().DATABASE].in_atomic_block:
        raise UncommittedTestData(
            "taskstate: a worker runs actors on threads with database connections of their "
            "own, which cannot see this test's uncommitted rows. Use pytest-django's "
            "transactional_db (@pytest.mark.django_db(transaction=True)) or Django's "
            "TransactionTestCase; under db / TestCase test only what is sent, with "
            "captureOnCommitCallbacks(execute=True) (docs/testing.md)."
        )


def settle(timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until every state change handed over so far is committed and announced, every
    group row with a changed child refreshed, and every event sent.

    Call it after ``worker.join()`` (or after ``progress()`` in a test that runs an actor's
    code directly) and before reading a ``Task`` row or the events a page received.
    Raises :class:`NotSettled` when ``timeout`` seconds are not enough.
    """
    from taskstate.core.group_refresh import group_refresher
    from taskstate.web.courier import courier
    from taskstate.worker.writer import writer

    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(deadline - time.monotonic(), 0.0)

    while True:
        # In this order: a written child tells its group's refresher, a refreshed group
        # and a written row hand their events to the courier.
        written = writer.flush(left())
        refreshed = group_refresher.flush(left())
        sent = courier.flush(left())
        if written and refreshed and sent and writer.unwritten() == 0:
            return
        if time.monotonic() >= deadline:
            raise NotSettled(
                f"taskstate: the background writer, group refresher or event sender did "
                f"not finish within {timeout} s (is the database or the event backend down?)"
            )


def wait_for_status(message: Any, *statuses: str, timeout: float = SETTLE_TIMEOUT) -> Task:
    """Wait until the row of ``message`` (a Dramatiq message, or its id) has one of
    ``statuses`` committed, and return it as read then.

    Woken by ``taskstate.core.signals.task_changed``, not by polling. A status the worker
    passes through within one batch of the background writer is not announced on its own
    (its row goes straight to the later one): ask for every status that would do, e.g.
    ``wait_for_status(message, "running")`` before cancelling a task that runs for a while.
    Raises :class:`NotSettled` on timeout.
    """
    from taskstate.core.models import Task
    from taskstate.core.signals import task_changed

    message_id = str(getattr(message, "message_id", message))
    wanted = {str(status) for status in statuses}
    reached = threading.Event()

    def receiver(sender: Any, *, task: Task, **kwargs: Any) -> None:
        if task.message_id == message_id and task.status in wanted:
            reached.set()

    task_changed.connect(receiver, weak=False)
    try:
        found = Task.objects.filter(message_id=message_id, status__in=wanted).exists()
        if not found and not reached.wait(timeout):
            current = Task.objects.filter(message_id=message_id).values_list("status", flat=True)
            raise NotSettled(
                f"taskstate: task {message_id} did not reach {sorted(wanted)} within "
                f"{timeout} s (it reads {list(current) or 'no row'})"
            )
    finally:
        task_changed.disconnect(receiver)
    return Task.objects.get(message_id=message_id)


class SettlingWorker(dramatiq.Worker):
    """A ``dramatiq.Worker`` for tests: when :meth:`join` returns, every state is written.

    Start it, send messages, then either ``broker.join(queue)`` and :meth:`join` (the
    usual Dramatiq pattern) or :meth:`drain`, which does both for every queue. :meth:`stop`
    also takes back the middleware the worker added to the broker, so a test can start a
    worker of its own on the same broker without a warning.
    """

    def __init__(self, broker: dramatiq.Broker, *, worker_threads: int = 4, **kwargs: Any) -> None:
        kwargs.setdefault("worker_timeout", 100)
        super().__init__(broker, worker_threads=worker_threads, **kwargs)

    def join(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait for the work in progress, then for taskstate to write what it did."""
        super().join()
        settle(timeout)

    def drain(self, timeout: float = DRAIN_TIMEOUT, *, fail_fast: bool = False) -> None:
        """Run every message queued on the broker (delayed ones too, and what they send),
        then :meth:`join`. ``fail_fast``: a StubBroker raises the first actor error."""
        from dramatiq.brokers.stub import StubBroker

        stub = isinstance(self.broker, StubBroker)
        options = {"fail_fast": fail_fast} if stub else {}
        for _ in range(100):
            # A delay queue is joined with its queue.
            declared = self.broker.get_declared_queues()
            for queue_name in sorted(q for q in declared if not q.endswith((".DQ", ".XQ"))):
                self.broker.join(queue_name, timeout=int(timeout * 1000), **options)
            self.join(timeout)
            # Other brokers: broker.join() waited for the queued messages.
            if not (stub and any(q.unfinished_tasks for q in self.broker.queues.values())):
                return
        raise NotSettled("taskstate: messages kept arriving while the worker drained")

    def stop(self, timeout: int = 600_000) -> None:
        try:
            super().stop(timeout)
        finally:
            self.broker.middleware[:] = [
                m for m in self.broker.middleware if getattr(m, "worker", None) is not self
            ]


@dataclass(frozen=True)
class SentEvent:
    """One event handed to django-eventstream: its channel, type ("" for rows and bars,
    which htmx swaps) and data (HTML)."""

    channel: str
    event_type: str
    data: str


@dataclass
class EventLog:
    """The events sent to some channels while :func:`record_events` was open.

    Reading :attr:`events`, :meth:`rows` or :meth:`removed` settles first, so what the
    worker did before is in it.
    """

    channels: frozenset[str]
    _events: list[SentEvent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _add(self, event: SentEvent) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[SentEvent]:
        """Every event sent on the channels so far, in order."""
        settle()
        with self._lock:
            return list(self._events)

    def rows(self) -> dict[int, str]:
        """The last HTML sent for each task row (by ``Task.pk``): what the page shows.

        Progress bars sent between rows are not in it (see :attr:`events`); a row
        removed since is left out.
        """
        rows: dict[int, str] = {}
        for event in self.events:
            for pk in _REMOVED.findall(event.data):
                rows.pop(int(pk), None)
            if "<hx-upsert" in event.data:
                for pk in _ROW_ID.findall(event.data)[:1]:
                    rows[int(pk)] = event.data
        return rows

    def removed(self) -> set[int]:
        """Pks of the rows the page was told to remove (dismissed in another tab)."""
        return {int(pk) for event in self.events for pk in _REMOVED.findall(event.data)}

    def clear(self) -> None:
        """Forget what was recorded so far (after :func:`settle`)."""
        settle()
        with self._lock:
            self._events.clear()


_recorders_lock = threading.Lock()
_recorders: list[EventLog] = []
_upstream: Callable[..., Any] | None = None


@contextmanager
def record_events(*owners: Any) -> Iterator[EventLog]:
    """Record the events sent to the channels of ``owners`` (users, user pks or channel
    names) while the block runs.

    The channels count as listened (a page is open), so rows are rendered and sent as
    they would be to a browser; every event still goes on to django-eventstream. Nest or
    overlap freely; not for use across processes (a worker process records nothing here).
    """
    global _upstream
    import django_eventstream

    from taskstate.web import presence
    from taskstate.web.channels import user_channel

    channels = frozenset(
        owner if isinstance(owner, str) else user_channel(getattr(owner, "pk", owner))
        for owner in owners
    )
    log = EventLog(channels)
    with _recorders_lock:
        _recorders.append(log)
        if _upstream is None:
            _upstream = django_eventstream.send_event
            django_eventstream.send_event = _recording_send_event
    presence.hold(channels)
    try:
        yield log
        # What the block set going is sent (and recorded) before the recording stops.
        settle()
    finally:
        presence.release(channels)
        with _recorders_lock:
            _recorders[:] = [r for r in _recorders if r is not log]
            if not _recorders and _upstream is not None:
                django_eventstream.send_event = _upstream
                _upstream = None


def _recording_send_event(
    channel: str, event_type: str, data: Any, *args: Any, **kwargs: Any
) -> Any:
    with _recorders_lock:
        logs = [log for log in _recorders if channel in log.channels]
        upstream = _upstream
    text = data if isinstance(data, str) else repr(data)
    for log in logs:
        log._add(SentEvent(channel, event_type, text))
    assert upstream is not None
    return upstream(channel, event_type, data, *args, **kwargs)


class TaskstateTestMixin:
    """For ``unittest`` and Django test cases: a worker started for each test.

    Use it with ``django.test.TransactionTestCase`` (the worker's threads have database
    connections of their own, so they must see committed data):
    ``class ReportTests(TaskstateTestMixin, TransactionTestCase)``. ``self.worker`` is a
    :class:`SettlingWorker`; ``self.drain()`` runs every queued message and waits until
    every state is written; ``self.settle()`` and ``self.record_events(user)`` are
    :func:`settle` and :func:`record_events`.
    """

    worker_threads = 4
    worker: SettlingWorker
    broker: dramatiq.Broker

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        require_committed_data()
        self.broker = dramatiq.get_broker()
        self.broker.flush_all()
        self.worker = SettlingWorker(self.broker, worker_threads=self.worker_threads)
        self.worker.start()
        self.addCleanup(self._stop_worker)  # type: ignore[attr-defined]

    def _stop_worker(self) -> None:
        self.worker.stop()
        self.broker.flush_all()
        settle()

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        self.worker.drain(timeout)

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> None:
        settle(timeout)

    def record_events(self, *owners: Any) -> Any:
        return record_events(*owners)
