"""The one thread of each of taskstate's background workers, and its database manners.

The background writer, the courier (the event sender) and the background thread each
keep work that the process's other threads hand them, served by one daemon thread of
their own (:class:`OwnThread`): started when first needed, started again if it died,
and in a forked child started afresh with none of the parent's work (the parent's lock
may be held by a thread the child does not have).

Between bursts each closes its database connections (:func:`close_idle_connections`):
one broken by a database restart would fail every later burst, a pooler would count it,
and a test database could not be dropped while a thread still held it.
"""

from __future__ import annotations

import os
import threading
import weakref


class OwnThread:
    """Work handed over under :attr:`_cond`, done by :meth:`_run` on one daemon thread."""

    #: The thread's name (tests, profiles and ``ps`` show it).
    thread_name = "taskstate"

    def __init__(self) -> None:
        self._init_state()
        _owners.add(self)

    def _init_state(self) -> None:
        """Fresh state: a new lock, no thread. Subclasses add their own, calling this."""
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def _start(self) -> None:
        """Called with :attr:`_cond` held: the thread runs in this process after it."""
        if self._running_here():
            return
        if self._pid != os.getpid():
            # Forked without the fork hook (some other way than os.fork).
            self._forget_parent()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def _running_here(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def _forget_parent(self) -> None:
        """Called with :attr:`_cond` held in a child forked without the fork hook: drop
        what the parent handed over, if it is the parent's alone."""

    def _run(self) -> None:
        raise NotImplementedError


#: Every worker object of the process, started afresh in a forked child.
_owners: weakref.WeakSet[OwnThread] = weakref.WeakSet()


def _start_afresh_in_child() -> None:
    for owner in list(_owners):
        owner._init_state()


os.register_at_fork(after_in_child=_start_afresh_in_child)


def close_idle_connections() -> None:
    """Close this thread's open database connections, except inside a transaction."""
    # Imported when called: importing this module needs nothing from Django.
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.in_atomic_block:
            connection.close()
