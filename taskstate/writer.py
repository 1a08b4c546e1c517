"""The background state writer: the worker's state changes, written in batches off its path.

With ``TASKSTATE["WRITE_MODE"] = "background"`` (the default) a worker hook, and
``progress()``, hand a :class:`taskstate.transitions.Change` over here (a lock and a dict
insert) and return: no database call, no render, no publish on the actor's thread. One
thread per process takes what is pending, at most ``WRITE_BATCH_SIZE`` messages once the
oldest change has waited ``WRITE_MAX_DELAY`` seconds (at once when that many are pending,
or when someone waits for a change), writes them with
:func:`taskstate.transitions.write_batch` (one transaction, one commit, usually one
statement), and only then announces each row written, in the order the changes came
(``taskstate.signals``).

No hook waits for the writer (:meth:`Writer.write_and_wait` is kept for callers that
must have the row). Whether a message was asked to cancel before it starts is known from
:class:`CancelWatch`, which the writer thread refreshes with its batches
(docs/owner-control.md, "Not started yet").

Changes of one message are merged while they wait (:meth:`Change.then`): a progress
report and the final status of a message written in one batch are written once.

Faults. When the database cannot be reached the batch goes back in front of the queue
(merged with what came since) and is tried again after a pause growing from
:data:`FIRST_RETRY_PAUSE` to :data:`MAX_RETRY_PAUSE`; whoever waits is told at once, so
nothing blocks the worker for longer than one failed attempt. The queue holds at most
:data:`MAX_PENDING` messages: past that, the changes of messages already waiting still
merge, a new message's changes are dropped (logged once per episode) and its row is
repaired by its later changes or the cleanup. At worker shutdown (and at exit) the queue
is flushed within a bound; a crash loses at most what was pending, which redelivery and
the cleanup repair (docs/reliability.md).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.utils import timezone

from taskstate.conf import get_settings
from taskstate.handoff import handoff, in_event_loop
from taskstate.signals import announce, announce_progress
from taskstate.transitions import Change, Outage, cancels_since, database_down, write_batch

if TYPE_CHECKING:
    from taskstate.models import Task

logger = logging.getLogger("taskstate")

#: Messages whose changes may wait at most; past that a new message's changes are dropped.
MAX_PENDING = 10_000
#: Pauses before a batch the database could not take is tried again.
FIRST_RETRY_PAUSE = 0.5
MAX_RETRY_PAUSE = 5.0
#: Seconds a worker's shutdown (and the interpreter's exit) waits for the queue to drain.
SHUTDOWN_FLUSH = 5.0
#: While a flush waits, a batch the database could not take is tried again this soon
#: (not at once: a refused connection fails in microseconds).
FLUSH_RETRY_PAUSE = 0.1


def background() -> bool:
    """True when worker-side changes go through the background writer."""
    return get_settings().WRITE_MODE == "background"


class _Wait:
    """One thread waiting for its change's batch."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.task: Task | None = None
        self.written = False

    def __call__(self, task: Task | None, written: bool) -> None:
        self.task, self.written = task, written
        self.event.set()


class Writer:
    """One per process (:data:`writer`); a forked child starts with an empty one."""

    def __init__(self) -> None:
        #: ``sender`` of the signals the writer sends (``StateMiddleware``, set by it).
        self.sender: Any = None
        self._init_state()

    def _init_state(self) -> None:
        self._cond = threading.Condition()
        self._pending: OrderedDict[str, Change] = OrderedDict()
        self._urgent = 0
        self._busy = False
        self._in_flight = 0
        self._failed_at = 0.0
        self._flushing = 0
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._retry_at = 0.0
        self._pause = 0.0
        self._full = False
        self._release = False
        #: Counters for benchmarks and tests: batches written, rows in them, changes
        #: dropped at the bound, and the delay (seconds) from each change to its commit.
        self.batches = 0
        self.rows = 0
        self.dropped = 0
        self.delays: deque[float] = deque(maxlen=100_000)

    # --- the worker's side ---------------------------------------------------------------

    def submit(self, change: Change) -> bool:
        """Queue ``change``; returns at once, never raises for the database. False when it
        was dropped (the queue is full)."""
        change.since = time.monotonic()
        message_id = change.origin.message_id
        with self._cond:
            earlier = self._pending.get(message_id)
            if earlier is not None:
                merged = earlier.then(change)
                self._pending[message_id] = merged
                if merged.urgent and not earlier.urgent:
                    self._urgent += 1
                    self._cond.notify_all()
                return True
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                if not self._full:
                    self._full = True
                    logger.error(
                        "taskstate: %d messages' state changes are waiting to be written; "
                        "changes of further messages are dropped until the database catches "
                        "up (their rows are repaired by later changes or the cleanup).",
                        MAX_PENDING,
                    )
                return False
            self._pending[message_id] = change
            if change.urgent:
                self._urgent += 1
            self._start()
            if change.urgent or len(self._pending) == 1 or len(self._pending) >= _batch_size():
                self._cond.notify_all()
            return True

    def write_and_wait(self, change: Change, timeout: float | None) -> tuple[Task | None, bool]:
        """Queue ``change``, have its batch written now, and wait for it.

        Returns the row as written (None: refused) and whether the batch was written at
        all (False: the database could not be reached, the queue is full, or ``timeout``
        ran out; the change stays queued, unless dropped, and is written later).
        """
        with self._cond:
            retrying = time.monotonic() < self._retry_at
        if retrying:
            # The database is away (the last batch failed): queue it and go on, as a
            # failed write would, rather than wait for the next try.
            self.submit(change)
            return None, False
        wait = _Wait()
        change.urgent = True
        change.notify.append(wait)
        if not self.submit(change):
            return None, False
        if not wait.event.wait(timeout):
            return None, False
        return wait.task, wait.written

    def pending(self) -> int:
        """Messages whose changes wait to be written."""
        with self._cond:
            return len(self._pending)

    def unwritten(self) -> int:
        """Messages whose changes are not written yet: waiting, or in the batch being
        written."""
        with self._cond:
            return len(self._pending) + self._in_flight

    def flush(self, timeout: float = SHUTDOWN_FLUSH) -> bool:
        """Write everything pending now, and wait for it; False if ``timeout`` ran out
        (the database is away) or the changes could not be written."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._pid != os.getpid():
                return not self._pending
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._pending or self._busy:
                    if self._thread is None or not self._thread.is_alive():
                        return not self._pending
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def release(self, timeout: float = SHUTDOWN_FLUSH) -> None:
        """Close the writer's database connection once nothing is pending (it reconnects
        for the next batch): at shutdown, and for tests that drop their database."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                return
            self._release = True
            self._cond.notify_all()
            while self._release and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def shutdown(self, timeout: float = SHUTDOWN_FLUSH) -> None:
        """Flush within ``timeout``; log what could not be written."""
        if self.flush(timeout):
            self.release(1.0)
        else:
            left = self.unwritten()
            if left:
                logger.error(
                    "taskstate: %d messages' last state changes could not be written "
                    "before the process ends; redelivery and the cleanup will repair them.",
                    left,
                )

    # --- the writer thread ---------------------------------------------------------------

    def _start(self) -> None:
        # Called with the lock held.
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="taskstate-writer", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        # The parent's changes are the parent's to write; its lock may be held by a thread
        # the child does not have.
        sender = self.sender
        self._init_state()
        self.sender = sender

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._in_flight = 0
                self._cond.notify_all()
                batch = self._next_batch()
                self._busy = True
                self._in_flight = len(batch)
            if not batch:  # asked to let go of the connection
                with contextlib.suppress(Exception):
                    connections.close_all()
                with self._cond:
                    self._release = False
                continue
            try:
                self._write(batch)
            except Exception:
                logger.exception("taskstate: the background writer failed on a batch")
                _tell(batch, None, written=False)

    def _next_batch(self) -> list[Change]:
        # Called with the lock held: waits for a batch that is due, then takes it.
        while True:
            if self._release and not self._pending:
                return []
            size = _batch_size()
            now = time.monotonic()
            if not self._pending:
                self._cond.wait()
                continue
            retry_at = self._retry_at
            if self._flushing:
                retry_at = min(retry_at, self._failed_at + FLUSH_RETRY_PAUSE)
            if now < retry_at:
                self._cond.wait(retry_at - now)
                continue
            oldest = next(iter(self._pending.values()))
            due = oldest.since + _max_delay()
            if self._flushing or self._urgent or len(self._pending) >= size or now >= due:
                break
            self._cond.wait(due - now)
        count = min(size, len(self._pending))
        batch = [self._pending.popitem(last=False)[1] for _ in range(count)]
        self._urgent -= sum(1 for change in batch if change.urgent)
        return batch

    def _write(self, batch: list[Change]) -> None:
        # The writer keeps its one connection open across batches, whatever CONN_MAX_AGE
        # says (it is one per process, and a connection per batch would cost more than the
        # batch); after an outage it is closed, so the next try connects afresh.
        try:
            tasks = write_batch(batch)
        except Outage as outage:
            with contextlib.suppress(Exception):
                connections[get_settings().DATABASE].close()
            # Rows written one by one before the outage are committed: announced now
            # (tried again, they would be refused and never announced).
            done = len(outage.written)
            if done:
                self._written(batch[:done], outage.written)
            rest = batch[done:]
            # Whoever waits goes on now (it reads instead); the changes are tried again.
            _tell(rest, None, written=False)
            for change in rest:
                change.notify = []
                change.urgent = False
            self._put_back(rest)
            return
        with self._cond:
            self._pause = 0.0
            self._retry_at = 0.0
        self._written(batch, tasks)
        if cancels.age() > _max_age_of_cancels() / 2:
            # Once in a while, with a batch: the workers of this process then hear of
            # cancel requests without a read of their own (CancelWatch).
            cancels.refresh()

    def _written(self, batch: list[Change], tasks: list[Task | None]) -> None:
        """Tell and announce the changes of ``batch`` committed as ``tasks``."""
        committed = time.monotonic()
        with self._cond:
            self.batches += 1
            self.rows += len(batch)
            if len(self._pending) < MAX_PENDING // 2:
                self._full = False  # drained to half: a later overflow is logged again
        for change, task in zip(batch, tasks, strict=True):
            self.delays.append(committed - change.since)
            _tell([change], task, written=True)
            if task is None:
                continue  # refused: the row is further on already
            if change.progress_only:
                announce_progress(
                    sender=self.sender,
                    task_pk=task.pk,
                    user_pk=task.user_id,
                    percent=task.progress,
                    message=task.progress_message,
                    order=task.state_order,
                    group_pk=change.origin.identity.group,
                )
            else:
                announce(task, sender=self.sender, committed=True)

    def _put_back(self, batch: list[Change]) -> None:
        with self._cond:
            merged: OrderedDict[str, Change] = OrderedDict()
            for change in batch:
                message_id = change.origin.message_id
                later = self._pending.pop(message_id, None)
                if later is not None and later.urgent:
                    self._urgent -= 1
                merged[message_id] = change if later is None else change.then(later)
                if merged[message_id].urgent:
                    self._urgent += 1
            merged.update(self._pending)
            self._pending = merged
            pause = self._pause or FIRST_RETRY_PAUSE
            self._failed_at = time.monotonic()
            self._retry_at = self._failed_at + pause
            self._pause = min(pause * 2, MAX_RETRY_PAUSE)


class CancelWatch:
    """The cancel requests this process knows of, so a worker need not read the row.

    A worker asks :meth:`requested` when it takes a message, at a pipeline step's end and
    at each ``progress()``: a dictionary lookup. What is known is refreshed by the writer
    thread with its batches (one indexed read, :func:`taskstate.transitions.cancels_since`,
    at most twice per ``CANCEL_CHECK_INTERVAL``); a worker reads only when nothing was
    refreshed for longer than ``CANCEL_CHECK_INTERVAL`` (an idle process), and then one
    read serves every thread. While the database is failing nothing is read.

    So a request is heard by every worker within ``CANCEL_CHECK_INTERVAL`` of its commit
    (plus the read's own time). A worker that takes a message before that runs it, and the
    request becomes a running task's cancel; this is why a cancel request ends only
    tasks scheduled comfortably ahead at once (``transitions.CANCEL_AT_ONCE_MARGIN``),
    and why a queued task reads "Cancelling" until a worker takes its message
    (docs/owner-control.md).
    """

    def __init__(self) -> None:
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._ids: dict[str, None] = {}
        self._fresh_at = 0.0
        self._since: datetime | None = None
        self._tries = 0  # reads finished, whatever their outcome
        self._refresh_handed_over = False
        #: Reads made (by the writer thread and by workers), for benchmarks and tests.
        self.reads = 0
        self.worker_reads = 0

    def age(self) -> float:
        """Seconds since the last read that is known to have succeeded started."""
        return time.monotonic() - self._fresh_at

    def known(self, message_id: str) -> bool:
        """Whether ``message_id`` is known to have been asked to cancel; never reads."""
        return message_id in self._ids

    def requested(self, message_id: str) -> bool:
        """Whether ``message_id`` was asked to cancel, as known at most
        ``CANCEL_CHECK_INTERVAL`` ago: reads first when what is known is older (unless the
        database is failing: then False, as a read would have said)."""
        if message_id in self._ids:
            return True
        limit = _max_age_of_cancels()
        if self.age() <= limit or database_down():
            return False
        if in_event_loop():
            # An async actor, in Dramatiq's event loop thread: Django refuses a query
            # here. Another thread reads; this look answers from what is known.
            self._hand_over_refresh(limit)
            return False
        self.refresh(unless_younger_than=limit, by_worker=True)
        return message_id in self._ids

    def _hand_over_refresh(self, limit: float) -> None:
        with self._lock:
            if self._refresh_handed_over:
                return
            self._refresh_handed_over = True

        def read() -> None:
            try:
                self.refresh(unless_younger_than=limit, by_worker=True)
            finally:
                with self._lock:
                    self._refresh_handed_over = False

        handoff.submit(read)

    def refresh(self, *, unless_younger_than: float | None = None, by_worker: bool = False) -> bool:
        """Read the requests made since the last read (the first read: every request a
        worker may still meet). False when the database could not be read."""
        tries = self._tries
        with self._reading:
            if unless_younger_than is not None:
                if self.age() <= unless_younger_than:
                    return True  # another thread read meanwhile
                if self._tries != tries or database_down():
                    # A read failed while this thread waited for it (or the database is
                    # failing): one failed read serves every thread that waited.
                    return False
            started, wall = time.monotonic(), timezone.now()
            try:
                found = cancels_since(self._since)
            finally:
                self._tries += 1
            self.reads += 1
            if by_worker:
                self.worker_reads += 1
            if found is None:
                return False
            with self._lock:
                since: datetime | None = wall
                if len(self._ids) + len(found) > MAX_KNOWN_CANCELS:
                    # The oldest half: their messages, if still queued, start and are
                    # cancelled at their first progress(). The next read is a first look
                    # again, so a request forgotten here that still matters is read back.
                    for message_id in list(self._ids)[: MAX_KNOWN_CANCELS // 2]:
                        del self._ids[message_id]
                    since = None
                self._ids.update(dict.fromkeys(found))
                self._since = since
                self._fresh_at = max(self._fresh_at, started)
            return True

    def forget(self) -> None:
        """Know nothing (tests; a forked child starts so)."""
        self._init_state()


#: Cancel requests a process keeps in memory at most (:class:`CancelWatch`).
MAX_KNOWN_CANCELS = 100_000


def _max_age_of_cancels() -> float:
    return float(get_settings().CANCEL_CHECK_INTERVAL)


def _tell(batch: list[Change], task: Task | None, *, written: bool) -> None:
    for change in batch:
        for notify in change.notify:
            with contextlib.suppress(Exception):
                notify(task, written)


def _batch_size() -> int:
    return int(get_settings().WRITE_BATCH_SIZE)


def _max_delay() -> float:
    return float(get_settings().WRITE_MAX_DELAY)


writer = Writer()
cancels = CancelWatch()
atexit.register(writer.shutdown, SHUTDOWN_FLUSH)
os.register_at_fork(after_in_child=writer._after_fork)
os.register_at_fork(after_in_child=cancels.forget)
