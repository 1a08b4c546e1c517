"""What a process does before it goes, in this order: the background writer's last
changes, the refreshes of the groups they touched (due or not), the background thread's
other jobs, then the events they all announced. Above the Dramatiq and web sides alike."""

from __future__ import annotations

from typing import Any

from taskstate.core.background import background
from taskstate.core.group_refresh import group_refresher
from taskstate.web.courier import courier
from taskstate.worker.writer import SHUTDOWN_FLUSH, writer


def flush_all(timeout: float = SHUTDOWN_FLUSH) -> None:
    """Write, refresh and send everything pending, each step within ``timeout``."""
    writer.shutdown(timeout)
    group_refresher.flush(timeout)
    background.flush(timeout)
    courier.flush(timeout)


def on_worker_stopped(sender: Any, **kwargs: Any) -> None:
    """The ``worker_stopped`` signal's receiver (the worker's ``after_worker_shutdown``)."""
    flush_all()


def at_exit() -> None:
    """The exit hook: 2 s a step (a process asked to stop is not held for long)."""
    flush_all(2.0)
