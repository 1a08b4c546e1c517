"""Time left for running tasks, "about 2 min left", without a query: from the row being
rendered and the durations of the actor's runs this process saw finish (each process
keeps its own memory). How it is worked out: docs/reference/template-tags.md.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext, ngettext

#: Progress (percent) before a task's own rate is trusted, without history.
MIN_PROGRESS = 10
#: Progress (percent) before its own rate counts at all, with history.
MIN_PROGRESS_WITH_HISTORY = 3
#: Seconds a task must have run before its own rate counts.
MIN_ELAPSED = 2.0
#: Finished runs of an actor before its history counts.
MIN_HISTORY = 2
#: Weight of the newest duration in an actor's moving average.
HISTORY_WEIGHT = 0.3
#: Part of the way a new estimate moves the shown one.
SMOOTHING = 0.35
#: Tasks and actors remembered at most.
MAX_TASKS = 10_000
MAX_ACTORS = 1_000


@dataclass
class _Run:
    actor: str
    started_at: datetime | None
    shown: float | None = None  # seconds left, as last shown
    shown_at: datetime | None = None


@dataclass
class _History:
    average: float
    count: int


class Estimator:
    def __init__(self, clock: Callable[[], datetime] = timezone.now) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: OrderedDict[int, _Run] = OrderedDict()
        self._actors: OrderedDict[str, _History] = OrderedDict()

    def observe(self, task: Any) -> None:
        """Learn from a row as written: its start while running, its duration once done."""
        pk = getattr(task, "pk", None)
        if pk is None:
            return
        started_at = _attempt_start(task)
        with self._lock:
            if task.status in ("running", "retrying", "enqueued", "delayed"):
                run = self._runs.get(pk)
                if run is None or started_at != run.started_at:
                    self._runs[pk] = _Run(task.actor_name, started_at)
                    self._trim(self._runs, MAX_TASKS)
                return
            self._runs.pop(pk, None)
            if task.status == "done" and started_at and task.finished_at:
                seconds = (task.finished_at - started_at).total_seconds()
                if seconds >= 0:
                    self._learn(task.actor_name, seconds)

    def seconds_left(self, task: Any) -> float | None:
        """Seconds ``task`` has left, smoothed, or None while no estimate is meaningful."""
        if getattr(task, "status", None) != "running" or task.pk is None:
            return None
        with self._lock:
            run = self._runs.get(task.pk)
            started_at = _attempt_start(task) or (run.started_at if run else None)
            actor = task.actor_name or (run.actor if run else "")
            if run is None:
                run = self._runs[task.pk] = _Run(actor, started_at)
                self._trim(self._runs, MAX_TASKS)
            now = self._clock()
            raw = self._raw(started_at, actor, int(task.progress or 0), now)
            if raw is None:
                return run.shown
            if run.shown is None or run.shown_at is None:
                shown = raw
            else:
                counted_down = max(run.shown - (now - run.shown_at).total_seconds(), 0.0)
                shown = counted_down + SMOOTHING * (raw - counted_down)
            run.shown, run.shown_at = max(shown, 0.0), now
            return run.shown

    def describe(self, task: Any) -> str:
        """``"about 2 min left"`` for ``task``, or ``""`` while no estimate is meaningful."""
        seconds = self.seconds_left(task)
        return "" if seconds is None else describe_seconds(seconds)

    def _raw(
        self, started_at: datetime | None, actor: str, percent: int, now: datetime
    ) -> float | None:
        history = self._actors.get(actor)
        typical = history.average if history and history.count >= MIN_HISTORY else None
        own = None
        if started_at is not None and percent > 0:
            elapsed = (now - started_at).total_seconds()
            enough = MIN_PROGRESS_WITH_HISTORY if typical is not None else MIN_PROGRESS
            if elapsed >= MIN_ELAPSED and percent >= enough:
                own = elapsed * (100 - percent) / percent
        if typical is None:
            return own
        from_history = typical * (100 - percent) / 100
        if own is None:
            if started_at is not None and percent == 0:
                elapsed = (now - started_at).total_seconds()
                from_history = max(typical - elapsed, 0.0)
            return from_history
        # The further along, the more the task's own pace tells.
        weight = percent / 100
        return weight * own + (1 - weight) * from_history

    def _learn(self, actor: str, seconds: float) -> None:
        history = self._actors.get(actor)
        if history is None:
            self._actors[actor] = _History(seconds, 1)
            self._trim(self._actors, MAX_ACTORS)
            return
        history.average += HISTORY_WEIGHT * (seconds - history.average)
        history.count += 1
        self._actors.move_to_end(actor)

    @staticmethod
    def _trim(entries: OrderedDict[Any, Any], limit: int) -> None:
        while len(entries) > limit:
            entries.popitem(last=False)


def _attempt_start(task: Any) -> datetime | None:
    # A group's row has no attempt start: its first start.
    started_at: datetime | None = getattr(task, "attempt_started_at", None) or task.started_at
    return started_at


def describe_seconds(seconds: float) -> str:
    """A rough, readable time left: "a few seconds left", "about 40 s left", ..."""
    if seconds < 10:
        return gettext("a few seconds left")
    if seconds < 55:
        rounded = int(round(seconds / 5) * 5)
        return gettext("about %(seconds)d s left") % {"seconds": rounded}
    if seconds < 90 * 60:
        minutes = max(1, round(seconds / 60))
        return ngettext("about %(minutes)d min left", "about %(minutes)d min left", minutes) % {
            "minutes": minutes
        }
    hours = round(seconds / 3600)
    return ngettext("about %(hours)d h left", "about %(hours)d h left", hours) % {"hours": hours}


#: The estimator of this process.
estimator = Estimator()
