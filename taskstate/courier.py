"""A background sender, so that publishing never holds up a worker or a request.

The worker's path only hands a job over (a lock and a dict insert); one thread per
process renders and sends, in order. Progress jobs are coalesced per task: a bar that
changed three times while Redis was slow is sent once, with its latest value, and a
task's row makes its older pending bar moot. A full queue drops new jobs (logged):
the database is the truth and pages resync from it.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

logger = logging.getLogger("taskstate")

#: Jobs waiting beyond this are dropped: a stuck event backend must not eat memory.
MAX_PENDING = 10_000


class Courier:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: OrderedDict[Hashable, Callable[[], None]] = OrderedDict()
        self._busy = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._order = itertools.count()
        self._dropping = False

    def submit(
        self,
        job: Callable[[], None],
        *,
        replaces: Hashable | None = None,
        supersedes: Hashable | None = None,
    ) -> None:
        """Queue ``job``. ``replaces``: a key; a pending job with it is swapped for this one.
        ``supersedes``: a key whose pending job this one makes moot (it is dropped)."""
        with self._cond:
            if supersedes is not None:
                self._jobs.pop(supersedes, None)
            if replaces is not None and replaces in self._jobs:
                self._jobs[replaces] = job
                return
            if len(self._jobs) >= MAX_PENDING:
                if not self._dropping:
                    self._dropping = True
                    logger.error(
                        "taskstate: %d events waiting to be sent; dropping new ones "
                        "until the queue drains (pages resync on reconnect).",
                        MAX_PENDING,
                    )
                return
            self._dropping = False
            self._jobs[replaces if replaces is not None else next(self._order)] = job
            self._start()
            self._cond.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued job has been sent; False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._busy:
                if self._thread is None or not self._thread.is_alive():
                    return not self._jobs
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _start(self) -> None:
        # Called with the lock held. A forked child inherits the state, not the thread.
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="taskstate-courier", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while not self._jobs:
                    self._cond.wait()
                _, job = self._jobs.popitem(last=False)
                self._busy = True
            try:
                job()
            except Exception:
                logger.exception("taskstate: sending an event failed")


courier = Courier()
atexit.register(courier.flush, 2.0)
