"""The one daemon thread of each of taskstate's background workers (writer, courier,
background, the database watchdog): started when first needed, again if it died, and afresh
in a forked child (the parent's lock may be held by a thread the child does not have); and
the pauses between their tries of work that fails."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref

from django.db import connections

#: Pauses before work that failed (a write, a send, a subscription) is tried again: the
#: first, doubling up to the last, and the first again once the work succeeds.
FIRST_RETRY_PAUSE = 0.5
MAX_RETRY_PAUSE = 5.0


class Backoff:
    """The pause before the next try of work that keeps failing; :meth:`reset` once it works."""

    def __init__(self) -> None:
        self._last = 0.0

    def next(self) -> float:
        last = self._last
        self._last = min(last * 2, MAX_RETRY_PAUSE) if last else FIRST_RETRY_PAUSE
        return self._last

    def reset(self) -> None:
        self._last = 0.0


class OwnThread:
    """Work handed over under :attr:`_cond`, done by :meth:`_run` on one daemon thread."""

    thread_name = "taskstate"

    def __init__(self) -> None:
        self._init_state()
        _owners.add(self)

    def _init_state(self) -> None:
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def _start(self) -> None:
        """Called with :attr:`_cond` held: the thread runs in this process after it."""
        if self._running_here():
            return
        if self._pid != os.getpid():  # forked without the fork hook
            self._forget_parent()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def _running_here(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def _forget_parent(self) -> None:
        """With :attr:`_cond` held, in a child forked without the hook: drop the parent's work."""

    def _run(self) -> None:
        raise NotImplementedError


#: Every worker object of the process, started afresh in a forked child.
_owners: weakref.WeakSet[OwnThread] = weakref.WeakSet()


def _start_afresh_in_child() -> None:
    for owner in list(_owners):
        owner._init_state()


os.register_at_fork(after_in_child=_start_afresh_in_child)


def close_idle_connections() -> None:
    """Close this thread's open database connections, except inside a transaction: one
    broken by a restart would fail later work, and a pooler would count it."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.in_atomic_block:
            with contextlib.suppress(Exception):  # a connection the server broke
                connection.close()
