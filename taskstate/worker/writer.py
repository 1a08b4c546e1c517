"""The background state writer: the worker's state changes, written in batches off its path.

Hooks and ``progress()`` queue a :class:`~taskstate.core.transitions.Change` and return; one
thread per process writes what is pending with ``write_batch`` and then announces it. A
message's final change is waited for by its ack (:meth:`Writer.wait_written`), so no ack
outruns its row; docs/reliability.md ("The background writer") tells the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from taskstate.core import conf
from taskstate.core.background import background, in_event_loop
from taskstate.core.bounds import client_bound
from taskstate.core.conf import get_settings
from taskstate.core.signals import Bar, announce, announce_progress
from taskstate.core.threads import Backoff, OwnThread
from taskstate.core.transitions import (
    Change,
    Outage,
    cancels_since,
    database_down,
    waits_for_disk,
    write_batch,
)

if TYPE_CHECKING:
    from taskstate.core.models import Task

logger = logging.getLogger("taskstate")

#: Messages whose changes may wait; past that a new message's non-final changes are dropped.
MAX_PENDING = 10_000
#: Seconds a shutdown waits for the queue to drain.
SHUTDOWN_FLUSH = 5.0
#: Seconds an ack still waits once the worker stops; then the message is left unacked.
STOP_ACK_WAIT = 5.0
#: A flush retries a failed batch this soon (a refused connection fails in microseconds).
FLUSH_RETRY_PAUSE = 0.1
#: Cancel requests a process keeps in memory at most (:class:`CancelWatch`).
MAX_KNOWN_CANCELS = 100_000


class Writer(OwnThread):
    """One per process (:data:`writer`); a forked child starts with an empty one."""

    thread_name = "taskstate-writer"

    def _init_state(self) -> None:
        super()._init_state()
        self._pending: OrderedDict[str, Change] = OrderedDict()
        self._urgent = 0
        self._busy = False
        self._in_flight_ids: frozenset[str] = frozenset()
        self._stopping_at: float | None = None
        self._failed_at = 0.0
        self._flushing = 0
        self._retry_at = 0.0
        self._backoff = Backoff()  # before a batch the database could not take is tried again
        self._full = False
        self._release = False

    def submit(self, change: Change, *, final: bool = False) -> bool:
        """Queue ``change`` and return; False when dropped (queue full). A ``final`` change,
        which the message's ack waits for, is never dropped."""
        change.since = time.monotonic()
        change.final = change.final or final
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
            if len(self._pending) >= MAX_PENDING and not final:
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
            waiting = len(self._pending)
            if change.urgent or waiting == 1 or waiting >= conf.WRITE_BATCH_SIZE:
                self._cond.notify_all()
            return True

    def wait_written(self, message_id: str) -> bool:
        """Wait until every change of ``message_id`` queued so far is committed, hurrying
        its batch. Waits through an outage, unless the worker stops: then False after
        :data:`STOP_ACK_WAIT` seconds from the later of the stop and this call."""
        called = time.monotonic()
        with self._cond:
            while True:
                change = self._pending.get(message_id)
                if change is None and message_id not in self._in_flight_ids:
                    return True
                if change is not None and not change.urgent:
                    change.urgent = True
                    self._urgent += 1
                    self._cond.notify_all()
                self._start()
                timeout = None
                if self._stopping_at is not None:
                    deadline = max(self._stopping_at, called) + STOP_ACK_WAIT
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        return False
                self._cond.wait(timeout)

    def stopping(self, stopping: bool = True) -> None:
        """The worker stops (False: runs again): :meth:`wait_written` is bounded from now."""
        with self._cond:
            self._stopping_at = time.monotonic() if stopping else None
            self._cond.notify_all()

    def unwritten(self) -> int:
        """Messages whose changes are not written yet (waiting or in flight)."""
        with self._cond:
            return len(self._pending) + len(self._in_flight_ids)

    def flush(self, timeout: float = SHUTDOWN_FLUSH) -> bool:
        """Write everything pending now and wait for it; False if it was not written in time."""
        with self._cond:
            if self._pid != os.getpid():
                return not self._pending
            self._flushing += 1
            self._cond.notify_all()
            try:
                # Done, or no thread left to do it.
                ended = self._cond.wait_for(
                    lambda: not (self._pending or self._busy) or not self._running_here(), timeout
                )
                return ended and not self._pending
            finally:
                self._flushing -= 1

    def release(self, timeout: float = SHUTDOWN_FLUSH) -> None:
        """Close the writer's connection once nothing is pending (shutdown, tests)."""
        with self._cond:
            if not self._running_here():
                return
            self._release = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._release or not self._running_here(), timeout)

    def shutdown(self, timeout: float = SHUTDOWN_FLUSH) -> None:
        """Flush within ``timeout``; log what could not be written."""
        if self.flush(timeout):
            self.release(1.0)
        elif left := self.unwritten():
            logger.error(
                "taskstate: %d messages' state changes could not be written before the "
                "process ends. None of these messages was acknowledged (an ack waits for "
                "its final change): the broker delivers them again and their rows are "
                "written then.",
                left,
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._in_flight_ids = frozenset()
                self._cond.notify_all()
                batch = self._next_batch()
                self._busy = True
                self._in_flight_ids = frozenset(change.origin.message_id for change in batch)
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
        # With the lock held: waits for a batch that is due, then takes it.
        while True:
            if self._release and not self._pending:
                return []
            size = conf.WRITE_BATCH_SIZE
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
            due = oldest.since + conf.WRITE_MAX_DELAY
            if self._flushing or self._urgent or len(self._pending) >= size or now >= due:
                break
            self._cond.wait(due - now)
        count = min(size, len(self._pending))
        batch = [self._pending.popitem(last=False)[1] for _ in range(count)]
        self._urgent -= sum(1 for change in batch if change.urgent)
        return batch

    def _write(self, batch: list[Change]) -> None:
        # One connection kept across batches, whatever CONN_MAX_AGE says; closed after an
        # outage so the next try connects afresh.
        try:
            tasks = write_batch(batch, durable=any(waits_for_disk(c) for c in batch))
        except Outage as outage:
            with contextlib.suppress(Exception):
                connections[get_settings().DATABASE].close()
            # Rows committed before the outage are announced now: tried again, they would
            # be refused and never announced.
            done = len(outage.written)
            if done:
                self._written(batch[:done], outage.written)
            rest = batch[done:]
            # Waiters go on now (they read instead); the changes are tried again.
            _tell(rest, None, written=False)
            for change in rest:
                change.notify = []
                change.urgent = False
            self._put_back(rest)
            return
        with self._cond:
            self._backoff.reset()
            self._retry_at = 0.0
        self._written(batch, tasks)
        if cancels.age() > conf.CANCEL_CHECK_INTERVAL / 2:
            # With a batch now and then: workers hear of cancels without reads of their own.
            cancels.refresh()

    def _written(self, batch: list[Change], tasks: list[Task | None]) -> None:
        """Tell and announce the changes of ``batch`` committed as ``tasks``."""
        with self._cond:
            if len(self._pending) < MAX_PENDING // 2:
                self._full = False  # drained to half: a later overflow is logged again
        for change, task in zip(batch, tasks, strict=True):
            _tell([change], task, written=True)
            if task is None:
                continue  # refused: the row is further on already
            if change.progress_only:
                bar = Bar(
                    task.pk, task.progress, task.progress_message, task.state_order, task.updated_at
                )
                announce_progress(bar, user_pk=task.user_id, group_pk=task.parent_id)
            else:
                announce(task, committed=True)

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
            self._start()  # whoever wrote the batch, a thread tries it again
            self._failed_at = time.monotonic()
            self._retry_at = self._failed_at + self._backoff.next()


class CancelWatch:
    """The cancel requests this process knows of, so a worker need not read the row.

    A start asks :meth:`heard_of`, answered by a read that began after it asked: every
    request committed before the start is known, so a body whose cancel the owner saw
    never runs. One read serves every start waiting for it (like a group commit). A
    running message asks :meth:`requested`, known at most ``CANCEL_CHECK_INTERVAL`` ago.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._ids: dict[str, None] = {}
        self._fresh_at = 0.0
        self._since: datetime | None = None
        self._tries = 0  # reads finished, whatever their outcome
        self._begun = 0  # reads begun: each read's number
        self._ended = 0  # the number of the last read that ended, whatever its outcome
        self._overdue = False  # a start gave up waiting; none waits until a read ends
        self._connection: BaseDatabaseWrapper | None = None
        self._connection_pid = 0
        self._refresh_handed_over = False

    def age(self) -> float:
        """Seconds since the last successful read started."""
        return self.clock() - self._fresh_at

    def known(self, message_id: str) -> bool:
        """Whether ``message_id`` is known to be asked to cancel; never reads."""
        return message_id in self._ids

    def heard_of(self, message_id: str) -> bool:
        """Whether ``message_id`` was asked to cancel, as read after this call began; from
        what is known while the database fails or once :func:`_start_wait` ran out. In an
        event loop (Django refuses a query there) another thread reads for it."""
        if self.known(message_id):
            return True
        if database_down():
            return False
        with self._lock:
            if self._overdue:
                return False
            wanted = self._begun + 1  # a read in flight began before this call
        limit = _start_wait()
        if in_event_loop():
            done = threading.Event()

            def read() -> None:
                try:
                    self._read_after(wanted, limit)
                finally:
                    done.set()

            background.submit(read)
            if not done.wait(limit):
                self._give_up(limit)
        else:
            self._read_after(wanted, limit)
        return self.known(message_id)

    def _read_after(self, wanted: int, limit: float) -> None:
        # Until read number ``wanted`` (or a later one) has ended: read, or wait for it.
        if not self._reading.acquire(timeout=limit):
            self._give_up(limit)
            return
        try:
            if self._ended < wanted:
                self._read()
        finally:
            self._reading.release()

    def _give_up(self, limit: float) -> None:
        with self._lock:
            if self._overdue:
                return
            self._overdue = True
        logger.warning(
            "taskstate: no read of cancel requests ended within %.0f s; messages start on "
            "what this process knows until one does.",
            limit,
        )

    def requested(self, message_id: str) -> bool:
        """Whether ``message_id`` was asked to cancel, as known at most
        ``CANCEL_CHECK_INTERVAL`` ago (reads first when older, unless the database fails)."""
        if self.known(message_id):
            return True
        limit = conf.CANCEL_CHECK_INTERVAL
        if self.age() <= limit or database_down():
            return False
        if in_event_loop():
            # Django refuses a query here: another thread reads for a later look.
            self._hand_over_refresh(limit)
            return False
        self.refresh(unless_younger_than=limit)
        return self.known(message_id)

    def _hand_over_refresh(self, limit: float) -> None:
        with self._lock:
            if self._refresh_handed_over:
                return
            self._refresh_handed_over = True

        def read() -> None:
            try:
                self.refresh(unless_younger_than=limit)
            finally:
                with self._lock:
                    self._refresh_handed_over = False

        background.submit(read)

    def refresh(self, *, unless_younger_than: float | None = None) -> bool:
        """Read the requests made since the last read; False when the database failed."""
        tries = self._tries
        with self._reading:
            if unless_younger_than is not None:
                if self.age() <= unless_younger_than:
                    return True  # another thread read meanwhile
                if self._tries != tries or database_down():
                    # One failed read serves every thread that waited for it.
                    return False
            return self._read()

    def _read(self) -> bool:
        # With ``_reading`` held: one read at a time, on the watch's connection.
        started, wall = self.clock(), timezone.now()
        with self._lock:
            self._begun += 1
            number = self._begun
        found = None
        try:
            found = cancels_since(self._since, self._own_connection())
        finally:
            self._tries += 1
            with self._lock:
                if found is not None:
                    self._learn(found, wall, started)
                self._ended = number
                self._overdue = False
        return found is not None

    def _own_connection(self) -> BaseDatabaseWrapper:
        # Used by one thread at a time (under ``_reading``): a worker thread's own
        # connection may be closed after each message.
        alias = get_settings().DATABASE
        connection = self._connection
        if connection is None or connection.alias != alias:
            self.close()
            connection = connections.create_connection(alias)
            connection.inc_thread_sharing()
            self._connection, self._connection_pid = connection, os.getpid()
        return connection

    def close(self) -> None:
        """Close the watch's connection (it reconnects for the next read)."""
        connection, self._connection = self._connection, None
        if connection is not None and self._connection_pid == os.getpid():
            with contextlib.suppress(Exception):
                connection.close()

    def _learn(self, found: list[str], wall: datetime, started: float) -> None:
        # With the lock held.
        since: datetime | None = wall
        if len(self._ids) + len(found) > MAX_KNOWN_CANCELS:
            # Forget the oldest half; the next read is a first look again, so a request
            # that still matters is read back.
            for message_id in list(self._ids)[: MAX_KNOWN_CANCELS // 2]:
                del self._ids[message_id]
            since = None
        self._ids.update(dict.fromkeys(found))
        self._since = since
        self._fresh_at = max(self._fresh_at, started)

    def forget(self) -> None:
        """Know nothing (tests; a forked child, leaving the parent's connection alone)."""
        self.close()
        self._init_state()


def _start_wait() -> float:
    """Seconds a start waits for another thread's read: a connect plus two bounded reads."""
    return float(conf.DB_CONNECT_TIMEOUT) + 2 * client_bound()


def _tell(batch: list[Change], task: Task | None, *, written: bool) -> None:
    for change in batch:
        for notify in change.notify:
            with contextlib.suppress(Exception):
                notify(task, written)


writer = Writer()
cancels = CancelWatch()
os.register_at_fork(after_in_child=cancels.forget)
