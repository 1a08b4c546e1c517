"""What a process does before it goes: its last changes written, then their events sent.

Run by one exit hook (registered by the app's ``ready()``) and by the worker's
``after_worker_shutdown``, in this order: the background writer's last changes, the
refreshes of the groups they touched (due or not), the background thread's other jobs,
and last the events all of these announced. One place owns the order, above the
Dramatiq side and the web side alike.
"""

from __future__ import annotations

from typing import Any

from taskstate.core.background import background
from taskstate.core.group_refresh import group_refresher
from taskstate.web.courier import courier
from taskstate.worker.writer import SHUTDOWN_FLUSH, writer


def flush(timeout: float = 5.0) -> bool:
    """Wait until everything handed over so far is written and its events sent: the
    background writer's changes, then the refreshes of the groups they touched (without
    waiting for their turn), the background thread's other jobs, then the events. Whether
    all of it was done within ``timeout`` a step."""
    written = writer.flush(timeout)
    refreshed = group_refresher.flush(timeout)
    done = background.flush(timeout)
    return courier.flush(timeout) and written and refreshed and done


def flush_all(timeout: float = SHUTDOWN_FLUSH) -> None:
    """Write, refresh and send everything pending, each step within ``timeout``."""
    writer.shutdown(timeout)
    group_refresher.flush(timeout)
    background.flush(timeout)
    courier.flush(timeout)


def on_worker_stopped(sender: Any, **kwargs: Any) -> None:
    """The worker's ``after_worker_shutdown`` (the ``worker_stopped`` signal)."""
    flush_all()


def at_exit() -> None:
    """The exit hook: :func:`flush_all` within 2 s a step (a process asked to stop is not
    held for long)."""
    flush_all(2.0)
