"""A background sender, so that publishing never holds up a worker or a request.

The caller only hands a job over; one thread per process renders and sends, in order,
with each task's waiting progress and rows coalesced to its latest. Nothing is dropped
silently: the channel of a job dropped (full queue) or failed gets one ``stream-reset``
once the queue drains, retried until it goes out (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from taskstate.core.threads import Backoff, OwnThread, close_idle_connections

logger = logging.getLogger("taskstate")

#: Jobs waiting beyond this are dropped: a stuck event backend must not eat memory.
MAX_PENDING = 10_000
#: Channels remembered for a ``stream-reset`` at most (one string each).
MAX_LOST_CHANNELS = 10_000
RESET = "stream-reset"
Channels = tuple[str, ...]


def send_reset(channel: str) -> None:
    from django_eventstream import send_event

    send_event(channel, RESET, json.dumps({"channels": [channel]}), json_encode=False)


class Courier(OwnThread):
    thread_name = "taskstate-courier"

    def __init__(self, reset: Callable[[str], None] = send_reset) -> None:
        self._reset = reset
        super().__init__()

    def _init_state(self) -> None:
        super()._init_state()
        #: Pending jobs by key: each job, its channels and its rank (``submit``).
        self._jobs: OrderedDict[Hashable, tuple[Callable[[], None], Channels, Any]] = OrderedDict()
        self._lost: dict[str, None] = {}  # insertion-ordered set
        self._busy = False
        self._retry_at = 0.0  # monotonic time before which resets are not tried again
        self._backoff = Backoff()  # between failed resets
        self._order = itertools.count()
        self._dropping = False
        self._forgetting = False
        self._losses = 0  # channels remembered so far: a job that adds none sent fine

    def submit(
        self,
        job: Callable[[], None],
        *,
        replaces: Hashable | None = None,
        supersedes: Hashable | None = None,
        channel: str | Channels | None = None,
        rank: Any = None,
    ) -> None:
        """Queue ``job``, which sends on ``channel`` (reset should it be dropped or fail).
        ``replaces``: the key of a pending job to swap for this one, unless that one has
        the higher ``rank`` (a later state announced first); ``supersedes``: the key of
        one this job makes moot."""
        channels: Channels = (channel,) if isinstance(channel, str) else channel or ()
        with self._cond:
            if supersedes is not None:
                self._jobs.pop(supersedes, None)
            if replaces is not None and replaces in self._jobs:
                pending = self._jobs[replaces][2]
                if rank is None or pending is None or not rank < pending:
                    self._jobs[replaces] = (job, channels, rank)
                return
            if len(self._jobs) >= MAX_PENDING:
                if not self._dropping:
                    self._dropping = True
                    logger.error(
                        "taskstate: %d events waiting to be sent; dropping new ones until "
                        "the queue drains, then their pages are told to resync.",
                        MAX_PENDING,
                    )
                for lost in channels:
                    self._remember(lost)
                return
            if len(self._jobs) < MAX_PENDING // 2:
                self._dropping = False  # drained to half: the next overflow is logged
            key = replaces if replaces is not None else next(self._order)
            self._jobs[key] = (job, channels, rank)
            self._start()
            self._cond.notify()

    def lost(self, channel: str) -> None:
        """An event for ``channel`` was lost: reset its pages once the queue drains."""
        with self._cond:
            self._remember(channel)
            self._start()
            self._cond.notify()

    def _remember(self, channel: str) -> None:  # the lock held
        self._losses += 1
        if channel in self._lost:
            return
        if len(self._lost) >= MAX_LOST_CHANNELS:
            if not self._forgetting:
                self._forgetting = True
                logger.error(
                    "taskstate: events of more than %d channels were lost; the pages of "
                    "the others resync only when they reconnect.",
                    MAX_LOST_CHANNELS,
                )
            return
        self._lost[channel] = None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued job, and every reset that can be sent now, is sent;
        False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._busy or (self._lost and not self._waiting_to_retry()):
                if self._thread is None or not self._thread.is_alive():
                    return not self._jobs
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _waiting_to_retry(self) -> bool:
        return time.monotonic() < self._retry_at

    def _run(self) -> None:
        while True:
            with self._cond:
                idle = not self._jobs
            if idle:
                # No connection held between bursts: one broken by a database restart would
                # fail every later job (a row's render reads its owner's staff flag).
                close_idle_connections()
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while not self._jobs and not (self._lost and not self._waiting_to_retry()):
                    self._cond.wait(self._retry_at - time.monotonic() if self._lost else None)
                losses = self._losses
                if self._jobs:
                    _, (job, channels, _) = self._jobs.popitem(last=False)
                else:
                    channel = next(iter(self._lost))
                    del self._lost[channel]  # an event lost from now on needs a new reset
                    job = self._reset_job(channel)
                    channels = (channel,)
                self._busy = True
            try:
                job()
            except Exception:
                logger.exception("taskstate: sending an event failed")
                with self._cond:
                    for channel in channels:
                        self._remember(channel)  # its pages re-read the database
            else:
                with self._cond:
                    if self._losses == losses:
                        self._retry_at = 0.0  # sending works: try the resets now

    def _reset_job(self, channel: str) -> Callable[[], None]:
        def reset() -> None:
            try:
                self._reset(channel)
            except Exception:
                logger.debug("taskstate: cannot send stream-reset yet", exc_info=True)
                with self._cond:
                    self._remember(channel)
                    self._retry_at = time.monotonic() + self._backoff.next()
                return
            with self._cond:
                self._backoff.reset()
                if not self._lost:
                    self._forgetting = False

        return reset


courier = Courier()
# Exit handlers run last-registered first: import pubcontrol (whose handler closes
# django-grip's publisher) now, so that taskstate.shutdown's exit flush runs before it.
with contextlib.suppress(ImportError):
    importlib.import_module("pubcontrol.pubcontrol")
