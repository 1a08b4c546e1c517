"""Tracking writes from inside an event loop, handed to a thread so the loop never waits.

Django refuses database calls in a thread that runs an event loop (an async view, a
Dramatiq ``async def`` actor), and a blocking call there would stall every coroutine of
the loop. So a write asked for in such a thread is queued here and one thread per
process runs the queue in order, on a connection of its own, within the bounds of
``taskstate.bounds``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable

from django.db import close_old_connections

logger = logging.getLogger("taskstate")

#: Writes waiting beyond this are dropped (logged): a hung database must not eat memory.
MAX_PENDING = 10_000


def in_event_loop() -> bool:
    """True when this thread runs an asyncio event loop (database calls are refused)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Handoff:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue[Callable[[], object]] = queue.Queue(MAX_PENDING)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._dropping = False

    def submit(self, write: Callable[[], object]) -> None:
        """Queue ``write``; returns at once."""
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._queue = queue.Queue(MAX_PENDING)
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="taskstate-handoff", daemon=True
                )
                self._thread.start()
            try:
                self._queue.put_nowait(write)
            except queue.Full:
                if not self._dropping:
                    self._dropping = True
                    logger.error(
                        "taskstate: %d task-state writes from async code are waiting; "
                        "dropping new ones until the database catches up.",
                        MAX_PENDING,
                    )
                return
            self._dropping = False

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every write handed over so far is done (tests, shutdown)."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                return True
            self._queue.put(done.set)
        return done.wait(timeout)

    @staticmethod
    def _run(jobs: queue.Queue[Callable[[], object]]) -> None:
        while True:
            write = jobs.get()
            # A connection broken by an outage is replaced, as a request or a message would.
            close_old_connections()
            try:
                write()
            except Exception:
                logger.exception("taskstate: a task-state write from async code failed")


handoff = _Handoff()
