"""Bounded waits: no tracking write waits for the database forever.

A tracking write runs on the project's own connection (``TASKSTATE["DATABASE"]``), in a
worker thread or inside ``send()``. Three bounds (constants in ``taskstate.core.conf``) apply to
our statements only; the project's own queries on the same connection keep its settings:

- ``DB_CONNECT_TIMEOUT``: when the write itself has to open the connection, it opens it
  with libpq's ``connect_timeout`` (a client-side bound; the project's own ``OPTIONS``
  win when they set one).
- ``DB_LOCK_TIMEOUT`` and ``DB_STATEMENT_TIMEOUT``: PostgreSQL's ``lock_timeout`` and
  ``statement_timeout``, made local to the write's own transaction
  (``set_config(..., true)``). The server enforces them, so a slow or locked database
  answers with an error and the connection stays usable.
- A client-side bound, ``DB_STATEMENT_TIMEOUT`` plus :data:`GRACE` seconds: a server that
  stopped answering (SIGSTOP, a network that drops packets) can enforce nothing, while
  the kernel may still acknowledge every byte. A watchdog thread then shuts the
  connection's socket down; the driver raises, the write gives up, and the connection is
  closed so the next write connects afresh.

A group refresh runs several statements: :func:`bounded_transaction` applies the same
three bounds to them, as one transaction.

PostgreSQL only (psycopg 3 or psycopg2); other backends run unbounded by us (SQLite has
its own ``timeout`` option; see docs/reliability.md).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from taskstate.core import conf

#: Seconds the server gets to report its own statement timeout before the watchdog cuts.
GRACE = 1.0


def server_bounds(connection: BaseDatabaseWrapper) -> list[tuple[str, str]]:
    """PostgreSQL settings (name, value) to make local to one tracking write's transaction."""
    if connection.vendor != "postgresql":
        return []
    return [
        ("statement_timeout", str(math.ceil(conf.DB_STATEMENT_TIMEOUT * 1000))),
        ("lock_timeout", str(math.ceil(conf.DB_LOCK_TIMEOUT * 1000))),
    ]


def client_bound() -> float:
    """Seconds after which the watchdog cuts a tracking write's connection."""
    return float(conf.DB_STATEMENT_TIMEOUT) + GRACE


@contextmanager
def bounded(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """Run one tracking write on ``connection`` within the bounds above.

    Exceptions from the write pass through (the caller logs them as an outage). Inside a
    caller's transaction (progress from an actor's own ``atomic()``) nothing is bounded:
    the write behaves like the caller's own queries on that connection, which cutting it
    would break.
    """
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        yield
        return
    _connect(connection, float(conf.DB_CONNECT_TIMEOUT))
    raw = connection.connection
    if raw is None:
        yield
        return
    alarm = _watchdog.arm(raw.fileno(), client_bound())
    try:
        yield
    finally:
        if _watchdog.disarm(alarm):
            # Its socket is shut: let the next write (or query) connect again.
            connection.close()


@contextmanager
def bounded_transaction(alias: str) -> Iterator[None]:
    """Run several tracking statements on ``alias`` as one transaction within the bounds.

    The statements of a group refresh (``taskstate.core.groups``): ``lock_timeout`` and
    ``statement_timeout`` are made local to the transaction, so each statement is bounded
    by the server; the watchdog bounds the whole transaction, as it bounds one write.
    Inside a caller's transaction nothing is bounded (see :func:`bounded`); other backends
    run the statements without these bounds, each in autocommit.
    """
    connection = connections[alias]
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        yield
        return
    with bounded(connection):
        settings = server_bounds(connection)
        if not settings:
            yield
            return
        with transaction.atomic(using=alias):
            with connection.cursor() as cursor:
                calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
                cursor.execute(f"SELECT {calls}", [v for pair in settings for v in pair])
            yield


def _connect(connection: BaseDatabaseWrapper, seconds: float) -> None:
    if connection.connection is not None:
        return
    # Only this connect, in this thread (a DatabaseWrapper belongs to one thread), gets
    # the timeout; once open the connection behaves as the project configured it.
    project_params = connection.get_connection_params

    def with_timeout() -> dict[str, Any]:
        params = project_params()
        # libpq and psycopg take whole seconds, at least 2.
        params.setdefault("connect_timeout", max(2, math.ceil(seconds)))
        return params

    connection.get_connection_params = with_timeout  # type: ignore[method-assign]
    try:
        connection.ensure_connection()
    finally:
        del connection.get_connection_params


class _Alarm:
    __slots__ = ("armed", "deadline", "fd", "fired")

    def __init__(self, deadline: float, fd: int) -> None:
        self.deadline = deadline
        self.fd = fd
        self.fired = False
        self.armed = True


class _Watchdog:
    """One daemon thread that shuts down the sockets of writes past their deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, fd: int, seconds: float) -> _Alarm:
        alarm = _Alarm(time.monotonic() + seconds, fd)
        with self._cond:
            heapq.heappush(self._heap, (alarm.deadline, next(self._order), alarm))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="taskstate-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> bool:
        """Stop watching; True when the alarm had fired (the socket is shut)."""
        with self._cond:
            alarm.armed = False
            return alarm.fired

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and not self._heap[0][2].armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(60)
                    if not self._heap:
                        self._thread = None
                        return
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, _, alarm = heapq.heappop(self._heap)
                # Under the lock: a write that disarmed has not closed its socket yet,
                # so the descriptor still names it.
                alarm.fired = True
                alarm.armed = False
                _shut(alarm.fd)


def _shut(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


_watchdog = _Watchdog()
