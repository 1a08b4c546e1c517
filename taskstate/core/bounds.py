"""Bounded waits: no tracking write waits for the database forever (PostgreSQL only).

Our statements only: a connect timeout when the write opens the connection, the server's
``lock_timeout`` and ``statement_timeout`` local to the write's transaction, and a
watchdog that shuts the socket of a server that stopped answering (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from taskstate.core import conf
from taskstate.core.threads import OwnThread

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
    """Run one tracking write on ``connection`` within the bounds; exceptions pass through.
    Inside a caller's transaction nothing is bounded: cutting it would break the caller's."""
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
            connection.close()  # its socket is shut: the next query connects again


@contextmanager
def bounded_transaction(alias: str) -> Iterator[None]:
    """Run several tracking statements on ``alias`` as one bounded transaction (a group
    refresh); unbounded in autocommit elsewhere, as :func:`bounded`."""
    connection = connections[alias]
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        yield
        return
    with bounded(connection):
        settings = server_bounds(connection)
        with transaction.atomic(using=alias):
            with connection.cursor() as cursor:
                calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
                cursor.execute(f"SELECT {calls}", [v for pair in settings for v in pair])
            yield


def _connect(connection: BaseDatabaseWrapper, seconds: float) -> None:
    if connection.connection is not None:
        return
    # Only this connect gets the timeout (a DatabaseWrapper belongs to one thread).
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


@dataclass(eq=False)
class _Alarm:
    deadline: float
    fd: int
    fired: bool = False
    armed: bool = True


class _Watchdog(OwnThread):
    """One daemon thread that shuts down the sockets of writes past their deadline."""

    thread_name = "taskstate-watchdog"

    def _init_state(self) -> None:
        super()._init_state()
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._order = itertools.count()
        #: When the thread next looks at the heap, set before each wait.
        self._wake_at = math.inf

    def arm(self, fd: int, seconds: float) -> _Alarm:
        alarm = _Alarm(time.monotonic() + seconds, fd)
        with self._cond:
            while self._heap and not self._heap[0][2].armed:
                heapq.heappop(self._heap)  # writes that ended: cleared here, not by a wake-up
            heapq.heappush(self._heap, (alarm.deadline, next(self._order), alarm))
            self._start()
            # Woken only for an alarm due before it looks anyway: a wake-up per write would
            # cost each write a switch of threads.
            if alarm.deadline < self._wake_at:
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
                    self._wake_at = time.monotonic() + 60
                    self._cond.wait(60)
                    if not self._heap:
                        self._thread = None
                        return
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._wake_at = self._heap[0][0]
                    self._cond.wait(wait)
                    continue
                _, _, alarm = heapq.heappop(self._heap)
                # Under the lock: a write that disarmed has not closed its socket yet,
                # so the descriptor still names it.
                alarm.fired = True
                alarm.armed = False
                _shut(alarm.fd)


def _shut(fd: int) -> None:
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


_watchdog = _Watchdog()
