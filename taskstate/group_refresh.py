"""Refresh group and pipeline rows as their children move, throttled per group.

The publisher reports each committed change of a child (:meth:`GroupRefresher.changed`);
one background thread per process refreshes the parent row (``taskstate.groups``) and
announces it. A group is refreshed at once when it has not been for
``TASKSTATE["GROUP_INTERVAL"]`` seconds, else once that interval is over: a thousand
children finishing in one second cost one refresh and one event, and the last change is
always refreshed. Nothing here runs on the worker's path but a lock and a dict insert.
"""

from __future__ import annotations

import atexit
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskstate.conf import get_settings
from taskstate.idle import close_idle_connections
from taskstate.signals import announce

if TYPE_CHECKING:
    from taskstate.groups import Refreshed

logger = logging.getLogger("taskstate")

#: Groups remembered (when each was last refreshed) at most; the oldest are forgotten.
MAX_REMEMBERED = 10_000


class GroupRefresher:
    def __init__(
        self,
        refresh: Callable[[int], Refreshed | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._refresh = refresh
        self._clock = clock
        self._init_state()

    def _init_state(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[int, float] = {}  # group pk -> when to refresh it
        self._heap: list[tuple[float, int]] = []
        self._last: dict[int, float] = {}  # group pk -> when it was last refreshed
        self._busy = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: Refreshes run so far (benchmarks, tests).
        self.refreshes = 0

    def changed(self, group_pk: int) -> None:
        """A child of ``group_pk`` changed (committed): refresh the group soon."""
        with self._cond:
            if group_pk in self._due:
                return  # a refresh is already due, and will read this change
            interval = float(get_settings().GROUP_INTERVAL)
            last = self._last.get(group_pk)
            now = self._clock()
            due = now if last is None else max(now, last + interval)
            self._due[group_pk] = due
            heapq.heappush(self._heap, (due, group_pk))
            self._start()
            self._cond.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Refresh every group with a change pending now, not when due; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._due:
                self._heap = [(float("-inf"), pk) for pk in self._due]
                heapq.heapify(self._heap)
                self._cond.notify_all()
            while self._due or self._busy:
                if self._thread is None or not self._thread.is_alive():
                    return not self._due
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _start(self) -> None:
        # Called with the lock held. A forked child starts over (see _after_fork).
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._run, name="taskstate-group-refresh", daemon=True
        )
        self._thread.start()

    def _after_fork(self) -> None:
        self._init_state()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                idle = not self._heap
            if idle:
                # Nothing due: hold no database connection while waiting (a test database
                # could not be dropped, a pooler would count it).
                close_idle_connections()
            with self._cond:
                while True:
                    if self._heap:
                        wait = self._heap[0][0] - self._clock()
                        if wait <= 0:
                            break
                    else:
                        wait = None
                    self._cond.wait(wait)
                _, pk = heapq.heappop(self._heap)
                self._due.pop(pk, None)
                self._remember(pk)
                self._busy = True
            self._refresh_one(pk)

    def _remember(self, pk: int) -> None:
        # Called with the lock held: the refresh that starts now reads every change so far.
        self._last.pop(pk, None)
        self._last[pk] = self._clock()
        while len(self._last) > MAX_REMEMBERED:
            del self._last[next(iter(self._last))]

    def _refresh_one(self, pk: int) -> None:
        # The middleware imports this module while Django is still loading apps: the
        # model behind the refresh is imported once one runs.
        from taskstate.groups import Groups, refresh_group

        try:
            refreshed = (self._refresh or refresh_group)(pk)
            self.refreshes += 1
            if refreshed is not None:
                announce(
                    refreshed.task,
                    sender=Groups,
                    status_changed=refreshed.status_changed,
                    committed=True,
                )
        except Exception:
            logger.exception("taskstate: refreshing group %s failed", pk)


group_refresher = GroupRefresher()
atexit.register(group_refresher.flush, 2.0)
os.register_at_fork(after_in_child=group_refresher._after_fork)
