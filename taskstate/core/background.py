"""One thread per process for taskstate's database work that no caller may wait for.

Database calls asked for inside an event loop, where Django refuses them
(:meth:`Background.submit`), and group refreshes at their chosen time
(:meth:`Background.submit_at`). A job's exception is logged and the next job runs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from django.db import close_old_connections

from taskstate.core.threads import OwnThread, close_idle_connections

logger = logging.getLogger("taskstate")

#: Jobs waiting beyond this are dropped (logged): a hung database must not eat memory.
MAX_PENDING = 10_000

Job = Callable[[], object]


def in_event_loop() -> bool:
    """True when this thread runs an asyncio event loop (database calls are refused)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Background(OwnThread):
    thread_name = "taskstate-background"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        super().__init__()

    def _init_state(self) -> None:
        super()._init_state()
        self._now: deque[Job] = deque()
        self._later: list[tuple[float, int, Job]] = []  # (when, ticket, job)
        self._ticket = itertools.count()
        self._running = False
        self._dropping = False

    def submit(self, job: Job) -> None:
        """Run ``job`` as soon as the jobs before it are done; returns at once."""
        with self._cond:
            if len(self._now) + len(self._later) >= MAX_PENDING:
                if not self._dropping:
                    self._dropping = True
                    logger.error(
                        "taskstate: %d background database jobs are waiting; "
                        "dropping new ones until the database catches up.",
                        MAX_PENDING,
                    )
                return
            self._dropping = False
            self._now.append(job)
            self._wake()

    def submit_at(self, when: float, job: Job) -> None:
        """Run ``job`` once :attr:`clock` reads ``when``, after the jobs then waiting."""
        with self._cond:
            heapq.heappush(self._later, (when, next(self._ticket), job))
            self._wake()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every job submitted so far or due by now is done; False on timeout."""
        done = threading.Event()
        with self._cond:
            if self._pid != os.getpid():
                return True  # a forked child: the parent's jobs are the parent's
            now = self.clock()
            while self._later and self._later[0][0] <= now:
                self._now.append(heapq.heappop(self._later)[2])
            if not self._now and not self._running:
                return True
            self._now.append(done.set)
            self._wake()
        return done.wait(timeout)

    def _wake(self) -> None:
        # With the lock held.
        self._start()
        self._cond.notify()

    def _forget_parent(self) -> None:
        self._now.clear()
        self._later.clear()

    def _next(self) -> Job:
        with self._cond:
            self._running = False
            closed = False
            while True:
                # Jobs asked for now (an event loop waits for them) before scheduled ones.
                if self._now:
                    self._running = True
                    return self._now.popleft()
                if self._later and self._later[0][0] <= self.clock():
                    self._running = True
                    return heapq.heappop(self._later)[2]
                if not closed:
                    # Nothing due: hold no connection while waiting, then look again (a
                    # job may come while the lock is let go).
                    closed = True
                    self._cond.release()
                    try:
                        close_idle_connections()
                    finally:
                        self._cond.acquire()
                    continue
                self._cond.wait(self._later[0][0] - self.clock() if self._later else None)

    def _run(self) -> None:
        while True:
            job = self._next()
            # A connection broken by an outage is replaced, as a request or a message would.
            close_old_connections()
            try:
                job()
            except Exception:
                logger.exception("taskstate: a background database job failed")


background = Background()
