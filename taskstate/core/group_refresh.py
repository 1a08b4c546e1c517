"""Refresh group and pipeline rows as their children move, throttled per group.

A group is refreshed (``taskstate.core.groups``) at once when it has not been for
``conf.GROUP_INTERVAL`` seconds, else once that interval is over: a thousand children
finishing in one second cost one refresh and one event, and the last change is always
refreshed. The caller's path costs a lock and a dict insert.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskstate.core import conf
from taskstate.core.background import Background, background
from taskstate.core.signals import announce

if TYPE_CHECKING:
    from taskstate.core.groups import Refreshed

logger = logging.getLogger("taskstate")

#: Groups remembered (when each was last refreshed) at most; the oldest are forgotten.
MAX_REMEMBERED = 10_000


class GroupRefresher:
    def __init__(
        self,
        refresh: Callable[[int], Refreshed | None] | None = None,
        runner: Background = background,
    ) -> None:
        self._refresh = refresh
        self._runner = runner
        self._lock = threading.Lock()
        self._due: set[int] = set()  # groups with a refresh to come
        self._last: dict[int, float] = {}  # group pk -> when it was last refreshed

    def changed(self, group_pk: int) -> None:
        """A child of ``group_pk`` changed (committed): refresh the group soon."""
        with self._lock:
            if group_pk in self._due:
                return  # a refresh is already due, and will read this change
            self._due.add(group_pk)
            last = self._last.get(group_pk)
        # Through submit_at, even when due now: its queue is never full (one job per
        # group at most), so no refresh is dropped and no group left waiting for good.
        now = self._runner.clock()
        when = now if last is None else max(now, last + float(conf.GROUP_INTERVAL))
        self._runner.submit_at(when, functools.partial(self._run_due, group_pk))

    def flush(self, timeout: float = 5.0) -> bool:
        """Refresh every group with a change pending now, not when due; False on timeout."""
        with self._lock:
            pending = list(self._due)
        now = self._runner.clock()
        for pk in pending:
            self._runner.submit_at(now, functools.partial(self._run_due, pk))
        return self._runner.flush(timeout)

    def _run_due(self, pk: int) -> None:
        with self._lock:
            if pk not in self._due:
                return  # refreshed already (a flush ran it before its time)
            self._due.discard(pk)
            # The refresh that starts now reads every change so far.
            self._last.pop(pk, None)
            self._last[pk] = self._runner.clock()
            while len(self._last) > MAX_REMEMBERED:
                del self._last[next(iter(self._last))]
        # Imported here: the middleware imports this module while apps still load.
        from taskstate.core.groups import refresh_group

        try:
            refreshed = (self._refresh or refresh_group)(pk)
            if refreshed is not None:
                announce(refreshed.task, status_changed=refreshed.status_changed, committed=True)
        except Exception:
            logger.exception("taskstate: refreshing group %s failed", pk)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._due.clear()


group_refresher = GroupRefresher()
os.register_at_fork(after_in_child=group_refresher._after_fork)
